// SPDX-License-Identifier: Apache-2.0
/**
 * A software walk of x86-64 4-level page tables through guest physical reads, for translating
 * with a CR3 the tool names (a process that is not running on any vCPU) instead of a vCPU's
 * current one (KVMI_VCPU_TRANSLATE_GVA). Intel SDM vol. 3A §4.5.
 */

const PRESENT = 1n;
const PAGE_SIZE_BIT = 1n << 7n;
/** Physical-address bits 12..51 of an entry. */
const ADDRESS_MASK = ((1n << 52n) - 1n) & ~0xfffn;
const INDEX_MASK = 0x1ffn;

/** Reads guest physical memory inside one page; undefined when not backed. */
export type PhysicalRead = (gpa: bigint, size: number) => Promise<Uint8Array | undefined>;

function canonical(gva: bigint): boolean {
  const top = gva >> 47n;
  return top === 0n || top === (1n << 17n) - 1n;
}

async function entry(read: PhysicalRead, table: bigint, index: bigint): Promise<bigint | undefined> {
  const bytes = await read(table + index * 8n, 8);
  if (bytes === undefined) return undefined;
  return new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
}

/** Translates `gva` with the tables at `cr3`; undefined when unmapped or non-canonical. */
export async function walkPageTables(read: PhysicalRead, cr3: bigint, gva: bigint): Promise<bigint | undefined> {
  if (!canonical(gva)) return undefined;
  let table = cr3 & ADDRESS_MASK;
  // PML4 (level 4) down to PT (level 1); PDPTE and PDE may map 1 GiB / 2 MiB pages.
  for (let level = 4n; level >= 1n; level--) {
    const shift = 12n + 9n * (level - 1n);
    const value = await entry(read, table, (gva >> shift) & INDEX_MASK);
    if (value === undefined || (value & PRESENT) === 0n) return undefined;
    if (level === 1n || ((level === 2n || level === 3n) && (value & PAGE_SIZE_BIT) !== 0n)) {
      const pageMask = (1n << shift) - 1n;
      return (value & ADDRESS_MASK & ~pageMask) | (gva & pageMask);
    }
    table = value & ADDRESS_MASK;
  }
  return undefined;
}
