// SPDX-License-Identifier: Apache-2.0
/**
 * A bump allocator for guest-physical pages. Page tables and workload data are placed with it so that
 * their GPAs depend only on allocation order: the same guest options always yield the same physical
 * layout, which keeps the workload deterministic without publishing GPAs as a contract (tools find
 * everything by walking page tables from CR3).
 */
import { GuestModelError } from "./errors.js";
import { PAGE_SHIFT, PAGE_SIZE, type GuestMemory } from "./memory.js";

/** Hands out zeroed, never-reused guest-physical pages. */
export interface PageAllocator {
  /**
   * Allocates `npages` physically contiguous pages inside one memslot, aligned to `alignPages` pages
   * (e.g. 512 for a 2 MiB large page), and zeroes them.
   * @returns the GPA of the first page.
   * @throws GuestModelError `GUEST_OUT_OF_MEMORY` when no slot has room left.
   */
  alloc(npages?: number, alignPages?: number): bigint;
  /** Pages handed out so far (alignment gaps excluded). */
  readonly allocatedPages: number;
}

/** Options of {@link createPageAllocator}. */
export interface PageAllocatorOptions {
  /** Lowest GPA to hand out (default 1 MiB, leaving low RAM to the "firmware"). */
  readonly startGpa?: bigint;
}

/** Creates a bump allocator over the RAM slots of `memory`. */
export function createPageAllocator(memory: GuestMemory, options: PageAllocatorOptions = {}): PageAllocator {
  let cursorGfn = (options.startGpa ?? 0x100000n) >> BigInt(PAGE_SHIFT);
  let allocatedPages = 0;
  return {
    get allocatedPages() {
      return allocatedPages;
    },
    alloc(npages = 1, alignPages = 1): bigint {
      if (!Number.isInteger(npages) || npages < 1 || !Number.isInteger(alignPages) || alignPages < 1) {
        throw new GuestModelError("GUEST_INVALID_ARGUMENT", "npages and alignPages must be positive integers");
      }
      const align = BigInt(alignPages);
      for (const slot of memory.slots) {
        const slotEnd = slot.baseGfn + BigInt(slot.npages);
        let gfn = cursorGfn > slot.baseGfn ? cursorGfn : slot.baseGfn;
        gfn = ((gfn + align - 1n) / align) * align;
        if (gfn + BigInt(npages) > slotEnd) continue;
        cursorGfn = gfn + BigInt(npages);
        allocatedPages += npages;
        const gpa = gfn << BigInt(PAGE_SHIFT);
        memory.write(gpa, new Uint8Array(npages * PAGE_SIZE));
        return gpa;
      }
      throw new GuestModelError("GUEST_OUT_OF_MEMORY", `no room for ${npages} guest page(s)`);
    },
  };
}
