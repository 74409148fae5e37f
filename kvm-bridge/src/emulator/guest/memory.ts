// SPDX-License-Identifier: Apache-2.0
/**
 * Guest physical memory: a PC-like set of memslots with real holes, plus the per-GFN access
 * restrictions that KVMI_VM_SET_PAGE_ACCESS installs (kvmi-abi §4 id 23).
 *
 * Layout for `memoryMiB = M` (QEMU `pc` style, so tools see what they would see on a real host):
 *
 * | slot | GPA range                         | note                                                    |
 * |------|-----------------------------------|---------------------------------------------------------|
 * | 0    | `0 .. 0x9f000`                    | low RAM (below the EBDA)                                |
 * | —    | `0x9f000 .. 0x100000`             | hole: EBDA, VGA window, option ROMs, BIOS (ENOENT)      |
 * | 1    | `0x100000 .. min(M MiB, hole)`    | RAM                                                     |
 * | —    | `hole.gpa .. hole.gpa + size`     | MMIO hole (default 3 GiB..4 GiB, like the PCI hole)     |
 * | 2    | `hole end .. + (M MiB - hole.gpa)`| RAM relocated above the hole, only if M MiB > hole.gpa  |
 *
 * Each slot is backed by one `Uint8Array`. Fresh `ArrayBuffer`s are zero pages the OS hands out lazily,
 * so a few hundred MiB of guest RAM costs nothing until it is touched, and a reset swaps the arrays
 * rather than clearing them.
 */
import type { PhysicalReader } from "./paging.js";
import { GuestModelError } from "./errors.js";

/** Guest page size in bytes (x86 4 KiB pages; KVMI reads and writes never cross one). */
export const PAGE_SIZE = 4096;
/** log2 of {@link PAGE_SIZE}: `gfn = gpa >> PAGE_SHIFT`. */
export const PAGE_SHIFT = 12;

/** First GPA past low RAM: QEMU reserves 0x9f000.. for the EBDA. */
export const LOW_RAM_END_GPA = 0x9f000n;
/** Start of high RAM (1 MiB). */
export const HIGH_RAM_START_GPA = 0x100000n;
/** Default MMIO hole: 3 GiB..4 GiB (the 32-bit PCI window). */
export const DEFAULT_MMIO_HOLE = { gpa: 0xc0000000n, sizeBytes: 0x40000000n } as const;

/** KVMI page-access bits (`KVMI_PAGE_ACCESS_*`, kvmi-abi §4): the access that is *allowed*. */
export const KVMI_PAGE_ACCESS_R = 1;
export const KVMI_PAGE_ACCESS_W = 2;
export const KVMI_PAGE_ACCESS_X = 4;
/** Unrestricted (`access = 7` removes tracking). */
export const KVMI_PAGE_ACCESS_RWX = 7;

/** e820 types (`E820_TYPE_*`, `arch/x86/include/asm/e820/types.h`). */
export const E820_TYPE_RAM = 1;
export const E820_TYPE_RESERVED = 2;

/** One KVM user memslot: a contiguous, RAM-backed GPA range. */
export interface MemorySlot {
  /** KVM memslot id. */
  readonly id: number;
  readonly baseGpa: bigint;
  readonly baseGfn: bigint;
  readonly npages: number;
  readonly sizeBytes: number;
}

/** One e820 entry as in the QEMU handshake variant (`{u64 address; u64 length; u32 type}`, kvmi-abi §2.3). */
export interface E820Entry {
  readonly address: bigint;
  readonly length: bigint;
  readonly type: number;
}

/** The access touched a GFN that no memslot backs (the kernel answers `-KVM_ENOENT`). */
export interface NotMapped {
  readonly ok: false;
  readonly error: "GFN_NOT_MAPPED";
  /** First GFN of the access that has no slot. */
  readonly gfn: bigint;
}

export type ReadResult = { readonly ok: true; readonly bytes: Uint8Array } | NotMapped;
export type WriteResult = { readonly ok: true } | NotMapped;

