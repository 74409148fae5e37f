// SPDX-License-Identifier: Apache-2.0
/**
 * Bulk memory access end to end, against guest content the test wrote itself: BatchReadMemory of
 * physical and virtual ranges (translated by a vCPU with KVMI_VCPU_TRANSLATE_GVA, or by the
 * bridge's software page walk from a CR3) that cross pages and contain holes (unmapped virtual
 * pages → NOT_MAPPED, pages beyond RAM or in the low hole → NOT_PRESENT), and DumpMemory of a range
 * and of the whole memory of a small VM, compared byte for byte with `guest.memory`, with progress
 * that only grows and ends at bytes_total and the low (EBDA/VGA/BIOS) hole reported.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { HoleReason } from "@kvmi/proto";
import type { DumpMemoryResponse, MemoryHole, MemoryRangeResult } from "@kvmi/proto";
import { guestModel } from "@kvmi/kvm-bridge/emulator";
import type { Guest } from "@kvmi/kvm-bridge/emulator";
import { expectGrpcError, GrpcStatus, Role, startHarness, streamFailure } from "../support/bridge-harness.js";
import type { Harness } from "../support/bridge-harness.js";

const MAIN = 0;
const SMALL = 1;
const PHYSICAL = 1;
const VIRTUAL = 2;
/** Low RAM ends here; the hole (EBDA, VGA window, option ROMs, BIOS) runs to 1 MiB. */
const LOW_HOLE = { start: 0x9f000n, end: 0x100000n };
/** A virtual window the test maps: page 0 → DATA_A, page 1 unmapped, page 2 → DATA_B, page 3 → beyond RAM. */
const WINDOW_GVA = 0xffff900000000000n;
const DATA_A = 0x50000n;
const DATA_B = 0x60000n;
/** A process address space not loaded on any vCPU (only the CR3 walk can read it). */
const PROCESS_GVA = 0x7f0000400000n;
const PROCESS_GPA = 0x70000n;

let h: Harness;
let beyondRam: bigint;
let processCr3: bigint;

const guest = (i = MAIN): Guest => h.vms[i]!.guest;

/** Deterministic, non-zero-heavy content (xorshift32). */
function pattern(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}

function physical(g: Guest, gpa: bigint, length: number): Buffer {
  const read = g.memory.read(gpa, length);
  if (!read.ok) throw new Error(`no guest memory at 0x${gpa.toString(16)}`);
  return Buffer.from(read.bytes);
}

function dataOf(result: MemoryRangeResult): Buffer {
  if (result.result.case !== "data") throw new Error(`range failed: ${JSON.stringify(result.result.value)}`);
  return Buffer.from(result.result.value);
}

const hole = (address: bigint, length: bigint, reason: HoleReason) => ({ address, length, reason });
const holesOf = (holes: readonly MemoryHole[]) => holes.map((x) => hole(x.address, x.length, x.reason));

beforeAll(async () => {
  h = await startHarness({ vms: [{ memoryMiB: 8 }, { memoryMiB: 2, handshake: "max-gpa" }] });
  const g = guest();
  beyondRam = g.memory.maxGfn() << 12n;
  // Known content in low RAM, around page boundaries.
  g.memory.write(0x10000n, pattern(0x4000, 1));
  g.memory.write(0x9c000n, pattern(0x3000, 2));
  g.memory.write(DATA_A, pattern(0x1000, 3));
  g.memory.write(DATA_B, pattern(0x1000, 4));
  g.memory.write(PROCESS_GPA, pattern(0x2000, 5));
  g.memory.write(0x1ff000n, pattern(0x2000, 6));
  const boot = g.bootAddressSpace;
  boot.map(WINDOW_GVA, DATA_A);
  boot.map(WINDOW_GVA + 0x2000n, DATA_B);
  boot.map(WINDOW_GVA + 0x3000n, beyondRam);
  const process = guestModel.createAddressSpace(g.memory, g.allocator);
  process.map(PROCESS_GVA, PROCESS_GPA, { user: true });
  process.map(PROCESS_GVA + 0x1000n, PROCESS_GPA + 0x1000n, { user: true });
  processCr3 = process.cr3;
  // The small VM: every byte of RAM gets known content.
  const small = guest(SMALL);
  for (const slot of small.memory.slots) small.memory.write(slot.baseGpa, pattern(slot.sizeBytes, 7 + slot.id));
});

afterAll(async () => {
  await h?.stop();
});

