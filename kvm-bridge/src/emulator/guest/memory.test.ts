// SPDX-License-Identifier: Apache-2.0
import { describe, expect, it } from "vitest";
import { GuestModelError } from "./errors.js";
import {
  E820_TYPE_RAM, E820_TYPE_RESERVED, KVMI_PAGE_ACCESS_R, KVMI_PAGE_ACCESS_RWX, createGuestMemory,
} from "./memory.js";
import { createPageAllocator } from "./page-allocator.js";

const MiB = 0x100000n;

describe("guest memory layout", () => {
  it("has low RAM, the legacy hole, and RAM from 1 MiB to the configured size", () => {
    const mem = createGuestMemory({ memoryMiB: 256 });
    expect(mem.slots.map((s) => [s.baseGpa, s.sizeBytes])).toEqual([
      [0n, 0x9f000],
      [MiB, 255 * 0x100000],
    ]);
    expect(mem.maxGfn()).toBe(0x10000n);
    expect(mem.ramBytes).toBe(0x9f000 + 255 * 0x100000);
    expect(mem.isMapped(0x9en)).toBe(true);
    expect(mem.isMapped(0x9fn)).toBe(false);
    expect(mem.isMapped(0xffn)).toBe(false);
    expect(mem.isMapped(0x100n)).toBe(true);
  });

  it("answers GFN_NOT_MAPPED inside holes and at maxGfn (the selftest's ENOENT case)", () => {
    const mem = createGuestMemory({ memoryMiB: 32 });
    expect(mem.read(0xa0000n, 16)).toEqual({ ok: false, error: "GFN_NOT_MAPPED", gfn: 0xa0n });
    const atMax = mem.maxGfn() << 12n;
    expect(mem.read(atMax, 1)).toMatchObject({ ok: false, gfn: mem.maxGfn() });
    expect(mem.write(atMax, new Uint8Array([1]))).toMatchObject({ ok: false });
    expect(mem.read(-4096n, 1)).toMatchObject({ ok: false });
  });

  it("writes all or nothing when a range runs into a hole", () => {
    const mem = createGuestMemory({ memoryMiB: 32 });
    const res = mem.write(0x9eff8n, new Uint8Array(16).fill(0xab));
    expect(res).toEqual({ ok: false, error: "GFN_NOT_MAPPED", gfn: 0x9fn });
    expect(mem.read(0x9eff8n, 8)).toEqual({ ok: true, bytes: new Uint8Array(8) });
  });

  it("relocates RAM above a configured MMIO hole and reports ENOENT inside it", () => {
    const mem = createGuestMemory({ memoryMiB: 64, mmioHole: { gpa: 32n * MiB, sizeBytes: 16n * MiB } });
    expect(mem.slots.map((s) => [s.baseGpa, BigInt(s.sizeBytes)])).toEqual([
      [0n, 0x9f000n],
      [MiB, 31n * MiB],
      [48n * MiB, 32n * MiB],
    ]);
    expect(mem.maxGfn()).toBe((80n * MiB) >> 12n);
    expect(mem.read(40n * MiB, 8)).toMatchObject({ ok: false, gfn: (40n * MiB) >> 12n });
    expect(mem.write(48n * MiB, new Uint8Array([7]))).toEqual({ ok: true });
  });

  it("builds a sorted e820 map with RAM and the reserved BIOS ranges", () => {
    const mem = createGuestMemory({ memoryMiB: 128 });
    const e820 = mem.e820();
    expect(e820.length).toBeLessThanOrEqual(8);
    expect(e820).toEqual([
      { address: 0n, length: 0x9f000n, type: E820_TYPE_RAM },
      { address: 0x9f000n, length: 0x1000n, type: E820_TYPE_RESERVED },
      { address: 0xf0000n, length: 0x10000n, type: E820_TYPE_RESERVED },
      { address: MiB, length: 127n * MiB, type: E820_TYPE_RAM },
      { address: 0xfffc0000n, length: 0x40000n, type: E820_TYPE_RESERVED },
    ]);
  });

  it("reads and writes across page boundaries inside a slot, and typed helpers agree", () => {
    const mem = createGuestMemory({ memoryMiB: 8 });
    const bytes = Uint8Array.from({ length: 6000 }, (_, i) => i & 0xff);
    expect(mem.write(0x200ffcn, bytes).ok).toBe(true);
    const back = mem.read(0x200ffcn, 6000);
    expect(back.ok && Buffer.from(back.bytes).equals(Buffer.from(bytes))).toBe(true);
    expect(mem.writeU64(0x300000n, 0x1122334455667788n)).toBe(true);
    expect(mem.readU64(0x300000n)).toBe(0x1122334455667788n);
    expect(mem.readU32(0x300004n)).toBe(0x11223344);
    expect(mem.readU64(0x9f000n)).toBeUndefined();
  });

  it("keeps a per-GFN access table defaulting to rwx", () => {
    const mem = createGuestMemory({ memoryMiB: 8 });
    expect(mem.getPageAccess(0x200n)).toBe(KVMI_PAGE_ACCESS_RWX);
    expect(mem.setPageAccess(0x200n, KVMI_PAGE_ACCESS_R)).toBe(true);
    expect(mem.setPageAccess(0x201n, 0)).toBe(true);
    expect(mem.setPageAccess(0x202n, 8)).toBe(false);
    expect(mem.setPageAccess(0x202n, 1.5)).toBe(false);
    expect(mem.getPageAccess(0x200n)).toBe(1);
    expect(mem.restrictions()).toEqual(new Map([[0x200n, 1], [0x201n, 0]]));
    mem.setPageAccess(0x200n, 7);
    expect(mem.restrictions().has(0x200n)).toBe(false);
    mem.clearAllRestrictions();
    expect(mem.getPageAccess(0x201n)).toBe(7);
  });

  it("handles hundreds of MiB cheaply and zeroes everything on reset", () => {
    const mem = createGuestMemory({ memoryMiB: 512 });
    mem.write(400n * MiB, new Uint8Array([1, 2, 3]));
    mem.setPageAccess(5n, 0);
    mem.reset();
    expect(mem.read(400n * MiB, 3)).toEqual({ ok: true, bytes: new Uint8Array(3) });
    expect(mem.restrictions().size).toBe(0);
  });

  it("rejects bad options with GuestModelError", () => {
    expect(() => createGuestMemory({ memoryMiB: 1 })).toThrow(GuestModelError);
    expect(() => createGuestMemory({ memoryMiB: 3.5 })).toThrow(GuestModelError);
    expect(() => createGuestMemory({ memoryMiB: 16, mmioHole: { gpa: 0x1000n, sizeBytes: 0x1000n } })).toThrow(
      expect.objectContaining({ code: "GUEST_INVALID_ARGUMENT" }),
    );
  });
});