/** Options of {@link createGuestMemory}. */
export interface GuestMemoryOptions {
  /** Top of RAM in MiB, as QEMU `-m` (2..4096). */
  readonly memoryMiB: number;
  /** MMIO window without RAM; RAM that would fall inside it is relocated above it. `null` = none. */
  readonly mmioHole?: { readonly gpa: bigint; readonly sizeBytes: bigint } | null;
}

/** Guest physical memory (see the module comment for the slot layout). */
export interface GuestMemory extends PhysicalReader {
  /** Memslots in ascending GPA order. */
  readonly slots: readonly MemorySlot[];
  /** Bytes of RAM over all slots. */
  readonly ramBytes: number;
  /** The MMIO hole, if any. */
  readonly mmioHole: { readonly gpa: bigint; readonly sizeBytes: bigint } | null;
  /** 1 + the highest GFN of any slot: the first inaccessible GFN (KVMI_VM_GET_MAX_GFN, kvmi-abi §4 id 17). */
  maxGfn(): bigint;
  /** Whether a memslot backs `gfn`. */
  isMapped(gfn: bigint): boolean;
  /** The e820 map QEMU would hand over (≤ 8 entries, sorted by address). */
  e820(): readonly E820Entry[];
  /** Copies `length` bytes at `gpa`; may cross pages, fails if any byte has no slot. */
  read(gpa: bigint, length: number): ReadResult;
  /**
   * The `length` bytes at `gpa` without a copy, when one slot backs them all (undefined otherwise):
   * for a reply encoded at once, as the kernel copies guest memory straight into its message.
   */
  peek(gpa: bigint, length: number): Uint8Array | undefined;
  /** Writes `bytes` at `gpa`; all-or-nothing: nothing is written if any byte has no slot. */
  write(gpa: bigint, bytes: Uint8Array): WriteResult;
  readU32(gpa: bigint): number | undefined;
  writeU32(gpa: bigint, value: number): boolean;
  writeU64(gpa: bigint, value: bigint): boolean;
  /**
   * Sets the allowed access (bits R=1, W=2, X=4) of one GFN, as the EPT would enforce it. 7 removes the
   * restriction. Returns false for a value outside 0..7 (the kernel answers `-KVM_EINVAL`). Unmapped
   * GFNs are accepted and remembered, as v9 does, but no guest access can reach them.
   */
  setPageAccess(gfn: bigint, access: number): boolean;
  /** Allowed access of one GFN (7 unless restricted). */
  getPageAccess(gfn: bigint): number;
  /** Drops every restriction (what KVM_INTROSPECTION_UNHOOK does, kvmi-abi §2.6). */
  clearAllRestrictions(): void;
  /** Snapshot of all restricted GFNs. */
  restrictions(): ReadonlyMap<bigint, number>;
  /** Zeroes all RAM (cheaply, by swapping the backing arrays) and drops restrictions. @internal */
  reset(): void;
}

interface BackedSlot extends MemorySlot {
  data: Uint8Array;
  view: DataView;
  readonly endGpa: bigint;
}

const MiB = 1024 * 1024;

/**
 * Creates guest memory with the PC layout described in the module comment.
 * @throws GuestModelError `GUEST_INVALID_ARGUMENT` for a size outside 2..4096 MiB or a misplaced hole.
 */
export function createGuestMemory(options: GuestMemoryOptions): GuestMemory {
  const { memoryMiB } = options;
  if (!Number.isInteger(memoryMiB) || memoryMiB < 2 || memoryMiB > 4096) {
    throw new GuestModelError("GUEST_INVALID_ARGUMENT", `memoryMiB must be an integer in 2..4096, got ${memoryMiB}`);
  }
  const hole = options.mmioHole === undefined ? DEFAULT_MMIO_HOLE : options.mmioHole;
  if (hole !== null) {
    const aligned = hole.gpa % BigInt(PAGE_SIZE) === 0n && hole.sizeBytes % BigInt(PAGE_SIZE) === 0n;
    if (!aligned || hole.sizeBytes <= 0n || hole.gpa < 2n * HIGH_RAM_START_GPA) {
      throw new GuestModelError("GUEST_INVALID_ARGUMENT", "mmioHole must be page-aligned, non-empty and above 2 MiB");
    }
  }
  return new SlotMemory(BigInt(memoryMiB * MiB), hole);
}

