// SPDX-License-Identifier: Apache-2.0
/**
 * The latency and throughput phases of `npm run bench` (commands, events, bulk memory), run in the
 * measuring client against the bridge, the echo and the raw KVMI tool; the CPU meter that charges
 * every process's CPU time to the operations of each measurement.
 */
import { create } from "@bufbuild/protobuf";
import { AddressSpace, BatchReadMemoryRequestSchema, DumpMemoryRequestSchema, GetVcpuInfoRequestSchema, ReadPhysicalMemoryRequestSchema } from "@kvmi/proto";
import type { WireTool } from "../support/wire-tool.js";
import { BRIDGE } from "./lib/clients.js";
import type { BridgeClient, EchoClient, EchoStream, MessageSizes, SessionClient } from "./lib/clients.js";
import { echoRequest } from "./lib/echo-protocol.js";
import type { EventLoopResult } from "./lib/emulator-host.js";
import type { ChildHandle } from "./lib/ipc.js";
import { LoopMeter, medianStats } from "./lib/loop-meter.js";
import type { LoopStats } from "./lib/loop-meter.js";
import type { PipelinedReader } from "./lib/raw-kvmi.js";
import type { Results } from "./lib/report.js";

const KiB = 1024;
export const MiB = 1024 * KiB;
export const PAGE = 4 * KiB;
/** Bulk reads and dumps move this much guest memory, from {@link MEM_BASE} (RAM, no holes). */
export const BULK_BYTES = 16 * MiB;
export const MEM_BASE = 16 * MiB;
export const BATCH_SIZES = [256 * KiB, MiB, 2 * MiB] as const;
/**
 * BatchReadMemory calls the bulk phase keeps in flight, as the SDK's readPhysical does: a unary
 * response leaves only once all of its pages are read, so one call's pages are read while the
 * other's response travels (with one call at a time, reading and sending take turns).
 */
export const BATCH_CALLS_IN_FLIGHT = 2;
export const DUMP_CHUNKS = [64 * KiB, 256 * KiB, MiB, 2 * MiB] as const;
/** Pages the raw reader keeps in flight (the bridge's DumpMemory window). */
export const RAW_WINDOW = 64;
export const PERF_VCPUS = 4;
export const CR3 = 3;

export const sizeLabel = (n: number): string => (n >= MiB ? `${n / MiB} MiB` : `${n / KiB} KiB`);

// ---------------------------------------------------------------------------------------------
// Measurement loops (this process)

/** Sequential round trips for `ms`; returns the latencies in µs. */
export async function timeLoop(ms: number, once: () => Promise<unknown>): Promise<Float64Array> {
  const out: number[] = [];
  const end = performance.now() + ms;
  while (performance.now() < end) {
    const t0 = performance.now();
    await once();
    out.push((performance.now() - t0) * 1000);
  }
  return Float64Array.from(out);
}

/** `lanes` concurrent sequential loops for `ms`: latencies in µs and the completed count per second. */
async function laneLoop(lanes: number, ms: number, once: () => Promise<unknown>): Promise<{ samples: Float64Array; perSecond: number }> {
  const out: number[] = [];
  const start = performance.now();
  const end = start + ms;
  await Promise.all(
    Array.from({ length: lanes }, async () => {
      while (performance.now() < end) {
        const t0 = performance.now();
        await once();
        out.push((performance.now() - t0) * 1000);
      }
    }),
  );
  return { samples: Float64Array.from(out), perSecond: (out.length * 1000) / (performance.now() - start) };
}

const mbPerSecond = (bytes: number, ms: number): number => bytes / 1e6 / (ms / 1000);

// ---------------------------------------------------------------------------------------------
// The run

/** CPU time per operation of every process, accumulated over the measured runs. */
export class CpuMeter {
  private readonly totals = new Map<string, { unit: string; ops: number; us: Record<string, number> }>();
  private readonly loops = new Map<string, Record<string, LoopStats[]>>();
  private readonly clientLoop = new LoopMeter();