describe("BatchReadMemory, physical", () => {
  it("reads a range crossing two page boundaries exactly", async () => {
    const { results } = await h.client.unary("batchReadMemory", {
      vm: h.vmName(MAIN),
      ranges: [{ address: 0x10ff0n, length: 0x2020n, space: PHYSICAL }],
    });
    expect(results).toHaveLength(1);
    expect(dataOf(results[0]!).equals(physical(guest(), 0x10ff0n, 0x2020))).toBe(true);
    expect(results[0]!.holes).toEqual([]);
  });

  it("reports the low hole and memory beyond RAM as NOT_PRESENT holes, zero-filled, and reads the rest", async () => {
    const { results } = await h.client.unary("batchReadMemory", {
      vm: h.vmName(MAIN),
      ranges: [
        { address: 0x9e800n, length: 0x2000n, space: PHYSICAL },
        { address: beyondRam - 0x800n, length: 0x1000n, space: PHYSICAL },
      ],
    });
    const [low, top] = results;
    expect(holesOf(low!.holes)).toEqual([hole(0x9f000n, 0x1800n, HoleReason.NOT_PRESENT)]);
    const lowData = dataOf(low!);
    expect(lowData.subarray(0, 0x800).equals(physical(guest(), 0x9e800n, 0x800))).toBe(true);
    expect(lowData.subarray(0x800).every((b) => b === 0)).toBe(true);
    expect(holesOf(top!.holes)).toEqual([hole(beyondRam, 0x800n, HoleReason.NOT_PRESENT)]);
    expect(dataOf(top!).subarray(0, 0x800).equals(physical(guest(), beyondRam - 0x800n, 0x800))).toBe(true);
  });
});

describe("BatchReadMemory across bursts", () => {
  it("reads an unaligned range of several page bursts across the low hole byte for byte, the hole zero-filled", async () => {
    // 2 MiB + 3 bytes from an unaligned start: over 500 pieces (several bursts read ahead), the
    // low hole (97 pages) in the middle of a burst, a partial first and last page.
    const start = 0x40800n;
    const length = 0x200003;
    const { results } = await h.client.unary("batchReadMemory", { vm: h.vmName(MAIN), ranges: [{ address: start, length: BigInt(length), space: PHYSICAL }] });
    expect(holesOf(results[0]!.holes)).toEqual([hole(LOW_HOLE.start, LOW_HOLE.end - LOW_HOLE.start, HoleReason.NOT_PRESENT)]);
    const data = dataOf(results[0]!);
    expect(data.length).toBe(length);
    const beforeHole = Number(LOW_HOLE.start - start);
    const afterHole = Number(LOW_HOLE.end - start);
    expect(data.subarray(0, beforeHole).equals(physical(guest(), start, beforeHole))).toBe(true);
    expect(data.subarray(beforeHole, afterHole).every((b) => b === 0)).toBe(true);
    expect(data.subarray(afterHole).equals(physical(guest(), LOW_HOLE.end, length - afterHole))).toBe(true);
  });

  it("answers many small ranges in request order, each byte for byte", async () => {
    const ranges = Array.from({ length: 40 }, (_, i) => ({ address: 0x10000n + BigInt(i * 0x3f1), length: BigInt(1 + ((i * 977) % 0x1800)), space: PHYSICAL }));
    const { results } = await h.client.unary("batchReadMemory", { vm: h.vmName(MAIN), ranges });
    expect(results).toHaveLength(ranges.length);
    results.forEach((result, i) => {
      const range = ranges[i]!;
      expect(dataOf(result).equals(physical(guest(), range.address, Number(range.length))), `range ${i}`).toBe(true);
    });
  });
});

