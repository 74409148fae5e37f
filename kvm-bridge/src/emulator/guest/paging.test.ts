// SPDX-License-Identifier: Apache-2.0
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { createGuestMemory, type GuestMemory } from "./memory.js";
import { createPageAllocator } from "./page-allocator.js";
import {
  PAGE_SIZE_1G, PAGE_SIZE_2M, PTE_ADDR_MASK, PTE_NX, PTE_PRESENT, PTE_PSE, PTE_RW, PTE_USER, createAddressSpace,
  translateGva, walkPageTables, type PhysicalReader,
} from "./paging.js";

function setup(memoryMiB = 16) {
  const memory = createGuestMemory({ memoryMiB });
  const allocator = createPageAllocator(memory);
  return { memory, allocator, space: createAddressSpace(memory, allocator) };
}

/** What an outside tool has: page-bounded physical reads (KVMI_VM_READ_PHYSICAL), nothing else. */
function outsideReader(memory: GuestMemory): PhysicalReader & { reads: number } {
  const reader = {
    reads: 0,
    readU64(gpa: bigint) {
      reader.reads++;
      const r = memory.read(gpa, 8);
      return r.ok ? new DataView(r.bytes.buffer).getBigUint64(0, true) : undefined;
    },
  };
  return reader;
}