class SlotMemory implements GuestMemory {
  readonly slots: readonly BackedSlot[];
  readonly ramBytes: number;
  readonly mmioHole: { readonly gpa: bigint; readonly sizeBytes: bigint } | null;
  private readonly access = new Map<bigint, number>();

  constructor(ramTop: bigint, hole: { readonly gpa: bigint; readonly sizeBytes: bigint } | null) {
    this.mmioHole = hole;
    const ranges: Array<[bigint, bigint]> = [[0n, LOW_RAM_END_GPA]];
    if (hole === null || ramTop <= hole.gpa) {
      ranges.push([HIGH_RAM_START_GPA, ramTop]);
    } else {
      ranges.push([HIGH_RAM_START_GPA, hole.gpa]);
      const above = hole.gpa + hole.sizeBytes;
      ranges.push([above, above + (ramTop - hole.gpa)]);
    }
    this.slots = ranges.map(([start, end], id) => makeSlot(id, start, end));
    this.ramBytes = this.slots.reduce((sum, s) => sum + s.sizeBytes, 0);
  }

  maxGfn(): bigint {
    const last = this.slots[this.slots.length - 1]!;
    return last.baseGfn + BigInt(last.npages);
  }

  isMapped(gfn: bigint): boolean {
    return this.slotOf(gfn << BigInt(PAGE_SHIFT)) !== undefined;
  }

  e820(): readonly E820Entry[] {
    const entries: E820Entry[] = this.slots.map((s) => ({
      address: s.baseGpa,
      length: BigInt(s.sizeBytes),
      type: E820_TYPE_RAM,
    }));
    // The reserved ranges SeaBIOS reports: EBDA, the BIOS shadow, and the flash just below 4 GiB.
    const reserved: E820Entry[] = [
      { address: LOW_RAM_END_GPA, length: 0x1000n, type: E820_TYPE_RESERVED },
      { address: 0xf0000n, length: 0x10000n, type: E820_TYPE_RESERVED },
      { address: 0xfffc0000n, length: 0x40000n, type: E820_TYPE_RESERVED },
    ];
    for (const r of reserved) {
      if (!this.slots.some((s) => r.address < s.endGpa && s.baseGpa < r.address + r.length)) entries.push(r);
    }
    return entries.sort((a, b) => (a.address < b.address ? -1 : a.address > b.address ? 1 : 0));
  }

  read(gpa: bigint, length: number): ReadResult {
    checkLength(length);
    const out = new Uint8Array(length);
    const failed = this.chunks(gpa, length, (slot, off, pos, n) => out.set(slot.data.subarray(off, off + n), pos));
    return failed === undefined ? { ok: true, bytes: out } : notMapped(failed);
  }

  peek(gpa: bigint, length: number): Uint8Array | undefined {
    const hit = gpa >= 0n ? this.locate(gpa, length) : undefined;
    return hit === undefined ? undefined : hit[0].data.subarray(hit[1], hit[1] + length);
  }

  write(gpa: bigint, bytes: Uint8Array): WriteResult {
    // Validate first so that a write touching a hole leaves memory unchanged.
    const failed = this.chunks(gpa, bytes.length, () => undefined);
    if (failed !== undefined) return notMapped(failed);
    this.chunks(gpa, bytes.length, (slot, off, pos, n) => slot.data.set(bytes.subarray(pos, pos + n), off));
    return { ok: true };
  }

