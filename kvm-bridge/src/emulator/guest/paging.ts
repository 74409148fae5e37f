// SPDX-License-Identifier: Apache-2.0
/**
 * x86-64 4-level paging kept in guest memory. Tables are real PML4/PDPT/PD/PT pages whose entries
 * have the hardware format, so anything that can read guest-physical memory (the emulated kernel, or a
 * tool over KVMI_VM_READ_PHYSICAL) can walk them with {@link walkPageTables}.
 *
 * The walker only *reads*: it does not set Accessed/Dirty bits, so translating an address never
 * changes guest memory (KVMI_VCPU_TRANSLATE_GVA must be side-effect free for the tool).
 *
 * @see Intel SDM vol. 3A §4.5 "4-Level Paging", tables 4-14..4-20 (entry formats)
 */
import { GuestModelError } from "./errors.js";
import { PAGE_SIZE, type GuestMemory } from "./memory.js";
import type { PageAllocator } from "./page-allocator.js";
import { U64_MASK, isCanonical } from "./x86.js";

/** Paging-structure entry bits (`_PAGE_*` in `arch/x86/include/asm/pgtable_types.h`). */
export const PTE_PRESENT = 1n << 0n;
export const PTE_RW = 1n << 1n;
export const PTE_USER = 1n << 2n;
export const PTE_PWT = 1n << 3n;
export const PTE_PCD = 1n << 4n;
export const PTE_ACCESSED = 1n << 5n;
export const PTE_DIRTY = 1n << 6n;
/** PS: the entry maps a 1 GiB (PDPTE) or 2 MiB (PDE) page instead of pointing to a table. */
export const PTE_PSE = 1n << 7n;
export const PTE_GLOBAL = 1n << 8n;
export const PTE_NX = 1n << 63n;
/** Physical-address bits 51..12 of an entry (MAXPHYADDR 52). */
export const PTE_ADDR_MASK = 0x000f_ffff_ffff_f000n;

/** Large page sizes. */
export const PAGE_SIZE_2M = 0x200000;
export const PAGE_SIZE_1G = 0x40000000;

/** What the walker needs from guest-physical memory: one aligned u64 read, `undefined` if unbacked. */
export interface PhysicalReader {
  readU64(gpa: bigint): bigint | undefined;
}

/** One paging-structure entry the walk read. */
export interface PageWalkStep {
  /** 4 = PML4E, 3 = PDPTE, 2 = PDE, 1 = PTE. */
  readonly level: 4 | 3 | 2 | 1;
  /** GPA the entry was read from. */
  readonly entryGpa: bigint;
  readonly entry: bigint;
}

/** A successful translation. Permissions are the combination over all levels, as hardware computes them. */
export interface PageWalk {
  readonly gva: bigint;
  readonly gpa: bigint;
  /** 4096, 2 MiB or 1 GiB. */
  readonly pageSizeBytes: number;
  /** RW set at every level. */
  readonly writable: boolean;
  /** U/S set at every level. */
  readonly user: boolean;
  /** NX clear at every level (the caller applies EFER.NXE). */
  readonly executable: boolean;
  readonly steps: readonly PageWalkStep[];
}

/**
 * Walks the 4-level tables rooted at `cr3` for `gva`, reading entries exactly as the MMU does.
 * @returns `null` for a non-canonical address, a non-present entry at any level, or an entry that
 *   points outside guest RAM (what KVMI_VCPU_TRANSLATE_GVA reports as `~0`).
 */
