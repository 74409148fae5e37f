// SPDX-License-Identifier: Apache-2.0
// readPhysical over several BatchReadMemory calls: two in flight, data and holes in address order
// whichever call finishes first, and the first failure stops the read.
import { describe, expect, it } from "vitest";
import { CommandSurface } from "./commands.js";
import type { MemoryRangeInput, MemoryRangeResultInfo } from "./command-types.js";
import { MemoryHoleError } from "./errors.js";

const MiB = 1024 * 1024;
const CHUNK = 2 * MiB;

/** A CommandSurface whose BatchReadMemory answers from a function, recording concurrency. */
class FakeReads extends CommandSurface {
  inFlight = 0;
  maxInFlight = 0;
  calls: bigint[] = [];

  constructor(private readonly answer: (range: MemoryRangeInput, call: number) => Promise<MemoryRangeResultInfo>) {
    super("00000000-0000-4000-8000-000000000001", undefined as never, undefined as never);
  }

  override async batchReadMemory(ranges: readonly MemoryRangeInput[]): Promise<MemoryRangeResultInfo[]> {
    const call = this.calls.push(ranges[0]!.address) - 1;
    this.maxInFlight = Math.max(this.maxInFlight, ++this.inFlight);
    try {
      return [await this.answer(ranges[0]!, call)];
    } finally {
      this.inFlight--;
    }
  }
}

/** Bytes whose value is their guest-physical page number's low byte. */
function pages(range: MemoryRangeInput): Uint8Array {
  const length = Number(range.length);
  const data = new Uint8Array(length);
  for (let offset = 0; offset < length; offset += 4096) data.fill(Number(((range.address + BigInt(offset)) >> 12n) & 0xffn), offset, offset + 4096);
  return data;
}

const later = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

describe("readPhysical over several calls", () => {
  it("keeps two calls in flight and assembles the data in address order", async () => {
    // Even calls answer slowly, so later chunks finish before earlier ones.
    const vm = new FakeReads(async (range, call) => {
      await later(call % 2 === 0 ? 20 : 1);
      return { ok: true, data: pages(range), holes: [] } as MemoryRangeResultInfo;
    });
    const length = 3 * CHUNK + 4096;
    const data = await vm.readPhysical(0x100000n, length);
    expect(vm.maxInFlight).toBe(2);
    expect(vm.calls).toEqual([0x100000n, 0x100000n + BigInt(CHUNK), 0x100000n + 2n * BigInt(CHUNK), 0x100000n + 3n * BigInt(CHUNK)]);
    // Buffer.equals: a deep toEqual of 6 MiB element by element takes seconds.
    expect(data.length).toBe(length);
    expect(Buffer.from(data).equals(pages({ address: 0x100000n, length }))).toBe(true);
  });

  it("reports holes of every chunk in address order", async () => {
    const vm = new FakeReads(async (range, call) => {
      await later(call === 0 ? 20 : 1);
      const hole = { address: range.address + 4096n, length: 4096n, reason: "notPresent" as const };
      return { ok: true, data: new Uint8Array(Number(range.length)), holes: [hole] } as MemoryRangeResultInfo;
    });
    const err = await vm.readPhysical(0n, 3 * CHUNK).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MemoryHoleError);
    expect((err as MemoryHoleError).holes.map((h) => h.address)).toEqual([4096n, BigInt(CHUNK) + 4096n, 2n * BigInt(CHUNK) + 4096n]);
  });

  it("stops at the first failed call", async () => {
    const failure = new Error("the VM went away");
    const vm = new FakeReads(async (range, call) => {
      await later(5);
      if (call === 1) return { ok: false, error: failure } as unknown as MemoryRangeResultInfo;
      return { ok: true, data: pages(range), holes: [] } as MemoryRangeResultInfo;
    });
    await expect(vm.readPhysical(0n, 8 * CHUNK)).rejects.toBe(failure);
    // Calls 0 and 1 were in flight together; the lane of call 0 may start one more, none after.
    expect(vm.calls.length).toBeLessThanOrEqual(3);
  });
});