  /**
   * @param loopChildren the children whose event loop {@link track} can watch (they serve
   *   `loopStart`/`loopStop`, test/bench/lib/ipc.ts); the client's own loop is watched with them.
   */
  constructor(
    private readonly results: Results,
    private readonly children: Readonly<Record<string, ChildHandle>>,
    private readonly loopChildren: readonly string[] = [],
  ) {}

  /**
   * Runs `body`, charging the CPU every process used to `ops(result)` operations of `id`; with
   * `loop`, also records each process's event-loop utilization and delay over the window.
   */
  async track<T>(id: string, unit: string, body: () => Promise<T>, ops: (result: T) => number, options: { loop?: boolean } = {}): Promise<T> {
    if (!this.results.recording) return body();
    const names = Object.keys(this.children);
    const loopNames = options.loop === true ? this.loopChildren : [];
    const sample = (): Promise<NodeJS.CpuUsage[]> => Promise.all(names.map((n) => this.children[n]!.call<NodeJS.CpuUsage>("cpu")));
    await Promise.all(loopNames.map((n) => this.children[n]!.call("loopStart")));
    if (options.loop === true) this.clientLoop.start();
    const before = await sample();
    const client0 = process.cpuUsage();
    const result = await body();
    const client = process.cpuUsage(client0);
    const after = await sample();
    if (options.loop === true) {
      const windows = this.loops.get(id) ?? {};
      this.loops.set(id, windows);
      (windows["client"] ??= []).push(this.clientLoop.stop());
      const stats = await Promise.all(loopNames.map((n) => this.children[n]!.call<LoopStats>("loopStop")));
      loopNames.forEach((n, i) => (windows[n] ??= []).push(stats[i]!));
    }
    let entry = this.totals.get(id);
    if (entry === undefined) this.totals.set(id, (entry = { unit, ops: 0, us: {} }));
    entry.ops += ops(result);
    names.forEach((n, i) => {
      entry.us[n] = (entry.us[n] ?? 0) + after[i]!.user + after[i]!.system - before[i]!.user - before[i]!.system;
    });
    entry.us["client"] = (entry.us["client"] ?? 0) + client.user + client.system;
    return result;
  }

  /** µs of CPU per operation, per process. */
  perOp(): Record<string, { unit: string; ops: number; usPerOp: Record<string, number> }> {
    const out: Record<string, { unit: string; ops: number; usPerOp: Record<string, number> }> = {};
    for (const [id, t] of this.totals) {
      out[id] = { unit: t.unit, ops: t.ops, usPerOp: Object.fromEntries(Object.entries(t.us).map(([n, us]) => [n, us / Math.max(1, t.ops)])) };
    }
    return out;
  }

  /** Event-loop figures of the measurements tracked with `loop`, per process (median of the runs). */
  loopStats(): Record<string, Record<string, LoopStats>> {
    const out: Record<string, Record<string, LoopStats>> = {};
    for (const [id, windows] of this.loops) out[id] = Object.fromEntries(Object.entries(windows).map(([n, w]) => [n, medianStats(w)]));
    return out;
  }
}

export interface Context {
  /** Measurement windows (ms): one latency loop, one sustained-rate loop. */
  readonly settings: { readonly windowMs: number; readonly sustainedMs: number };
  readonly results: Results;
  readonly cpu: CpuMeter;
  readonly warnings: string[];
  readonly bridge: BridgeClient;
  readonly echo: EchoClient;
  readonly echoStream: EchoStream;
  readonly emulator: ChildHandle;
  readonly controller: SessionClient;
  readonly vm: string;
  /** The raw tool (codec + wire-tool) on its own VM, and the lean page reader on another. */
  readonly raw: { readonly tool: WireTool };
  /** The raw tool on a VM whose connection goes through the KVMI forwarder (KubeVirt node mode). */
  readonly rawForwarded: { readonly tool: WireTool };
  readonly rawReader: PipelinedReader;
  readonly sizes: Record<string, MessageSizes>;
}

export async function eventLoop(emulator: ChildHandle, key: string, vcpus: number, durationMs: number): Promise<EventLoopResult> {
  return emulator.call<EventLoopResult>("eventLoop", { key, vcpus, durationMs, maxSamples: Math.ceil(durationMs * 200) });
}