  readU64(gpa: bigint): bigint | undefined {
    const hit = this.locate(gpa, 8);
    if (hit !== undefined) return hit[0].view.getBigUint64(hit[1], true);
    const r = this.read(gpa, 8);
    return r.ok ? new DataView(r.bytes.buffer).getBigUint64(0, true) : undefined;
  }

  writeU64(gpa: bigint, value: bigint): boolean {
    const bytes = new Uint8Array(8);
    new DataView(bytes.buffer).setBigUint64(0, BigInt.asUintN(64, value), true);
    return this.write(gpa, bytes).ok;
  }

  readU32(gpa: bigint): number | undefined {
    const r = this.read(gpa, 4);
    return r.ok ? new DataView(r.bytes.buffer).getUint32(0, true) : undefined;
  }

  writeU32(gpa: bigint, value: number): boolean {
    const bytes = new Uint8Array(4);
    new DataView(bytes.buffer).setUint32(0, value >>> 0, true);
    return this.write(gpa, bytes).ok;
  }

  setPageAccess(gfn: bigint, access: number): boolean {
    if (!Number.isInteger(access) || access < 0 || access > KVMI_PAGE_ACCESS_RWX) return false;
    if (access === KVMI_PAGE_ACCESS_RWX) this.access.delete(gfn);
    else this.access.set(gfn, access);
    return true;
  }

  getPageAccess(gfn: bigint): number {
    // The map is empty unless a tool is tracking pages; keep the guest's hot path cheap then.
    if (this.access.size === 0) return KVMI_PAGE_ACCESS_RWX;
    return this.access.get(gfn) ?? KVMI_PAGE_ACCESS_RWX;
  }

  clearAllRestrictions(): void {
    this.access.clear();
  }

  restrictions(): ReadonlyMap<bigint, number> {
    return new Map(this.access);
  }

  reset(): void {
    for (const slot of this.slots) {
      slot.data = new Uint8Array(slot.sizeBytes);
      slot.view = new DataView(slot.data.buffer);
    }
    this.access.clear();
  }

  private slotOf(gpa: bigint): BackedSlot | undefined {
    for (const s of this.slots) if (gpa >= s.baseGpa && gpa < s.endGpa) return s;
    return undefined;
  }

  /** Slot and offset when `[gpa, gpa+length)` lies inside one slot. */
  private locate(gpa: bigint, length: number): [BackedSlot, number] | undefined {
    const s = this.slotOf(gpa);
    if (s === undefined) return undefined;
    const off = Number(gpa - s.baseGpa);
    return off + length <= s.sizeBytes ? [s, off] : undefined;
  }

  /** Visits `[gpa, gpa+length)` slot by slot; returns the first unbacked GFN, if any. */
  private chunks(
    gpa: bigint,
    length: number,
    visit: (slot: BackedSlot, offset: number, position: number, count: number) => void,
  ): bigint | undefined {
    let pos = 0;
    while (pos < length) {
      const at = gpa + BigInt(pos);
      const s = at >= 0n ? this.slotOf(at) : undefined;
      if (s === undefined) return at >> BigInt(PAGE_SHIFT);
      const off = Number(at - s.baseGpa);
      const n = Math.min(length - pos, s.sizeBytes - off);
      visit(s, off, pos, n);
      pos += n;
    }
    return undefined;
  }
}

function makeSlot(id: number, start: bigint, end: bigint): BackedSlot {
  const sizeBytes = Number(end - start);
  const data = new Uint8Array(sizeBytes);
  return {
    id,
    baseGpa: start,
    baseGfn: start >> BigInt(PAGE_SHIFT),
    npages: sizeBytes / PAGE_SIZE,
    sizeBytes,
    endGpa: end,
    data,
    view: new DataView(data.buffer),
  };
}

function notMapped(gfn: bigint): NotMapped {
  return { ok: false, error: "GFN_NOT_MAPPED", gfn };
}

function checkLength(length: number): void {
  if (!Number.isInteger(length) || length < 0) {
    throw new GuestModelError("GUEST_INVALID_ARGUMENT", `length must be a non-negative integer, got ${length}`);
  }
}