describe("BatchReadMemory, virtual", () => {
  const length = 0x4000n - 0x800n - 0x100n;
  /** What the window reads as: page 0 from its second half, page 1 unmapped, page 2, page 3 beyond RAM. */
  function expectWindow(result: MemoryRangeResult): void {
    expect(holesOf(result.holes)).toEqual([
      hole(WINDOW_GVA + 0x1000n, 0x1000n, HoleReason.NOT_MAPPED),
      hole(WINDOW_GVA + 0x3000n, 0xf00n, HoleReason.NOT_PRESENT),
    ]);
    const data = dataOf(result);
    expect(data.length).toBe(Number(length));
    expect(data.subarray(0, 0x800).equals(physical(guest(), DATA_A + 0x800n, 0x800))).toBe(true);
    expect(data.subarray(0x800, 0x1800).every((b) => b === 0)).toBe(true);
    expect(data.subarray(0x1800, 0x2800).equals(physical(guest(), DATA_B, 0x1000))).toBe(true);
    expect(data.subarray(0x2800).every((b) => b === 0)).toBe(true);
  }

  it("translates with the vCPU's page tables (KVMI_VCPU_TRANSLATE_GVA)", async () => {
    const before = (await h.metrics()).value("kvmi_bridge_commands_total", { command: "KVMI_VCPU_TRANSLATE_GVA" });
    const { results } = await h.client.unary("batchReadMemory", {
      vm: h.vmName(MAIN),
      ranges: [{ address: WINDOW_GVA + 0x800n, length, space: VIRTUAL, translation: { case: "vcpu", value: 1 } }],
    });
    expectWindow(results[0]!);
    const after = (await h.metrics()).value("kvmi_bridge_commands_total", { command: "KVMI_VCPU_TRANSLATE_GVA" });
    expect(after - before).toBe(4); // one translation per page
  });

  it("translates with a software walk from a CR3, with the same result and no vCPU involved", async () => {
    const before = (await h.metrics()).value("kvmi_bridge_commands_total", { command: "KVMI_VCPU_TRANSLATE_GVA" });
    const { results } = await h.client.unary("batchReadMemory", {
      vm: h.vmName(MAIN),
      ranges: [
        { address: WINDOW_GVA + 0x800n, length, space: VIRTUAL, translation: { case: "cr3", value: guest().bootAddressSpace.cr3 } },
        // Across a 2 MiB large page of the identity map.
        { address: 0x1ff800n, length: 0x1000n, space: VIRTUAL, translation: { case: "cr3", value: guest().bootAddressSpace.cr3 } },
      ],
    });
    expectWindow(results[0]!);
    expect(dataOf(results[1]!).equals(physical(guest(), 0x1ff800n, 0x1000))).toBe(true);
    const after = (await h.metrics()).value("kvmi_bridge_commands_total", { command: "KVMI_VCPU_TRANSLATE_GVA" });
    expect(after).toBe(before);
  });

  it("reads a process that runs on no vCPU through its CR3, where the vCPU sees nothing", async () => {
    const { results } = await h.client.unary("batchReadMemory", {
      vm: h.vmName(MAIN),
      ranges: [
        { address: PROCESS_GVA + 0x10n, length: 0x1ff0n, space: VIRTUAL, translation: { case: "cr3", value: processCr3 } },
        { address: PROCESS_GVA + 0x10n, length: 0x1ff0n, space: VIRTUAL, translation: { case: "vcpu", value: 0 } },
      ],
    });
    expect(dataOf(results[0]!).equals(physical(guest(), PROCESS_GPA + 0x10n, 0x1ff0))).toBe(true);
    expect(results[0]!.holes).toEqual([]);
    expect(holesOf(results[1]!.holes)).toEqual([hole(PROCESS_GVA + 0x10n, 0x1ff0n, HoleReason.NOT_MAPPED)]);
  });

  it("works the same on the Session stream", async () => {
    const observer = await h.attach(MAIN, Role.OBSERVER);
    const result = await observer.ok({
      case: "batchReadMemory",
      value: { vm: h.vmName(MAIN), ranges: [{ address: WINDOW_GVA + 0x800n, length, space: VIRTUAL, translation: { case: "vcpu", value: 0 } }] },
    });
    expect(result.case).toBe("batchReadMemory");
    expectWindow((result.value as { results: MemoryRangeResult[] }).results[0]!);
    observer.release();
    expect((await observer.closed()).code).toBe(GrpcStatus.OK);
  });
});