describe("4-level paging", () => {
  it("translates a 4 KiB mapping through four real table levels in guest memory", () => {
    const { memory, allocator, space } = setup();
    const page = allocator.alloc();
    const gva = 0x7f12_3456_7000n;
    space.map(gva, page, { user: true, writable: false });
    const reader = outsideReader(memory);
    const walk = walkPageTables(reader, space.cr3, gva + 0x123n);
    expect(walk?.gpa).toBe(page + 0x123n);
    expect(walk?.pageSizeBytes).toBe(4096);
    expect(walk?.steps.map((s) => s.level)).toEqual([4, 3, 2, 1]);
    expect(reader.reads).toBe(4);
    expect(walk).toMatchObject({ writable: false, user: true, executable: true });
    // Each step is a hardware-format entry found exactly where the MMU looks for it.
    expect(walk?.steps[0]?.entryGpa).toBe(space.cr3 + ((gva >> 39n) & 0x1ffn) * 8n);
    const pte = walk!.steps[3]!.entry;
    expect(pte & PTE_ADDR_MASK).toBe(page);
    expect(pte & (PTE_PRESENT | PTE_USER | PTE_RW)).toBe(PTE_PRESENT | PTE_USER);
  });

  it("maps 2 MiB large pages with PS in the PDE", () => {
    const { allocator, space } = setup();
    const big = allocator.alloc(512, 512);
    space.map(0xffffffff80000000n, big, { pageSizeBytes: PAGE_SIZE_2M, executable: false });
    const walk = space.walk(0xffffffff8012cdefn);
    expect(walk?.gpa).toBe(big + 0x12cdefn);
    expect(walk?.pageSizeBytes).toBe(PAGE_SIZE_2M);
    expect(walk?.steps).toHaveLength(3);
    expect(walk!.steps[2]!.entry & (PTE_PSE | PTE_NX)).toBe(PTE_PSE | PTE_NX);
    expect(walk?.executable).toBe(false);
  });

  it("walks a 1 GiB page written by hand (PS in the PDPTE)", () => {
    const { memory, allocator, space } = setup();
    space.map(0x40000000n, allocator.alloc()); // creates PML4E[0] -> PDPT
    const pdpt = space.walk(0x40000000n)!.steps[1]!.entryGpa - 8n; // PDPT base (index 1 -> entry at +8)
    memory.writeU64(pdpt + 2n * 8n, 0x0n | PTE_PRESENT | PTE_RW | PTE_PSE);
    const walk = walkPageTables(memory, space.cr3, 0x80000000n + 0x12345n);
    expect(walk).toMatchObject({ gpa: 0x12345n, pageSizeBytes: PAGE_SIZE_1G });
  });

  it("returns null for non-canonical, unmapped, reserved-PS and out-of-RAM walks", () => {
    const { memory, allocator, space } = setup();
    space.map(0x1000n, allocator.alloc());
    expect(translateGva(memory, space.cr3, 0x0000_8000_0000_0000n)).toBeNull();
    expect(translateGva(memory, space.cr3, (1n << 64n) - 1n)).toBeNull();
    expect(translateGva(memory, space.cr3, 0x2000n)).toBeNull();
    expect(translateGva(memory, space.cr3, 0xffff_8000_0000_0000n)).toBeNull();
    memory.writeU64(space.cr3 + 8n * 5n, 0x200000n | PTE_PRESENT | PTE_PSE);
    expect(translateGva(memory, space.cr3, 5n << 39n)).toBeNull();
    memory.writeU64(space.cr3 + 8n * 6n, 0x9f000n | PTE_PRESENT);
    expect(translateGva(memory, space.cr3, 6n << 39n)).toBeNull();
  });

  it("shares the kernel half between address spaces but not user mappings", () => {
    const { memory, allocator, space: kernel } = setup();
    const kpage = allocator.alloc();
    kernel.map(0xffffffff80000000n, kpage);
    const task = createAddressSpace(memory, allocator, { shareKernelHalfWith: kernel });
    const upage = allocator.alloc();
    task.map(0x400000n, upage, { user: true });
    expect(task.walk(0xffffffff80000000n)?.gpa).toBe(kpage);
    expect(kernel.walk(0x400000n)).toBeNull();
    // Later kernel mappings under an existing PML4 entry show up in both (shared lower tables).
    kernel.map(0xffffffff80001000n, upage);
    expect(task.walk(0xffffffff80001000n)?.gpa).toBe(upage);
  });

  it("unmaps and rejects conflicting or misaligned mappings", () => {
    const { allocator, space } = setup();
    const big = allocator.alloc(512, 512);
    space.map(0x40000000n, big, { pageSizeBytes: PAGE_SIZE_2M });
    expect(() => space.map(0x40001000n, allocator.alloc())).toThrow(expect.objectContaining({ code: "GUEST_MAPPING_CONFLICT" }));
    space.map(0x60000000n, allocator.alloc());
    expect(() => space.map(0x60000000n, big, { pageSizeBytes: PAGE_SIZE_2M })).toThrow(
      expect.objectContaining({ code: "GUEST_MAPPING_CONFLICT" }),
    );
    expect(() => space.map(0x1001n, 0x1000n)).toThrow(expect.objectContaining({ code: "GUEST_INVALID_ARGUMENT" }));
    expect(() => space.map(0x0000_8000_0000_0000n, 0x1000n)).toThrow(expect.objectContaining({ code: "GUEST_INVALID_ARGUMENT" }));
    expect(space.unmap(0x60000000n)).toBe(true);
    expect(space.walk(0x60000000n)).toBeNull();
    expect(space.unmap(0x60000000n)).toBe(false);
  });

  it("mapRange uses large pages only where both addresses are 2 MiB aligned", () => {
    const { space } = setup(32);
    space.mapRange(0x100000n, 0x100000n, 0x500000, { largePages: true });
    expect(space.walk(0x100000n)?.pageSizeBytes).toBe(4096);
    expect(space.walk(0x200000n)?.pageSizeBytes).toBe(PAGE_SIZE_2M);
    expect(space.walk(0x5ff000n)?.gpa).toBe(0x5ff000n);
    expect(space.walk(0x600000n)).toBeNull();
  });

  it("property: every randomly mapped page translates to its gpa, and nothing else translates", () => {
    const canonical = fc.oneof(
      fc.bigInt({ min: 0n, max: (1n << 35n) - 1n }).map((vpn) => vpn << 12n),
      fc.bigInt({ min: 0n, max: (1n << 35n) - 1n }).map((vpn) => 0xffff_8000_0000_0000n | (vpn << 12n)),
    );
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.tuple(canonical, fc.integer({ min: 0, max: 2047 })), {
          minLength: 1, maxLength: 24, selector: ([gva]) => gva,
        }),
        canonical,
        fc.integer({ min: 0, max: 4095 }),
        (pages, probe, offset) => {
          const { memory, space } = setup(16);
          const mapped = new Map(pages.map(([gva, frame]) => [gva, 0x800000n + BigInt(frame) * 4096n]));
          for (const [gva, gpa] of mapped) space.map(gva, gpa);
          const reader = outsideReader(memory);
          for (const [gva, gpa] of mapped) {
            expect(walkPageTables(reader, space.cr3, gva + BigInt(offset))?.gpa).toBe(gpa + BigInt(offset));
          }
          const expected = mapped.get(probe);
          expect(translateGva(memory, space.cr3, probe)).toBe(expected ?? null);
        },
      ),
      { numRuns: 60 },
    );
  });
});