/** A sequential latency loop, recorded with its CPU cost. */
async function latency(c: Context, id: string, label: string, once: () => Promise<unknown>): Promise<void> {
  c.results.latency(id, label, await c.cpu.track(id, "op", () => timeLoop(c.settings.windowMs, once), (s) => s.length));
}

export async function commandsPhase(c: Context): Promise<void> {
  const { bridge, echo, controller, raw, sizes } = c;
  const vcpuInfo = create(GetVcpuInfoRequestSchema, { name: `${c.vm}/vcpus/0` });
  const read4k = create(ReadPhysicalMemoryRequestSchema, { vm: c.vm, gpa: BigInt(MEM_BASE), size: PAGE });
  const echoOf = (key: string): Buffer => echoRequest(sizes[key]!.request, sizes[key]!.response);

  await latency(c, "bridge.unary.getVcpuInfo", "bridge unary GetVcpuInfo", () => bridge.unary(BRIDGE.getVcpuInfo, vcpuInfo));
  const echoVcpuInfo = echoOf("unary.getVcpuInfo");
  await latency(c, "echo.unary.getVcpuInfo", "bare unary echo (GetVcpuInfo sizes)", () => echo.unary(echoVcpuInfo));

  await latency(c, "bridge.unary.read4k", "bridge unary ReadPhysicalMemory 4 KiB", () => bridge.unary(BRIDGE.readPhysicalMemory, read4k));
  const echoRead = echoOf("unary.read4k");
  await latency(c, "echo.unary.read4k", "bare unary echo (ReadPhysicalMemory 4 KiB sizes)", () => echo.unary(echoRead));

  await latency(c, "bridge.session.getVcpuInfo", "bridge session GetVcpuInfo", () => controller.command({ case: "getVcpuInfo", value: vcpuInfo }));
  const echoSVcpuInfo = echoOf("session.getVcpuInfo");
  await latency(c, "echo.bidi.getVcpuInfo", "bare bidi echo (session GetVcpuInfo sizes)", () => c.echoStream.roundTrip(echoSVcpuInfo));

  await latency(c, "bridge.session.read4k", "bridge session ReadPhysicalMemory 4 KiB", () => controller.command({ case: "readPhysicalMemory", value: read4k }));
  const echoSRead = echoOf("session.read4k");
  await latency(c, "echo.bidi.read4k", "bare bidi echo (session ReadPhysicalMemory 4 KiB sizes)", () => c.echoStream.roundTrip(echoSRead));

  await latency(c, "raw.command.getVcpuInfo", "raw KVMI GET_VCPU_INFO (codec ↔ emulator, UNIX socket)", () => raw.tool.command("KVMI_VCPU_GET_INFO", {}, 0));
  await latency(c, "raw.command.read4k", "raw KVMI READ_PHYSICAL 4 KiB", () => raw.tool.command("KVMI_VM_READ_PHYSICAL", { gpa: BigInt(MEM_BASE), size: PAGE }));
}

/**
 * The in-pod KVMI forwarder's cost: the same raw KVMI command and the same guest-timed event round
 * trip on a VM connected straight to the tool and on one whose connection the forwarder carries
 * (another process, one more UNIX socket each way), back to back in every run.
 */
export async function forwarderPhase(c: Context): Promise<void> {
  const { results: R, cpu, emulator } = c;
  const ms = c.settings.windowMs;
  for (const [key, tool] of [["straight", c.raw.tool], ["forwarded", c.rawForwarded.tool]] as const) {
    await latency(c, `fwd.${key}.command`, `raw KVMI GET_VCPU_INFO, ${key}`, () => tool.command("KVMI_VCPU_GET_INFO", {}, 0));
  }
  for (const [key, vm] of [["straight", "raw"], ["forwarded", "raw-fwd"]] as const) {
    const r = await cpu.track(`fwd.${key}.event`, "event", () => eventLoop(emulator, vm, 1, ms), (x) => x.completed);
    if (r.failures > 0) c.warnings.push(`${key} event loop: ${r.failures} MOV CR3 did not complete with the written value`);
    R.latency(`fwd.${key}.event`, `raw KVMI event round trip, 1 vCPU, ${key} (guest-timed)`, r.samples);
  }
}

