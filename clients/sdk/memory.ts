// SPDX-License-Identifier: Apache-2.0
/**
 * Guest memory helpers the typed methods build on: page splitting, hole conversion, and an x86_64
 * 4-level page walk for translating with a CR3 value (no vCPU involved), done with physical reads.
 * @internal
 */
import { HoleReason } from "@kvmi/proto";
import type { MemoryHole } from "@kvmi/proto";
import type { MemoryHoleInfo } from "./errors.js";

/** Guest page size (KVMI reads and writes at most one page per message). */
export const PAGE_SIZE = 4096;
const PAGE = BigInt(PAGE_SIZE);

/** One page-bounded piece of a range. */
export interface PagePiece {
  /** First address of the piece. */
  readonly address: bigint;
  /** Offset of the piece in the range. */
  readonly offset: number;
  /** Length of the piece, 1..4096. */
  readonly length: number;
}

/** Splits `[address, address + length)` at 4 KiB page boundaries. */
export function splitPages(address: bigint, length: number): PagePiece[] {
  const pieces: PagePiece[] = [];
  let offset = 0;
  while (offset < length) {
    const at = address + BigInt(offset);
    const room = Number(PAGE - (at % PAGE));
    const size = Math.min(room, length - offset);
    pieces.push({ address: at, offset, length: size });
    offset += size;
  }
  return pieces;
}

/** Converts wire holes to the SDK's shape. */
export function holesOf(holes: readonly MemoryHole[]): MemoryHoleInfo[] {
  return holes.map((h) => ({
    address: h.address,
    length: h.length,
    reason: h.reason === HoleReason.NOT_MAPPED ? "notMapped" : h.reason === HoleReason.NOT_PRESENT ? "notPresent" : "unspecified",
  }));
}

/** Reads `size` bytes of guest physical memory; `undefined` when the page is not backed. */
export type PhysicalReader = (gpa: bigint, size: number) => Promise<Uint8Array | undefined>;

const PRESENT = 1n;
const PAGE_SIZE_BIT = 1n << 7n;
const ADDRESS_MASK = 0x000ffffffffff000n;
const LEVEL_SHIFTS = [39n, 30n, 21n, 12n] as const;

/**
 * Translates `gva` by walking the x86_64 4-level page tables rooted at `cr3` (Intel SDM Vol. 3A
 * §4.5), honouring 1 GiB and 2 MiB pages. Access rights are not checked: this answers "where does
 * it map", as KVMI_VCPU_TRANSLATE_GVA does.
 * @returns the guest physical address, or `undefined` when a level is not present or unreadable.
 */
export async function walkPageTables(read: PhysicalReader, cr3: bigint, gva: bigint): Promise<bigint | undefined> {
  let table = cr3 & ADDRESS_MASK;
  for (let level = 0; level < LEVEL_SHIFTS.length; level++) {
    const shift = LEVEL_SHIFTS[level]!;
    const index = (gva >> shift) & 0x1ffn;
    const bytes = await read(table + index * 8n, 8);
    if (bytes === undefined || bytes.length < 8) return undefined;
    const entry = new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
    if ((entry & PRESENT) === 0n) return undefined;
    const last = level === LEVEL_SHIFTS.length - 1;
    // PS in a PDPTE (1 GiB) or PDE (2 MiB) ends the walk early.
    if (last || ((level === 1 || level === 2) && (entry & PAGE_SIZE_BIT) !== 0n)) {
      const offsetMask = (1n << shift) - 1n;
      return (entry & ADDRESS_MASK & ~offsetMask) | (gva & offsetMask);
    }
    table = entry & ADDRESS_MASK;
  }
  return undefined;
}

/** `0x…` hex of a bigint, for messages. */
export function hex(value: bigint | number): string {
  return `0x${value.toString(16)}`;
}