describe("page allocator", () => {
  it("hands out zeroed, aligned pages in allocation order and skips holes", () => {
    const mem = createGuestMemory({ memoryMiB: 8 });
    mem.write(0x100000n, new Uint8Array([0xff]));
    const alloc = createPageAllocator(mem);
    expect(alloc.alloc()).toBe(0x100000n);
    expect(mem.read(0x100000n, 1)).toEqual({ ok: true, bytes: new Uint8Array(1) });
    expect(alloc.alloc(512, 512)).toBe(0x200000n);
    expect(alloc.alloc()).toBe(0x400000n);
    expect(alloc.allocatedPages).toBe(514);
    const low = createPageAllocator(mem, { startGpa: 0x9e000n });
    expect(low.alloc()).toBe(0x9e000n);
    expect(low.alloc()).toBe(0x100000n);
  });

  it("fails with GUEST_OUT_OF_MEMORY when RAM runs out", () => {
    const mem = createGuestMemory({ memoryMiB: 2 });
    const alloc = createPageAllocator(mem);
    expect(() => alloc.alloc(257)).toThrow(expect.objectContaining({ code: "GUEST_OUT_OF_MEMORY" }));
    expect(alloc.alloc(256)).toBe(0x100000n);
    expect(() => alloc.alloc()).toThrow(GuestModelError);
  });
});