describe("DumpMemory", () => {
  /** Checks progress, contiguity and content of a dump; returns the holes it reported. */
  function checkDump(g: Guest, responses: DumpMemoryResponse[], start: bigint, total: bigint, chunkSize: number): MemoryHole[] {
    expect(responses.length).toBeGreaterThan(0);
    let done = 0n;
    let covered = 0n;
    const holes: MemoryHole[] = [];
    let previousEnd = start;
    for (const response of responses) {
      const progress = response.progress!;
      expect(progress.bytesTotal).toBe(total);
      expect(progress.bytesDone).toBeGreaterThanOrEqual(done);
      expect(progress.bytesDone).toBeLessThanOrEqual(total);
      done = progress.bytesDone;
      expect(response.data.length).toBeLessThanOrEqual(chunkSize);
      if (response.data.length > 0) {
        expect(response.gpa).toBeGreaterThanOrEqual(previousEnd);
        expect(Buffer.from(response.data).equals(physical(g, response.gpa, response.data.length)), `chunk at 0x${response.gpa.toString(16)}`).toBe(true);
        previousEnd = response.gpa + BigInt(response.data.length);
        covered += BigInt(response.data.length);
      }
      holes.push(...response.holes);
    }
    expect(done).toBe(total);
    expect(covered + holes.reduce((sum, x) => sum + x.length, 0n)).toBe(total);
    return holes;
  }

  it("streams a range across the low hole: chunks equal guest memory, the hole is reported, progress ends at bytes_total", async () => {
    const { responses, status } = await h.client.dumpMemory({ vm: h.vmName(MAIN), startGpa: 0x9c000n, length: 0x8000n, chunkSize: 4096 });
    expect(status.code).toBe(GrpcStatus.OK);
    const holes = checkDump(guest(), responses, 0x9c000n, 0x8000n, 4096);
    expect(holesOf(holes)).toEqual([hole(0x9f000n, 0x5000n, HoleReason.NOT_PRESENT)]);
    expect(responses.filter((r) => r.data.length > 0).map((r) => r.gpa)).toEqual([0x9c000n, 0x9d000n, 0x9e000n]);
  });

  it("streams several read-ahead bursts in odd-sized chunks across the low hole byte for byte", async () => {
    // 3 MiB from 0x40000 in 12 KiB chunks: twelve bursts of 64 pages, chunks that end mid-burst,
    // the hole in the middle of a burst.
    const start = 0x40000n;
    const total = 0x300000n;
    const { responses, status } = await h.client.dumpMemory({ vm: h.vmName(MAIN), startGpa: start, length: total, chunkSize: 12288 });
    expect(status.code).toBe(GrpcStatus.OK);
    const holes = checkDump(guest(), responses, start, total, 12288);
    expect(holesOf(holes)).toEqual([hole(LOW_HOLE.start, LOW_HOLE.end - LOW_HOLE.start, HoleReason.NOT_PRESENT)]);
    expect(responses.filter((r) => r.data.length === 12288).length).toBeGreaterThan(200);
  });

  it("dumps the whole memory of a small VM byte for byte, reporting exactly the low hole", async () => {
    const small = guest(SMALL);
    const total = small.memory.maxGfn() << 12n;
    const { responses, status } = await h.client.dumpMemory({ vm: h.vmName(SMALL), chunkSize: 65536 });
    expect(status.code).toBe(GrpcStatus.OK);
    const holes = checkDump(small, responses, 0n, total, 65536);
    expect(holesOf(holes)).toEqual([hole(LOW_HOLE.start, LOW_HOLE.end - LOW_HOLE.start, HoleReason.NOT_PRESENT)]);
    // Reassemble the sparse image and compare it with every memslot.
    const image = Buffer.alloc(Number(total));
    for (const r of responses) image.set(r.data, Number(r.gpa));
    for (const slot of small.memory.slots) {
      expect(image.subarray(Number(slot.baseGpa), Number(slot.baseGpa) + slot.sizeBytes).equals(physical(small, slot.baseGpa, slot.sizeBytes))).toBe(true);
    }
  });

  it("rejects misaligned ranges and chunk sizes with INVALID_ARGUMENT, and an unknown VM with NOT_FOUND", async () => {
    const cases = [
      [{ startGpa: 0x800n }, "start_gpa"],
      [{ length: 0x1800n }, "length"],
      [{ chunkSize: 1000 }, "chunk_size"],
      [{ chunkSize: 4 * 1024 * 1024 }, "chunk_size"],
    ] as const;
    for (const [request, field] of cases) {
      const { responses, status } = await h.client.dumpMemory({ vm: h.vmName(MAIN), ...request });
      expect(responses).toEqual([]);
      const failure = streamFailure(status);
      expect(failure.code, field).toBe(GrpcStatus.INVALID_ARGUMENT);
      expect(failure.details.fieldViolations).toEqual([expect.objectContaining({ field })]);
    }
    const unknown = await h.client.dumpMemory({ vm: "vms/00000000-0000-4000-8000-000000000000" });
    expect(streamFailure(unknown.status).details).toMatchObject({ code: GrpcStatus.NOT_FOUND, reason: "VM_NOT_FOUND" });
  });

  it("keeps BatchReadMemory for small reads: more than the batch limit is INVALID_ARGUMENT pointing at DumpMemory", async () => {
    const failure = await expectGrpcError(
      h.client.unary("batchReadMemory", { vm: h.vmName(MAIN), ranges: [{ address: 0n, length: 4n * 1024n * 1024n, space: PHYSICAL }] }),
      GrpcStatus.INVALID_ARGUMENT,
    );
    expect(failure.message).toMatch(/DumpMemory/);
  });
});