export function walkPageTables(memory: PhysicalReader, cr3: bigint, gva: bigint): PageWalk | null {
  gva &= U64_MASK;
  if (!isCanonical(gva)) return null;
  let table = cr3 & PTE_ADDR_MASK;
  let writable = true;
  let user = true;
  let executable = true;
  const steps: PageWalkStep[] = [];
  for (const level of [4, 3, 2, 1] as const) {
    const shift = BigInt(12 + 9 * (level - 1));
    const entryGpa = table + ((gva >> shift) & 0x1ffn) * 8n;
    const entry = memory.readU64(entryGpa);
    if (entry === undefined || (entry & PTE_PRESENT) === 0n) return null;
    // PS is reserved in a PML4E: hardware raises a reserved-bit #PF, so the address does not translate.
    if (level === 4 && (entry & PTE_PSE) !== 0n) return null;
    steps.push({ level, entryGpa, entry });
    writable &&= (entry & PTE_RW) !== 0n;
    user &&= (entry & PTE_USER) !== 0n;
    executable &&= (entry & PTE_NX) === 0n;
    const large = (level === 3 || level === 2) && (entry & PTE_PSE) !== 0n;
    if (large || level === 1) {
      const sizeBytes = 1n << shift;
      const gpa = (entry & PTE_ADDR_MASK & ~(sizeBytes - 1n)) | (gva & (sizeBytes - 1n));
      return { gva, gpa, pageSizeBytes: Number(sizeBytes), writable, user, executable, steps };
    }
    table = entry & PTE_ADDR_MASK;
  }
  return null;
}

/** `walkPageTables(...)?.gpa ?? null`. */
export function translateGva(memory: PhysicalReader, cr3: bigint, gva: bigint): bigint | null {
  return walkPageTables(memory, cr3, gva)?.gpa ?? null;
}

/** Leaf permissions of a mapping. Defaults: writable, supervisor-only, executable, not global, 4 KiB. */
export interface MapOptions {
  readonly writable?: boolean;
  readonly user?: boolean;
  readonly executable?: boolean;
  readonly global?: boolean;
  /** 4096 or 2 MiB (`PAGE_SIZE_2M`); gva and gpa must be aligned to it. */
  readonly pageSizeBytes?: number;
}

/** One set of page tables (one CR3 value) that can be extended in place. */
export interface AddressSpace {
  /** The CR3 value that selects this address space: the PML4 GPA (PCID 0, PWT/PCD clear). */
  readonly cr3: bigint;
  /**
   * Maps one page. Missing intermediate tables are allocated; intermediate entries are RW (and U/S when
   * the leaf is user) so that the leaf alone decides permissions, as Linux does. Remapping a page replaces
   * its leaf.
   * @throws GuestModelError `GUEST_INVALID_ARGUMENT` (non-canonical or misaligned address),
   *   `GUEST_MAPPING_CONFLICT` (the range is already covered by a different page size).
   */
  map(gva: bigint, gpa: bigint, options?: MapOptions): void;
  /** Maps `sizeBytes` (a multiple of 4 KiB), using 2 MiB pages where both addresses allow it when `largePages` is set. */
  mapRange(gva: bigint, gpa: bigint, sizeBytes: number, options?: MapOptions & { readonly largePages?: boolean }): void;
  /** Clears the leaf that maps `gva`; returns false if nothing was mapped. Tables are not freed. */
  unmap(gva: bigint): boolean;
  /** Walks this address space (same as {@link walkPageTables} with {@link AddressSpace.cr3}). */
  walk(gva: bigint): PageWalk | null;
}

/** Options of {@link createAddressSpace}. */
export interface AddressSpaceOptions {
  /**
   * Copy PML4 entries 256..511 from this address space, so both share the kernel half (every table below
   * those entries is shared; kernel mappings added later under an existing PML4 entry appear in both).
   */
  readonly shareKernelHalfWith?: AddressSpace;
}

/** Allocates a PML4 and returns an address space built in `memory` with pages from `allocator`. */
export function createAddressSpace(
  memory: GuestMemory,
  allocator: PageAllocator,
  options: AddressSpaceOptions = {},
): AddressSpace {
  const pml4 = allocator.alloc();
  const source = options.shareKernelHalfWith;
  if (source !== undefined) {
    const half = memory.read((source.cr3 & PTE_ADDR_MASK) + 2048n, 2048);
    if (half.ok) memory.write(pml4 + 2048n, half.bytes);
  }
  return new PageTables(memory, allocator, pml4);
}

class PageTables implements AddressSpace {
  constructor(
    private readonly memory: GuestMemory,
    private readonly allocator: PageAllocator,
    readonly cr3: bigint,
  ) {}