export async function eventsPhase(c: Context): Promise<void> {
  const { results: R, cpu, emulator, controller, sizes, warnings } = c;
  const ms = c.settings.windowMs;
  const echoEvent = echoRequest(sizes["event"]!.request, sizes["event"]!.response);

  const guestEvents = (id: string, key: "bridge" | "raw", vcpus: number, durationMs: number): Promise<EventLoopResult> =>
    cpu.track(
      id,
      "event",
      async () => {
        const before = controller.replies;
        const r = await eventLoop(emulator, key, vcpus, durationMs);
        if (r.failures > 0) warnings.push(`${key} event loop (${vcpus} vCPUs): ${r.failures} MOV CR3 did not complete with the written value`);
        const answered = controller.replies - before;
        if (key === "bridge" && Math.abs(answered - r.completed) > vcpus) {
          warnings.push(`bridge event loop (${vcpus} vCPUs): the guest completed ${r.completed} writes but the controller answered ${answered} events`);
        }
        return r;
      },
      (r) => r.completed,
      { loop: true },
    );
  const echoLanes = (id: string, lanes: number, durationMs: number) =>
    cpu.track(id, "message", () => laneLoop(lanes, durationMs, () => c.echoStream.roundTrip(echoEvent)), (r) => r.samples.length, { loop: true });

  R.latency("bridge.event.1", "bridge event round trip, 1 vCPU (guest-timed)", (await guestEvents("bridge.event.1", "bridge", 1, ms)).samples);
  R.latency("echo.bidi.event.1", "bare bidi echo (event sizes), 1 in flight", (await echoLanes("echo.bidi.event.1", 1, ms)).samples);
  R.latency("raw.event.1", "raw KVMI event round trip, 1 vCPU (guest-timed)", (await guestEvents("raw.event.1", "raw", 1, ms)).samples);

  const n = PERF_VCPUS;
  R.latency("bridge.event.4", `bridge event round trip, ${n} vCPUs at once (guest-timed)`, (await guestEvents("bridge.event.4", "bridge", n, ms)).samples);
  R.latency("echo.bidi.event.4", `bare bidi echo (event sizes), ${n} in flight`, (await echoLanes("echo.bidi.event.4", n, ms)).samples);
  R.latency("raw.event.4", `raw KVMI event round trip, ${n} vCPUs at once`, (await guestEvents("raw.event.4", "raw", n, ms)).samples);

  const sms = c.settings.sustainedMs;
  const b = await guestEvents("bridge.event.rate", "bridge", n, sms);
  R.rate("bridge.event.rate", `bridge events/s with replies, ${n} vCPUs`, "events/s", (b.completed * 1000) / b.elapsedMs);
  R.rate("echo.bidi.rate", `bare bidi echo msgs/s (event sizes), ${n} in flight`, "msgs/s", (await echoLanes("echo.bidi.rate", n, sms)).perSecond);
  const r = await guestEvents("raw.event.rate", "raw", n, sms);
  R.rate("raw.event.rate", `raw KVMI events/s with replies, ${n} vCPUs`, "events/s", (r.completed * 1000) / r.elapsedMs);
}

/**
 * Repeats `move` (which moves {@link BULK_BYTES}) for at least one measurement window and records
 * MB/s and CPU per MiB. One 16 MiB transfer takes 30–100 ms here, short enough for a single
 * scheduling hiccup to halve it: the bare stream of the same size ranged 160–560 MB/s across the
 * runs of one invocation when each run timed one transfer.
 */
