// SPDX-License-Identifier: Apache-2.0
// Page splitting and the software page walk used to translate with a CR3.
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { PAGE_SIZE, splitPages, walkPageTables } from "./memory.js";
import { uuidOf } from "./names.js";

describe("splitPages", () => {
  it("covers the range contiguously with pieces that never cross a page (property)", () => {
    fc.assert(
      fc.property(fc.bigInt({ min: 0n, max: (1n << 64n) - (1n << 24n) }), fc.integer({ min: 0, max: 5 * PAGE_SIZE }), (address, length) => {
        const pieces = splitPages(address, length);
        let offset = 0;
        for (const p of pieces) {
          expect(p.offset).toBe(offset);
          expect(p.address).toBe(address + BigInt(offset));
          expect(p.length).toBeGreaterThan(0);
          expect(Number(p.address % BigInt(PAGE_SIZE)) + p.length).toBeLessThanOrEqual(PAGE_SIZE);
          offset += p.length;
        }
        expect(offset).toBe(length);
      }),
    );
  });

  it("splits at the boundary", () => {
    expect(splitPages(0xff0n, 0x20)).toEqual([
      { address: 0xff0n, offset: 0, length: 0x10 },
      { address: 0x1000n, offset: 0x10, length: 0x10 },
    ]);
  });
});

/** A sparse guest-physical memory of u64 entries. */
function memory(entries: Record<string, bigint>) {
  const map = new Map(Object.entries(entries).map(([k, v]) => [BigInt(k), v]));
  return async (gpa: bigint, size: number): Promise<Uint8Array | undefined> => {
    expect(size).toBe(8);
    const bytes = new Uint8Array(8);
    new DataView(bytes.buffer).setBigUint64(0, map.get(gpa) ?? 0n, true);
    return bytes;
  };
}

describe("walkPageTables", () => {
  const P = 1n; // present
  const RW = 2n;
  const PS = 1n << 7n;
  const NX = 1n << 63n;
  const gva = 0xffffffff80201234n; // PML4 511, PDPT 510, PD 1, PT 1
  const index = (level: bigint) => (gva >> level) & 0x1ffn;

  it("walks 4 KiB pages (and ignores NX and PCID bits)", async () => {
    const read = memory({
      [String(0x1000n + index(39n) * 8n)]: 0x2000n | P | RW,
      [String(0x2000n + index(30n) * 8n)]: 0x3000n | P | RW,
      [String(0x3000n + index(21n) * 8n)]: 0x4000n | P | RW,
      [String(0x4000n + index(12n) * 8n)]: 0x9999000n | P | NX,
    });
    expect(await walkPageTables(read, 0x1000n | 0x5n, gva)).toBe(0x9999234n);
  });

  it("stops at 2 MiB and 1 GiB pages", async () => {
    const two = memory({
      [String(0x1000n + index(39n) * 8n)]: 0x2000n | P,
      [String(0x2000n + index(30n) * 8n)]: 0x3000n | P,
      [String(0x3000n + index(21n) * 8n)]: 0x40000000n | P | PS,
    });
    expect(await walkPageTables(two, 0x1000n, gva)).toBe(0x40000000n + (gva & 0x1fffffn));
    const one = memory({
      [String(0x1000n + index(39n) * 8n)]: 0x2000n | P,
      [String(0x2000n + index(30n) * 8n)]: 0x80000000n | P | PS,
    });
    expect(await walkPageTables(one, 0x1000n, gva)).toBe(0x80000000n + (gva & 0x3fffffffn));
  });

  it("returns undefined for a missing level or an unreadable table", async () => {
    const read = memory({ [String(0x1000n + index(39n) * 8n)]: 0x2000n | P });
    expect(await walkPageTables(read, 0x1000n, gva)).toBeUndefined();
    expect(await walkPageTables(async () => undefined, 0x1000n, gva)).toBeUndefined();
  });
});

describe("uuidOf", () => {
  it("accepts UUIDs and vms/UUID names in any case, nothing else", () => {
    const uuid = "5b8a3c7e-1d2f-4e6a-9b0c-7d8e9f0a1b2c";
    expect(uuidOf(uuid)).toBe(uuid);
    expect(uuidOf(`vms/${uuid.toUpperCase()}`)).toBe(uuid);
    expect(uuidOf("emu-0")).toBeUndefined();
    expect(uuidOf(`vms/${uuid}/vcpus/0`)).toBeUndefined();
  });
});