  map(gva: bigint, gpa: bigint, options: MapOptions = {}): void {
    const size = options.pageSizeBytes ?? PAGE_SIZE;
    if (size !== PAGE_SIZE && size !== PAGE_SIZE_2M) {
      throw new GuestModelError("GUEST_INVALID_ARGUMENT", `unsupported page size ${size}`);
    }
    const mask = BigInt(size) - 1n;
    gva &= U64_MASK;
    if (!isCanonical(gva) || (gva & mask) !== 0n || (gpa & mask) !== 0n || gpa < 0n || gpa > PTE_ADDR_MASK) {
      throw new GuestModelError("GUEST_INVALID_ARGUMENT", `cannot map gva 0x${gva.toString(16)} -> gpa 0x${gpa.toString(16)}`);
    }
    const user = options.user ?? false;
    const leafLevel = size === PAGE_SIZE ? 1 : 2;
    let table = this.cr3 & PTE_ADDR_MASK;
    for (let level = 4; level > leafLevel; level--) {
      const entryGpa = entryAddress(table, gva, level);
      let entry = this.memory.readU64(entryGpa) ?? 0n;
      if ((entry & PTE_PRESENT) === 0n) {
        entry = this.allocator.alloc() | PTE_PRESENT | PTE_RW;
      } else if ((entry & PTE_PSE) !== 0n) {
        throw new GuestModelError("GUEST_MAPPING_CONFLICT", `gva 0x${gva.toString(16)} is inside a large page`);
      }
      if (user) entry |= PTE_USER;
      this.memory.writeU64(entryGpa, entry);
      table = entry & PTE_ADDR_MASK;
    }
    const leafGpa = entryAddress(table, gva, leafLevel);
    const old = this.memory.readU64(leafGpa) ?? 0n;
    if (leafLevel === 2 && (old & PTE_PRESENT) !== 0n && (old & PTE_PSE) === 0n) {
      throw new GuestModelError("GUEST_MAPPING_CONFLICT", `gva 0x${gva.toString(16)} already has a page table`);
    }
    let leaf = gpa | PTE_PRESENT | PTE_ACCESSED;
    if (options.writable ?? true) leaf |= PTE_RW | PTE_DIRTY;
    if (user) leaf |= PTE_USER;
    if (!(options.executable ?? true)) leaf |= PTE_NX;
    if (options.global ?? false) leaf |= PTE_GLOBAL;
    if (leafLevel === 2) leaf |= PTE_PSE;
    this.memory.writeU64(leafGpa, leaf);
  }

  mapRange(gva: bigint, gpa: bigint, sizeBytes: number, options: MapOptions & { readonly largePages?: boolean } = {}): void {
    if (!Number.isInteger(sizeBytes) || sizeBytes % PAGE_SIZE !== 0) {
      throw new GuestModelError("GUEST_INVALID_ARGUMENT", `size ${sizeBytes} is not a multiple of 4 KiB`);
    }
    const big = BigInt(PAGE_SIZE_2M);
    let done = 0;
    while (done < sizeBytes) {
      const va = gva + BigInt(done);
      const pa = gpa + BigInt(done);
      const useLarge =
        options.largePages === true && va % big === 0n && pa % big === 0n && sizeBytes - done >= PAGE_SIZE_2M;
      const step = useLarge ? PAGE_SIZE_2M : PAGE_SIZE;
      this.map(va, pa, { ...options, pageSizeBytes: step });
      done += step;
    }
  }

  unmap(gva: bigint): boolean {
    const walk = this.walk(gva);
    if (walk === null) return false;
    this.memory.writeU64(walk.steps[walk.steps.length - 1]!.entryGpa, 0n);
    return true;
  }

  walk(gva: bigint): PageWalk | null {
    return walkPageTables(this.memory, this.cr3, gva);
  }
}

function entryAddress(table: bigint, gva: bigint, level: number): bigint {
  return table + ((gva >> BigInt(12 + 9 * (level - 1))) & 0x1ffn) * 8n;
}