async function bulk(c: Context, id: string, label: string, move: () => Promise<void>): Promise<void> {
  const moved = await c.cpu.track(
    id,
    "MiB",
    async () => {
      const t0 = performance.now();
      let bytes = 0;
      do {
        await move();
        bytes += BULK_BYTES;
      } while (performance.now() - t0 < c.settings.windowMs);
      return { bytes, ms: performance.now() - t0 };
    },
    (r) => r.bytes / MiB,
  );
  c.results.rate(id, label, "MB/s", mbPerSecond(moved.bytes, moved.ms));
}

export async function bulkPhase(c: Context): Promise<void> {
  const { bridge, echo, warnings } = c;

  for (const size of BATCH_SIZES) {
    await bulk(c, `bridge.batch.${size}`, `bridge BatchReadMemory 16 MiB in ${sizeLabel(size)} calls, ${BATCH_CALLS_IN_FLIGHT} in flight`, async () => {
      let next = 0;
      const lane = async (): Promise<void> => {
        for (let off = next; off < BULK_BYTES; off = next) {
          next += size;
          const response = await bridge.unary(
            BRIDGE.batchReadMemory,
            create(BatchReadMemoryRequestSchema, { vm: c.vm, ranges: [{ address: BigInt(MEM_BASE + off), length: BigInt(size), space: AddressSpace.PHYSICAL }] }),
          );
          const result = response.results[0];
          if (result?.result.case !== "data" || result.result.value.length !== size || result.holes.length > 0) {
            warnings.push(`BatchReadMemory ${sizeLabel(size)} at +${off}: unexpected result`);
          }
        }
      };
      await Promise.all(Array.from({ length: BATCH_CALLS_IN_FLIGHT }, lane));
    });
  }

  for (const chunk of DUMP_CHUNKS) {
    await bulk(c, `bridge.dump.${chunk}`, `bridge DumpMemory 16 MiB, chunk ${sizeLabel(chunk)}`, async () => {
      const bytes = await bridge.dump(create(DumpMemoryRequestSchema, { vm: c.vm, startGpa: BigInt(MEM_BASE), length: BigInt(BULK_BYTES), chunkSize: chunk }));
      if (bytes !== BULK_BYTES) warnings.push(`DumpMemory chunk ${sizeLabel(chunk)}: ${bytes} bytes instead of ${BULK_BYTES}`);
    });
  }

  // BatchReadMemory is a unary call: grpc-js receives a multi-MiB unary response at roughly half
  // the rate of the same bytes on a server stream (the client's GC and buffering, measured in
  // docs/performance.md), so the bare unary echo of the same sizes, as many in flight, shows how
  // much of BatchReadMemory's gap is that transport and how much is the bridge.
  for (const size of BATCH_SIZES) {
    await bulk(c, `echo.unaryBulk.${size}`, `bare unary echo 16 MiB in ${sizeLabel(size)} responses, ${BATCH_CALLS_IN_FLIGHT} in flight`, async () => {
      let next = 0;
      const lane = async (): Promise<void> => {
        for (let off = next; off < BULK_BYTES; off = next) {
          next += size;
          const response = await echo.unary(echoRequest(8, size));
          if (response.length !== size) warnings.push(`echo unary ${sizeLabel(size)}: ${response.length} bytes`);
        }
      };
      await Promise.all(Array.from({ length: BATCH_CALLS_IN_FLIGHT }, lane));
    });
  }

  for (const size of new Set<number>([...BATCH_SIZES, ...DUMP_CHUNKS])) {
    await bulk(c, `echo.stream.${size}`, `bare server stream 16 MiB in ${sizeLabel(size)} messages`, async () => {
      const bytes = await echo.stream(echoRequest(8, size, BULK_BYTES));
      if (bytes !== BULK_BYTES) warnings.push(`echo stream ${sizeLabel(size)}: ${bytes} bytes`);
    });
  }

  await bulk(c, "raw.read.pipelined", `raw KVMI READ_PHYSICAL 4 KiB pages, ${RAW_WINDOW} in flight, 16 MiB`, async () => {
    const errors = await c.rawReader.read(MEM_BASE, BULK_BYTES / PAGE, RAW_WINDOW, PAGE);
    if (errors > 0) warnings.push(`raw READ_PHYSICAL: ${errors} error replies`);
  });
}
