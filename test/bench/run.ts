// SPDX-License-Identifier: Apache-2.0
/**
 * `npm run bench`: the bridge measured against the transport's own limits, in one run
 * (test/bench/README.md has the method, the targets and how to read the output).
 *
 * Processes (each a `child_process.fork` with tsx; this process is the measuring client):
 *   - echo child: a bare grpc-js server (unary echo, bidi echo, server stream) on 127.0.0.1;
 *   - bridge child: `startBridge` (gRPC on 127.0.0.1, KVMI on a UNIX socket), hosting the emulated
 *     VMs too unless `--emulator process` puts them in an emulator child: the QEMU + KVMI v9 side.
 *     One VM is hooked to the bridge; two more are hooked straight to this process, driven by the
 *     codec alone (test/support/wire-tool.ts for commands and events, a lean pipelined reader for
 *     page-read throughput): the raw baseline.
 * Every figure is measured in several runs after a warm-up, bridge and baselines back to back in
 * each run, and compared as a ratio. The memory test starts a fresh bridge and emulator with 50 VMs.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import type { Server } from "node:net";
import { cpus, loadavg, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { create } from "@bufbuild/protobuf";
import { v9Ids } from "@kvmi/kvm-bridge/wire";
import {
  AddressSpace,
  BatchReadMemoryRequestSchema,
  DumpMemoryRequestSchema,
  EventType,
  GetVcpuInfoRequestSchema,
  ReadPhysicalMemoryRequestSchema,
  Role,
} from "@kvmi/proto";
import type { DumpMemoryResponse } from "@kvmi/proto";
import { WireTool } from "../support/wire-tool.js";
import type { BridgeStarted } from "./bridge-child.js";
import type { EventLoopResult, VmSpec } from "./lib/emulator-host.js";
import { BRIDGE, BridgeClient, EchoClient, SessionClient } from "./lib/clients.js";
import type { EchoStream, MessageSizes } from "./lib/clients.js";
import { echoRequest } from "./lib/echo-protocol.js";
import { ChildHandle } from "./lib/ipc.js";
import { formatProfile, summarizeProfile } from "./lib/profile.js";
import type { ProfileSummary } from "./lib/profile.js";
import { answerEvents, listenRaw, PipelinedReader } from "./lib/raw-kvmi.js";
import type { RawConnection } from "./lib/raw-kvmi.js";
import { formatFigure, renderTable, Results } from "./lib/report.js";
import type { Figure } from "./lib/report.js";
import { median, slope } from "./lib/stats.js";

// ---------------------------------------------------------------------------------------------
// Options

const HELP = `npm run bench [-- options]

  --quick              short run (0.2 s windows, 24 s memory test, ≈1.5 min) for development
  --runs N             measured runs after the warm-up (default 5)
  --json FILE          where to write the results (default bench-results.json)
  --profile            after the measured runs, one more run with the V8 profiler in the bridge
                       and emulator children, phase by phase; prints self time by area and
                       function (the memory test is then profiled too, which slows it down)
  --no-memory          skip the 50-VM memory test
  --memory-seconds S   length of the memory test (default 30, quick 24; the first 12 s are warm-up)
  --only perf|memory   run only the latency/throughput part or only the memory test
  --emulator WHERE     where the emulated VMs of the latency/throughput part run: "in-bridge"
                       (default; the bridge's process, as embedded mode and npm start run them, so
                       the KVMI peer costs no process wake-up, as the kernel's would not) or
                       "process" (a process of their own). The memory test always uses a process.
  --phases LIST        the latency/throughput phases to run, comma-separated (default
                       commands,events,bulk); for development, e.g. with perf attached
  --bridge-log LEVEL   the bridge's log level (trace..error; logs go to /dev/null), or "off" for
                       no logger at all (default info, the production default)
`;

const { values: flags } = parseArgs({
  args: process.argv.slice(2),
  options: {
    quick: { type: "boolean", default: false },
    runs: { type: "string" },
    json: { type: "string", default: "bench-results.json" },
    profile: { type: "boolean", default: false },
    "no-memory": { type: "boolean", default: false },
    "memory-seconds": { type: "string" },
    "bridge-log": { type: "string", default: "info" },
    only: { type: "string" },
    emulator: { type: "string", default: "in-bridge" },
    phases: { type: "string", default: "commands,events,bulk" },
    help: { type: "boolean", short: "h", default: false },
  },
});
if (flags.only !== undefined && flags.only !== "perf" && flags.only !== "memory") {
  process.stderr.write(`--only takes perf or memory\n${HELP}`);
  process.exit(2);
}
if (flags.emulator !== "in-bridge" && flags.emulator !== "process") {
  process.stderr.write(`--emulator takes in-bridge or process\n${HELP}`);
  process.exit(2);
}
const PHASES = new Set(flags.phases.split(","));
for (const phase of PHASES) {
  if (phase !== "commands" && phase !== "events" && phase !== "bulk") {
    process.stderr.write(`--phases takes commands, events and/or bulk, got ${phase}\n${HELP}`);
    process.exit(2);
  }
}
if (flags.help) {
  process.stdout.write(HELP);
  process.exit(0);
}

const positive = (name: string, text: string | undefined, fallback: number): number => {
  const n = Number(text ?? fallback);
  if (!Number.isFinite(n) || n <= 0) {
    process.stderr.write(`--${name} takes a positive number, got ${text}\n`);
    process.exit(2);
  }
  return n;
};
const QUICK = flags.quick;
const SETTINGS = {
  // Quick keeps 5 short runs rather than 3 longer ones: the median then survives two bad runs.
  runs: Math.round(positive("runs", flags.runs, 5)),
  /** Length of one latency measurement window. */
  windowMs: QUICK ? 200 : 1000,
  /** Length of one sustained-rate window. */
  sustainedMs: QUICK ? 400 : 2000,
  memoryMs: 1000 * positive("memory-seconds", flags["memory-seconds"], QUICK ? 24 : 30),
  /**
   * RSS samples before this are the memory test's warm-up, excluded from the slope: a paused
   * controller's buffers (HTTP/2 window, grpc-js, the bridge's 256 responses) take ≈ 8 s to fill
   * at the guests' event rate, and the first slow read comes at 10 s.
   */
  memoryWarmupS: 12,
  sampleMs: 1000,
  bridgeLog: flags["bridge-log"],
  emulator: flags.emulator,
} as const;

const KiB = 1024;
const MiB = 1024 * KiB;
const PAGE = 4 * KiB;
/** Bulk reads and dumps move this much guest memory, from {@link MEM_BASE} (RAM, no holes). */
const BULK_BYTES = 16 * MiB;
const MEM_BASE = 16 * MiB;
const BATCH_SIZES = [256 * KiB, MiB, 2 * MiB] as const;
const DUMP_CHUNKS = [64 * KiB, 256 * KiB, MiB, 2 * MiB] as const;
/** Pages the raw reader keeps in flight (the bridge's DumpMemory window). */
const RAW_WINDOW = 64;
const PERF_VCPUS = 4;
const MEMORY_VMS = 50;
const MEMORY_VM_MIB = 16;
/** "Bounded": the least-squares RSS slope after the warm-up stays under this. */
const MEMORY_SLOPE_LIMIT_MB_PER_MIN = 10;
const CR3 = 3;

const sizeLabel = (n: number): string => (n >= MiB ? `${n / MiB} MiB` : `${n / KiB} KiB`);
const progress = (text: string): void => void process.stderr.write(`[bench] ${text}\n`);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------
// Measurement loops (this process)

/** Sequential round trips for `ms`; returns the latencies in µs. */
async function timeLoop(ms: number, once: () => Promise<unknown>): Promise<Float64Array> {
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
class CpuMeter {
  private readonly totals = new Map<string, { unit: string; ops: number; us: Record<string, number> }>();

  constructor(
    private readonly results: Results,
    private readonly children: Readonly<Record<string, ChildHandle>>,
  ) {}

  /** Runs `body`, charging the CPU every process used to `ops(result)` operations of `id`. */
  async track<T>(id: string, unit: string, body: () => Promise<T>, ops: (result: T) => number): Promise<T> {
    if (!this.results.recording) return body();
    const names = Object.keys(this.children);
    const sample = (): Promise<NodeJS.CpuUsage[]> => Promise.all(names.map((n) => this.children[n]!.call<NodeJS.CpuUsage>("cpu")));
    const before = await sample();
    const client0 = process.cpuUsage();
    const result = await body();
    const client = process.cpuUsage(client0);
    const after = await sample();
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
}

interface Context {
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
  readonly rawReader: PipelinedReader;
  readonly sizes: Record<string, MessageSizes>;
}

async function eventLoop(emulator: ChildHandle, key: string, vcpus: number, durationMs: number): Promise<EventLoopResult> {
  return emulator.call<EventLoopResult>("eventLoop", { key, vcpus, durationMs, maxSamples: Math.ceil(durationMs * 200) });
}

/** A sequential latency loop, recorded with its CPU cost. */
async function latency(c: Context, id: string, label: string, once: () => Promise<unknown>): Promise<void> {
  c.results.latency(id, label, await c.cpu.track(id, "op", () => timeLoop(SETTINGS.windowMs, once), (s) => s.length));
}

async function commandsPhase(c: Context): Promise<void> {
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

async function eventsPhase(c: Context): Promise<void> {
  const { results: R, cpu, emulator, controller, sizes, warnings } = c;
  const ms = SETTINGS.windowMs;
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
    );
  const echoLanes = (id: string, lanes: number, durationMs: number) =>
    cpu.track(id, "message", () => laneLoop(lanes, durationMs, () => c.echoStream.roundTrip(echoEvent)), (r) => r.samples.length);

  R.latency("bridge.event.1", "bridge event round trip, 1 vCPU (guest-timed)", (await guestEvents("bridge.event.1", "bridge", 1, ms)).samples);
  R.latency("echo.bidi.event.1", "bare bidi echo (event sizes), 1 in flight", (await echoLanes("echo.bidi.event.1", 1, ms)).samples);
  R.latency("raw.event.1", "raw KVMI event round trip, 1 vCPU (guest-timed)", (await guestEvents("raw.event.1", "raw", 1, ms)).samples);

  const n = PERF_VCPUS;
  R.latency("bridge.event.4", `bridge event round trip, ${n} vCPUs at once (guest-timed)`, (await guestEvents("bridge.event.4", "bridge", n, ms)).samples);
  R.latency("echo.bidi.event.4", `bare bidi echo (event sizes), ${n} in flight`, (await echoLanes("echo.bidi.event.4", n, ms)).samples);
  R.latency("raw.event.4", `raw KVMI event round trip, ${n} vCPUs at once`, (await guestEvents("raw.event.4", "raw", n, ms)).samples);

  const sms = SETTINGS.sustainedMs;
  const b = await guestEvents("bridge.event.rate", "bridge", n, sms);
  R.rate("bridge.event.rate", `bridge events/s with replies, ${n} vCPUs`, "events/s", (b.completed * 1000) / b.elapsedMs);
  R.rate("echo.bidi.rate", `bare bidi echo msgs/s (event sizes), ${n} in flight`, "msgs/s", (await echoLanes("echo.bidi.rate", n, sms)).perSecond);
  const r = await guestEvents("raw.event.rate", "raw", n, sms);
  R.rate("raw.event.rate", `raw KVMI events/s with replies, ${n} vCPUs`, "events/s", (r.completed * 1000) / r.elapsedMs);
}

/** Times `move` (which moves {@link BULK_BYTES}) and records MB/s and CPU per MiB. */
async function bulk(c: Context, id: string, label: string, move: () => Promise<void>): Promise<void> {
  const ms = await c.cpu.track(
    id,
    "MiB",
    async () => {
      const t0 = performance.now();
      await move();
      return performance.now() - t0;
    },
    () => BULK_BYTES / MiB,
  );
  c.results.rate(id, label, "MB/s", mbPerSecond(BULK_BYTES, ms));
}

async function bulkPhase(c: Context): Promise<void> {
  const { bridge, echo, warnings } = c;

  for (const size of BATCH_SIZES) {
    await bulk(c, `bridge.batch.${size}`, `bridge BatchReadMemory 16 MiB in ${sizeLabel(size)} calls`, async () => {
      for (let off = 0; off < BULK_BYTES; off += size) {
        const response = await bridge.unary(
          BRIDGE.batchReadMemory,
          create(BatchReadMemoryRequestSchema, { vm: c.vm, ranges: [{ address: BigInt(MEM_BASE + off), length: BigInt(size), space: AddressSpace.PHYSICAL }] }),
        );
        const result = response.results[0];
        if (result?.result.case !== "data" || result.result.value.length !== size || result.holes.length > 0) {
          warnings.push(`BatchReadMemory ${sizeLabel(size)} at +${off}: unexpected result`);
        }
      }
    });
  }

  for (const chunk of DUMP_CHUNKS) {
    await bulk(c, `bridge.dump.${chunk}`, `bridge DumpMemory 16 MiB, chunk ${sizeLabel(chunk)}`, async () => {
      const bytes = await new Promise<number>((resolve, reject) => {
        let n = 0;
        const call = bridge.client.makeServerStreamRequest(
          BRIDGE.dumpMemory.path,
          BRIDGE.dumpMemory.requestSerialize,
          BRIDGE.dumpMemory.responseDeserialize,
          create(DumpMemoryRequestSchema, { vm: c.vm, startGpa: BigInt(MEM_BASE), length: BigInt(BULK_BYTES), chunkSize: chunk }),
        );
        call.on("data", (m: DumpMemoryResponse) => (n += m.data.length));
        call.on("error", reject);
        call.on("end", () => resolve(n));
      });
      if (bytes !== BULK_BYTES) warnings.push(`DumpMemory chunk ${sizeLabel(chunk)}: ${bytes} bytes instead of ${BULK_BYTES}`);
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

// ---------------------------------------------------------------------------------------------
// Memory: 50 VMs, a slow controller

interface MemorySample {
  /** Seconds since the slow controller started. */
  readonly t: number;
  readonly rssMB: number;
  readonly heapUsedMB: number;
  /** Heap after a forced full GC (every {@link GC_EVERY}th sample; what is really retained). */
  readonly heapAfterGcMB: number | undefined;
  readonly externalMB: number;
  readonly arrayBuffersMB: number;
  /** CR3 writes the guests made (each raises an event) and events the controller read, cumulative. */
  readonly guestEvents: number;
  readonly clientEvents: number;
}

interface MemoryReport {
  readonly vms: number;
  readonly eventDeadlineMs: number;
  readonly slowReadForMs: number;
  readonly slowReadEveryMs: number;
  readonly durationS: number;
  readonly warmupS: number;
  readonly idleRssMB: number;
  readonly startRssMB: number;
  readonly peakRssMB: number;
  readonly endRssMB: number;
  readonly slopeMBPerMin: number;
  readonly heapAfterGcSlopeMBPerMin: number;
  readonly limitMBPerMin: number;
  readonly bounded: boolean;
  readonly guestEventsPerSecond: number;
  readonly clientEventsPerSecond: number;
  readonly autoReplies: Record<string, number>;
  readonly samples: readonly MemorySample[];
}

/** Every this many samples, the bridge runs a full GC before reporting its heap. */
const GC_EVERY = 5;
/**
 * The slow controller's reply deadline (the minimum a session may ask for): events it does not
 * read in time are answered by the bridge, so the guests keep running and events keep pouring in.
 */
const MEMORY_EVENT_DEADLINE_MS = 10;
/**
 * The slow controller reads for this long every {@link SLOW_READ_EVERY_MS}: between reads, one
 * VM's events (≈50/s) overflow what grpc-js and HTTP/2 hold in flight (16 messages + a 64 KiB
 * window ≈ 120 events) and the bridge's own per-session buffer (256 responses).
 */
const SLOW_READ_FOR_MS = 20;
const SLOW_READ_EVERY_MS = 10_000;

function rssOf(pid: number): number | undefined {
  try {
    const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return match ? Number(match[1]) / 1024 : undefined;
  } catch {
    return undefined;
  }
}

/**
 * After the controllers left: waits until the bridge has undone their hooks (so stopping the
 * emulator cannot cut the undo short), then records the bridge's warnings and unhandled rejections.
 */
async function drainBridge(child: ChildHandle, what: string, warnings: string[]): Promise<void> {
  await waitFor(() => child.call<boolean>("settled"), 5000, `${what}: hook ledgers empty`).catch((err: Error) => warnings.push(err.message));
  for (const p of await child.call<Array<{ text: string; count: number }>>("problems")) warnings.push(`${what}: ${p.text} (×${p.count})`);
}

async function memoryPhase(dir: string, profileDir: string | undefined, warnings: string[]): Promise<MemoryReport> {
  const bridgeChild = await ChildHandle.start("bridge(memory)", new URL("./bridge-child.ts", import.meta.url), {
    nodeFlags: ["--expose-gc"],
    quiet: true,
  });
  const emulatorChild = await ChildHandle.start("emulator(memory)", new URL("./emulator-child.ts", import.meta.url));
  const client = { current: undefined as BridgeClient | undefined };
  try {
    const kvmiSocket = join(dir, "kvmi-memory.sock");
    const started = await bridgeChild.call<BridgeStarted>("start", { kvmiSocket, logLevel: SETTINGS.bridgeLog, metrics: true });
    const specs: VmSpec[] = Array.from({ length: MEMORY_VMS }, (_, i) => ({
      key: `mem-${i}`,
      endpoint: { kind: "unix", path: kvmiSocket },
      vcpus: 1,
      memoryMiB: MEMORY_VM_MIB,
      workload: true,
    }));
    const vms = await emulatorChild.call<Array<{ key: string; uuid: string }>>("addVms", { specs });
    await waitFor(async () => (await bridgeChild.call<number>("hooked")) >= MEMORY_VMS, 30_000, "50 VMs hooked to the bridge");
    const memory = async (gc: boolean) => {
      const rss = rssOf(bridgeChild.pid);
      const m = await bridgeChild.call<NodeJS.MemoryUsage>("memory", { gc });
      return { rss: rss ?? m.rss / MiB, heapUsed: m.heapUsed / MiB, external: m.external / MiB, arrayBuffers: m.arrayBuffers / MiB };
    };
    await sleep(1000);
    const idleRssMB = (await memory(false)).rss;

    const bridge = new BridgeClient(started.grpcTarget);
    client.current = bridge;
    const sessions = vms.map((vm) => new SessionClient(bridge, `vms/${vm.uuid}`, Role.CONTROLLER, MEMORY_EVENT_DEADLINE_MS));
    await Promise.all(sessions.map((s) => s.attached));
    await Promise.all(
      sessions.map(async (s) => {
        await s.commandOk({ case: "controlVcpuEvents", value: { name: `${s.vm}/vcpus/0`, event: EventType.CR, enable: true } });
        await s.commandOk({ case: "controlCr", value: { name: `${s.vm}/vcpus/0`, cr: CR3, enable: true } });
      }),
    );
    progress(`memory: ${MEMORY_VMS} VMs hooked, CR3 events on; the controller reads for ${SLOW_READ_FOR_MS} ms every ${SLOW_READ_EVERY_MS / 1000} s`);

    // The slow controller: its streams stay paused, except for a short read now and then.
    for (const s of sessions) s.stream.pause();
    const slow = setInterval(() => {
      for (const s of sessions) s.stream.resume();
      setTimeout(() => {
        for (const s of sessions) s.stream.pause();
      }, SLOW_READ_FOR_MS);
    }, SLOW_READ_EVERY_MS);

    const samples: MemorySample[] = [];
    const t0 = performance.now();
    const clientEvents = (): number => sessions.reduce((n, s) => n + s.events, 0);
    const guest0 = (await emulatorChild.call<{ cr3Switches: number }>("stats")).cr3Switches;
    const client0 = clientEvents();
    await profiled(profileDir, "memory-test", { bridge: bridgeChild }, async () => {
      for (let i = 0; performance.now() - t0 < SETTINGS.memoryMs; i++) {
        const gc = i % GC_EVERY === GC_EVERY - 1;
        const m = await memory(gc);
        const g = await emulatorChild.call<{ cr3Switches: number }>("stats");
        samples.push({
          t: (performance.now() - t0) / 1000,
          rssMB: m.rss,
          heapUsedMB: gc ? Number.NaN : m.heapUsed,
          heapAfterGcMB: gc ? m.heapUsed : undefined,
          externalMB: m.external,
          arrayBuffersMB: m.arrayBuffers,
          guestEvents: g.cr3Switches - guest0,
          clientEvents: clientEvents() - client0,
        });
        await sleep(SETTINGS.sampleMs);
      }
    });
    clearInterval(slow);
    const metricsText = await bridgeChild.call<string>("metrics");
    for (const s of sessions) s.stream.resume();
    for (const s of sessions) s.end();
    await drainBridge(bridgeChild, "bridge (memory test)", warnings);

    const autoReplies: Record<string, number> = {};
    for (const line of metricsText.split("\n")) {
      const m = /^kvmi_bridge_event_auto_replies_total\{([^}]*)\} (\S+)$/.exec(line);
      const reason = m && /reason="([^"]+)"/.exec(m[1]!)?.[1];
      if (m && reason) autoReplies[reason] = (autoReplies[reason] ?? 0) + Number(m[2]);
    }
    const warmupS = Math.min(SETTINGS.memoryWarmupS, SETTINGS.memoryMs / 2000);
    const steady = samples.filter((s) => s.t >= warmupS);
    const gcd = steady.filter((s) => s.heapAfterGcMB !== undefined);
    const last = samples.at(-1)!;
    const rssSlope = slope(steady.map((s) => s.t), steady.map((s) => s.rssMB)) * 60;
    return {
      vms: MEMORY_VMS,
      eventDeadlineMs: MEMORY_EVENT_DEADLINE_MS,
      slowReadForMs: SLOW_READ_FOR_MS,
      slowReadEveryMs: SLOW_READ_EVERY_MS,
      durationS: last.t,
      warmupS,
      idleRssMB,
      startRssMB: samples[0]!.rssMB,
      peakRssMB: Math.max(...samples.map((s) => s.rssMB)),
      endRssMB: last.rssMB,
      slopeMBPerMin: rssSlope,
      heapAfterGcSlopeMBPerMin: slope(gcd.map((s) => s.t), gcd.map((s) => s.heapAfterGcMB!)) * 60,
      limitMBPerMin: MEMORY_SLOPE_LIMIT_MB_PER_MIN,
      bounded: rssSlope <= MEMORY_SLOPE_LIMIT_MB_PER_MIN,
      guestEventsPerSecond: last.guestEvents / last.t,
      clientEventsPerSecond: last.clientEvents / last.t,
      autoReplies,
      samples,
    };
  } finally {
    client.current?.close();
    await emulatorChild.stop();
    await bridgeChild.stop();
  }
}

/**
 * With --profile, samples `children` (name → process) with the in-process V8 profiler while
 * `body` runs and writes `<dir>/<name>-<phase>.cpuprofile`.
 */
async function profiled<T>(dir: string | undefined, phase: string, children: Readonly<Record<string, ChildHandle>>, body: () => Promise<T>): Promise<T> {
  if (dir === undefined) return body();
  const entries = Object.entries(children);
  await Promise.all(entries.map(([, child]) => child.call("profileStart", { intervalUs: 250 })));
  try {
    return await body();
  } finally {
    await Promise.all(entries.map(([name, child]) => child.call("profileStop", { file: join(dir, `${name}-${phase}.cpuprofile`) })));
  }
}

async function waitFor(condition: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await sleep(50);
  }
}

// ---------------------------------------------------------------------------------------------
// Table

interface Comparison {
  readonly metric: string;
  readonly bridge: string;
  readonly baseline: string;
  /** "≤" for latencies (bridge / baseline), "≥" for throughput (bridge / baseline); undefined: informational. */
  readonly target: { readonly op: "≤" | "≥"; readonly ratio: number } | undefined;
}

interface ComparisonResult {
  readonly metric: string;
  readonly bridgeId: string;
  readonly baselineId: string;
  readonly bridge: Figure | undefined;
  readonly baseline: Figure | undefined;
  /** Median over runs of the per-run ratio, and the runs' range. */
  readonly ratio: number;
  readonly ratioRange: readonly [number, number] | undefined;
  readonly target: string;
  readonly pass: boolean | undefined;
}

function bestOf(results: Results, prefix: string, sizes: readonly number[]): number {
  let best = sizes[0]!;
  for (const size of sizes) if ((results.figure(`${prefix}.${size}`)?.median ?? 0) > (results.figure(`${prefix}.${best}`)?.median ?? 0)) best = size;
  return best;
}

/** A figure's value in each run: the run's median latency, or the run's rate. */
function perRun(f: Figure): number[] {
  return f.kind === "latency" ? f.runs.map((r) => r.p50) : [...f.runs];
}

/**
 * The ratio of two figures: the median over runs of bridge ÷ baseline in the same run. Bridge and
 * baseline of one run are measured back to back, so the machine's slow drifts (other tenants, CPU
 * clocks) cancel in each pair; a ratio of medians would pair a bridge run with some other run's
 * baseline.
 */
function pairedRatios(bridge: Figure, baseline: Figure): number[] {
  const a = perRun(bridge);
  const b = perRun(baseline);
  return a.slice(0, Math.min(a.length, b.length)).map((v, i) => v / b[i]!);
}

function compare(results: Results, c: Comparison): ComparisonResult {
  const bridge = results.figure(c.bridge);
  const baseline = results.figure(c.baseline);
  const ratios = bridge !== undefined && baseline !== undefined ? pairedRatios(bridge, baseline) : [];
  const ratio = ratios.length > 0 ? median(ratios) : Number.NaN;
  const pass = c.target === undefined || Number.isNaN(ratio) ? undefined : c.target.op === "≤" ? ratio <= c.target.ratio : ratio >= c.target.ratio;
  return {
    metric: c.metric,
    bridgeId: c.bridge,
    baselineId: c.baseline,
    bridge,
    baseline,
    ratio,
    ratioRange: ratios.length > 0 ? [Math.min(...ratios), Math.max(...ratios)] : undefined,
    target: c.target === undefined ? "(info)" : `${c.target.op} ${c.target.ratio.toFixed(2)}×`,
    pass,
  };
}

// ---------------------------------------------------------------------------------------------
// Main

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "kvmi-bench-"));
  const profileDir = flags.profile ? mkdtempSync(join(tmpdir(), "kvmi-bench-profiles-")) : undefined;
  const results = new Results();
  const warnings: string[] = [];
  const startedAt = new Date();
  const load0 = loadavg();
  progress(`settings: ${JSON.stringify(SETTINGS)}; ${cpus().length} CPUs, load ${load0.map((l) => l.toFixed(2)).join(" ")}`);

  const children: ChildHandle[] = [];
  const closers: Array<() => void> = [];
  let rawServer: Server | undefined;
  let memory: MemoryReport | undefined;
  let sizes: Record<string, MessageSizes> = {};
  let cpuMeter: CpuMeter | undefined;
  const t0 = performance.now();
  try {
    if (flags.only !== "memory") await perfPart();
    if (!flags["no-memory"] && flags.only !== "perf") {
      progress(`memory: ${MEMORY_VMS} VMs × ${MEMORY_VM_MIB} MiB × 1 vCPU with the workload, ${SETTINGS.memoryMs / 1000} s`);
      memory = await memoryPhase(dir, profileDir, warnings);
    }
  } finally {
    for (const close of closers) close();
    for (const child of children) child.kill();
    rawServer?.close();
    rmSync(dir, { recursive: true, force: true });
  }

  async function perfPart(): Promise<void> {
    const ownEmulator = SETTINGS.emulator === "process";
    const [echoChild, bridgeChild, emulatorChild] = await Promise.all([
      ChildHandle.start("echo", new URL("./echo-child.ts", import.meta.url)),
      ChildHandle.start("bridge", new URL("./bridge-child.ts", import.meta.url), { quiet: true }),
      ownEmulator ? ChildHandle.start("emulator", new URL("./emulator-child.ts", import.meta.url)) : undefined,
    ]);
    const emulator = emulatorChild ?? bridgeChild;
    children.push(...(emulatorChild ? [emulatorChild] : []), bridgeChild, echoChild);
    const { target: echoTarget } = await echoChild.call<{ target: string }>("start");
    const started = await bridgeChild.call<BridgeStarted>("start", { kvmiSocket: join(dir, "kvmi.sock"), logLevel: SETTINGS.bridgeLog, metrics: false });

    const rawPath = join(dir, "raw-tool.sock");
    const rawConnections = new Map<string, (c: RawConnection) => void>();
    const rawConnection = (name: string): Promise<RawConnection> => new Promise((r) => rawConnections.set(name, r));
    const rawToolConnected = rawConnection("raw");
    const rawReaderConnected = rawConnection("raw-bulk");
    rawServer = await listenRaw(rawPath, (c) => rawConnections.get(c.identity.name)?.(c));

    const perfVm = (key: string, path: string): VmSpec => ({ key, endpoint: { kind: "unix", path }, vcpus: PERF_VCPUS, memoryMiB: 64, workload: false });
    const vms = await emulator.call<Array<{ key: string; uuid: string }>>("addVms", {
      specs: [perfVm("bridge", started.kvmiSocket), perfVm("raw", rawPath), { ...perfVm("raw-bulk", rawPath), vcpus: 1 }],
    });
    const vm = `vms/${vms.find((v) => v.key === "bridge")!.uuid}`;
    const raw = { tool: new WireTool((await rawToolConnected).socket) };
    raw.tool.socket.resume();
    const rawReader = new PipelinedReader((await rawReaderConnected).socket);
    await waitFor(async () => (await bridgeChild.call<number>("hooked")) >= 1, 10_000, "the VM hooked to the bridge");

    // Controllers: CR3 write events on every vCPU, through the bridge and on the raw socket.
    const bridge = new BridgeClient(started.grpcTarget);
    const echo = new EchoClient(echoTarget);
    const echoStream = echo.bidi();
    closers.push(() => echoStream.end(), () => echo.close(), () => bridge.close());
    const controller = new SessionClient(bridge, vm);
    closers.unshift(() => controller.end());
    await controller.attached;
    for (let i = 0; i < PERF_VCPUS; i++) {
      const name = `${vm}/vcpus/${i}`;
      await controller.commandOk({ case: "controlVcpuEvents", value: { name, event: EventType.CR, enable: true } });
      await controller.commandOk({ case: "controlCr", value: { name, cr: CR3, enable: true } });
      for (const [cmd, body] of [["KVMI_VCPU_CONTROL_EVENTS", { event_id: v9Ids.KVMI_EVENT_CR, enable: 1 }], ["KVMI_VCPU_CONTROL_CR", { cr: CR3, enable: 1 }]] as const) {
        const reply = await raw.tool.command(cmd, body, i);
        if (reply.err !== 0) throw new Error(`raw ${cmd} on vCPU ${i}: err ${reply.err}`);
      }
    }
    const responder = answerEvents(raw.tool);
    closers.unshift(() => responder.stop());

    // Message sizes of the bridge calls, which the echo baselines reproduce.
    bridge.capture = true;
    const vcpuInfo = create(GetVcpuInfoRequestSchema, { name: `${vm}/vcpus/0` });
    const read4k = create(ReadPhysicalMemoryRequestSchema, { vm, gpa: BigInt(MEM_BASE), size: PAGE });
    await bridge.unary(BRIDGE.getVcpuInfo, vcpuInfo, "unary.getVcpuInfo");
    await bridge.unary(BRIDGE.readPhysicalMemory, read4k, "unary.read4k");
    await controller.commandOk({ case: "getVcpuInfo", value: vcpuInfo });
    await controller.commandOk({ case: "readPhysicalMemory", value: read4k });
    await eventLoop(emulator, "bridge", 1, 50);
    bridge.capture = false;
    sizes = {
      "unary.getVcpuInfo": bridge.sizeOf("unary.getVcpuInfo"),
      "unary.read4k": bridge.sizeOf("unary.read4k"),
      "session.getVcpuInfo": bridge.sizeOf("session:getVcpuInfo"),
      "session.read4k": bridge.sizeOf("session:readPhysicalMemory"),
      event: bridge.sizeOf("session:eventReply", "session:event:cr"),
    };
    progress(`message sizes (request/response bytes): ${Object.entries(sizes).map(([k, s]) => `${k} ${s.request}/${s.response}`).join(", ")}`);

    const processes: Record<string, ChildHandle> = { bridge: bridgeChild, echo: echoChild, ...(emulatorChild ? { emulator: emulatorChild } : {}) };
    cpuMeter = new CpuMeter(results, processes);
    const ctx: Context = { results, cpu: cpuMeter, warnings, bridge, echo, echoStream, emulator, controller, vm, raw, rawReader, sizes };
    // Run 0 warms up; with --profile, one more run after the measured ones is profiled phase by
    // phase (not recorded: the profiler slows the processes down).
    const lastRun = SETTINGS.runs + (profileDir === undefined ? 0 : 1);
    for (let run = 0; run <= lastRun; run++) {
      results.recording = run > 0 && run <= SETTINGS.runs;
      const name = run === 0 ? "warm-up" : run > SETTINGS.runs ? "profiled run" : `run ${run}/${SETTINGS.runs}`;
      const profile = run > SETTINGS.runs ? profileDir : undefined;
      const sampled: Record<string, ChildHandle> = { bridge: bridgeChild, ...(emulatorChild ? { emulator: emulatorChild } : {}) };
      const phases = [
        ["commands", commandsPhase],
        ["events", eventsPhase],
        ["bulk", bulkPhase],
      ] as const;
      for (const [phase, body] of phases) {
        if (!PHASES.has(phase)) continue;
        progress(`${name}: ${phase}`);
        await profiled(profile, phase, sampled, () => body(ctx));
      }
    }
    for (const close of closers.splice(0)) close();
    await drainBridge(bridgeChild, "bridge", warnings);
    for (const child of children.splice(0)) await child.stop();
    rawServer.close();
  }

  // -------------------------------------------------------------------------------------------
  // Report

  const bestBatch = bestOf(results, "bridge.batch", BATCH_SIZES);
  const bestDump = bestOf(results, "bridge.dump", DUMP_CHUNKS);
  const LAT = { op: "≤", ratio: 1.3 } as const;
  const comparisons = [
    compare(results, { metric: "Unary GetVcpuInfo round trip / bare unary echo", bridge: "bridge.unary.getVcpuInfo", baseline: "echo.unary.getVcpuInfo", target: LAT }),
    compare(results, { metric: "Unary ReadPhysicalMemory 4 KiB round trip / bare unary echo", bridge: "bridge.unary.read4k", baseline: "echo.unary.read4k", target: LAT }),
    compare(results, { metric: "Session GetVcpuInfo round trip / bare bidi echo", bridge: "bridge.session.getVcpuInfo", baseline: "echo.bidi.getVcpuInfo", target: LAT }),
    compare(results, { metric: "Session ReadPhysicalMemory 4 KiB round trip / bare bidi echo", bridge: "bridge.session.read4k", baseline: "echo.bidi.read4k", target: LAT }),
    compare(results, { metric: "Event round trip, 1 vCPU / bare bidi echo", bridge: "bridge.event.1", baseline: "echo.bidi.event.1", target: LAT }),
    compare(results, { metric: `Event round trip, ${PERF_VCPUS} vCPUs / bare bidi echo ×${PERF_VCPUS}`, bridge: "bridge.event.4", baseline: "echo.bidi.event.4", target: LAT }),
    compare(results, { metric: `Sustained events/s with replies, ${PERF_VCPUS} vCPUs / bare bidi echo msgs/s`, bridge: "bridge.event.rate", baseline: "echo.bidi.rate", target: undefined }),
    compare(results, { metric: `BatchReadMemory 16 MiB (best: ${sizeLabel(bestBatch)} calls) / bare server stream`, bridge: `bridge.batch.${bestBatch}`, baseline: `echo.stream.${bestBatch}`, target: { op: "≥", ratio: 0.8 } }),
    compare(results, { metric: `DumpMemory 16 MiB (best: ${sizeLabel(bestDump)} chunks) / bare server stream`, bridge: `bridge.dump.${bestDump}`, baseline: `echo.stream.${bestDump}`, target: { op: "≥", ratio: 0.8 } }),
  ];
  const rows = comparisons.map((c) => [
    c.metric,
    formatFigure(c.bridge),
    formatFigure(c.baseline),
    Number.isNaN(c.ratio) ? "n/a" : `${c.ratio.toFixed(2)}×${c.ratioRange && c.ratioRange[0] !== c.ratioRange[1] ? ` (${c.ratioRange[0].toFixed(2)}–${c.ratioRange[1].toFixed(2)})` : ""}`,
    c.target,
    Number.isNaN(c.ratio) ? "not run" : c.pass === undefined ? "info" : c.pass ? "PASS" : "FAIL",
  ]);
  if (memory !== undefined) {
    rows.push([
      `Bridge RSS, ${memory.vms} VMs + slow controller: slope after ${memory.warmupS.toFixed(0)} s`,
      `${memory.slopeMBPerMin.toFixed(1)} MB/min (RSS start ${memory.startRssMB.toFixed(0)}, peak ${memory.peakRssMB.toFixed(0)}, end ${memory.endRssMB.toFixed(0)} MB)`,
      `idle with ${memory.vms} VMs: ${memory.idleRssMB.toFixed(0)} MB`,
      "—",
      `≤ ${memory.limitMBPerMin} MB/min`,
      memory.bounded ? "PASS" : "FAIL",
    ]);
  }
  // The transport floor of a bridged call: the gRPC hop (bare echo) plus the KVMI hop (raw tool),
  // both measured in this run. Whatever the bridge adds is above it.
  const floors = (
    [
      ["Unary GetVcpuInfo", "bridge.unary.getVcpuInfo", "echo.unary.getVcpuInfo", "raw.command.getVcpuInfo"],
      ["Unary ReadPhysicalMemory 4 KiB", "bridge.unary.read4k", "echo.unary.read4k", "raw.command.read4k"],
      ["Session GetVcpuInfo", "bridge.session.getVcpuInfo", "echo.bidi.getVcpuInfo", "raw.command.getVcpuInfo"],
      ["Session ReadPhysicalMemory 4 KiB", "bridge.session.read4k", "echo.bidi.read4k", "raw.command.read4k"],
      ["Event round trip, 1 vCPU", "bridge.event.1", "echo.bidi.event.1", "raw.event.1"],
      [`Event round trip, ${PERF_VCPUS} vCPUs`, "bridge.event.4", "echo.bidi.event.4", "raw.event.4"],
    ] as const
  ).map(([metric, b, g, k]) => {
    const bridgeUs = results.figure(b)?.median ?? Number.NaN;
    const grpcUs = results.figure(g)?.median ?? Number.NaN;
    const kvmiUs = results.figure(k)?.median ?? Number.NaN;
    const floorUs = grpcUs + kvmiUs;
    return { metric, bridgeUs, grpcUs, kvmiUs, floorUs, overheadUs: bridgeUs - floorUs, ratio: bridgeUs / floorUs, grpcTargetRatio: floorUs / grpcUs };
  });
  const ceiling = results.figure("raw.read.pipelined");
  const dumpFigure = results.figure(`bridge.dump.${bestDump}`);
  const batchFigure = results.figure(`bridge.batch.${bestBatch}`);

  const baselineIds = [
    "echo.unary.getVcpuInfo", "echo.unary.read4k", "echo.bidi.getVcpuInfo", "echo.bidi.read4k", "echo.bidi.event.1", "echo.bidi.event.4", "echo.bidi.rate",
    ...[...new Set<number>([...BATCH_SIZES, ...DUMP_CHUNKS])].sort((a, b) => a - b).map((s) => `echo.stream.${s}`),
    "raw.command.getVcpuInfo", "raw.command.read4k", "raw.event.1", "raw.event.4", "raw.event.rate", "raw.read.pipelined",
  ];
  const bridgeSweep = [...BATCH_SIZES.map((s) => `bridge.batch.${s}`), ...DUMP_CHUNKS.map((s) => `bridge.dump.${s}`)];
  const out: string[] = [];
  out.push("");
  out.push("Baselines (same run, same machine):");
  out.push(renderTable(["baseline", "figure"], baselineIds.map((id) => [results.figure(id)?.label ?? id, formatFigure(results.figure(id))])));
  out.push("");
  out.push("Bridge bulk-memory sweep (the fastest size of each goes into the table below):");
  out.push(renderTable(["bridge", "figure"], bridgeSweep.map((id) => [results.figure(id)?.label ?? id, formatFigure(results.figure(id))])));
  out.push("");
  out.push(
    `Bridge vs baselines (latency: median of ${SETTINGS.runs} run medians, with p50/p99 over all samples; throughput: median and range of runs; ratio: median of the per-run ratios, with their range):`,
  );
  out.push(renderTable(["metric", "bridge", "baseline", "ratio", "target", "result"], rows));
  const verdicts = comparisons.map((c) => c.pass).concat(memory === undefined ? [] : [memory.bounded]).filter((p) => p !== undefined);
  out.push(`Targets: ${verdicts.filter((p) => p).length} pass, ${verdicts.filter((p) => !p).length} fail.`);
  if (ceiling !== undefined) {
    const share = (f: Figure | undefined): string => (f === undefined ? "n/a" : `${((100 * f.median) / ceiling.median).toFixed(0)}%`);
    out.push("");
    out.push(
      `Raw-socket ceiling: ${formatFigure(ceiling)} — raw KVMI 4 KiB page reads, ${RAW_WINDOW} in flight, no bridge, no gRPC ` +
        `(bridge DumpMemory reaches ${share(dumpFigure)} of it, BatchReadMemory ${share(batchFigure)}).`,
    );
  }
  if (memory !== undefined) {
    out.push("");
    out.push(
      `Memory test (${memory.vms} VMs, controller reply deadline ${memory.eventDeadlineMs} ms, reads ${memory.slowReadForMs} ms every ${memory.slowReadEveryMs / 1000} s${profileDir === undefined ? "" : ", profiled"}): ` +
        `guests raised ${memory.guestEventsPerSecond.toFixed(0)} CR events/s, the slow controller read ${memory.clientEventsPerSecond.toFixed(0)}/s; ` +
        `bridge auto-replies by reason: ${JSON.stringify(memory.autoReplies)}; heap after a full GC ${memory.samples.filter((x) => x.heapAfterGcMB !== undefined).map((x) => `${x.heapAfterGcMB!.toFixed(1)} (${x.t.toFixed(0)} s)`).join(" → ")} MB, slope after warm-up ${memory.heapAfterGcSlopeMBPerMin.toFixed(1)} MB/min.`,
    );
  }
  if (floors.some((f) => !Number.isNaN(f.ratio))) {
    const us = (v: number): string => (Number.isNaN(v) ? "n/a" : `${v.toFixed(0)} µs`);
    out.push("");
    out.push("Where the bridge stands against its transport floor (medians; floor = bare gRPC hop + raw KVMI hop, both measured above):");
    out.push(
      renderTable(
        ["metric", "bridge", "gRPC hop", "KVMI hop", "floor", "bridge − floor", "bridge / floor", "floor / gRPC hop"],
        floors.map((f) => [f.metric, us(f.bridgeUs), us(f.grpcUs), us(f.kvmiUs), us(f.floorUs), us(f.overheadUs), `${f.ratio.toFixed(2)}×`, `${f.grpcTargetRatio.toFixed(2)}×`]),
      ),
    );
  }
  if (cpuMeter !== undefined) {
    const perOp = cpuMeter.perOp();
    const fmt = (v: number | undefined): string => (v === undefined ? "" : v >= 100 ? v.toFixed(0) : v.toFixed(1));
    out.push("");
    out.push("CPU time per operation (µs, all measured runs; bulk: per MiB):");
    out.push(
      renderTable(
        ["measurement", "per", SETTINGS.emulator === "process" ? "bridge" : "bridge+emulator", "emulator", "echo", "client"],
        Object.entries(perOp).map(([id, e]) => [id, e.unit, fmt(e.usPerOp["bridge"]), SETTINGS.emulator === "process" ? fmt(e.usPerOp["emulator"]) : "(in bridge)", fmt(e.usPerOp["echo"]), fmt(e.usPerOp["client"])]),
      ),
    );
  }
  if (warnings.length > 0) {
    out.push("");
    out.push(`Warnings (${warnings.length}):`);
    for (const w of [...new Set(warnings)].slice(0, 20)) out.push(`  - ${w}`);
  }

  let profiles: Record<string, ProfileSummary> | undefined;
  if (profileDir !== undefined) {
    profiles = {};
    out.push("");
    out.push("CPU profiles (--profile; an extra, unrecorded run after the measured ones, each phase sampled every 250 µs):");
    for (const file of readdirSync(profileDir).filter((f) => f.endsWith(".cpuprofile")).sort()) {
      const name = file.replace(/\.cpuprofile$/, "");
      const summary = summarizeProfile(join(profileDir, file), Number(process.env["KVMI_BENCH_PROFILE_TOP"] ?? 25));
      profiles[name] = summary;
      out.push(formatProfile(name, summary));
    }
  }
  const elapsedS = (performance.now() - t0) / 1000;
  out.push("");
  out.push(`Took ${elapsedS.toFixed(0)} s. Load average before: ${load0.map((l) => l.toFixed(2)).join(" ")}, after: ${loadavg().map((l) => l.toFixed(2)).join(" ")}.`);
  process.stdout.write(`${out.join("\n")}\n`);

  const jsonPath = resolve(flags.json);
  const json = {
    meta: {
      startedAt: startedAt.toISOString(),
      elapsedS,
      node: process.version,
      cpus: cpus().length,
      cpuModel: cpus()[0]?.model,
      loadavgBefore: load0,
      loadavgAfter: loadavg(),
      quick: QUICK,
      settings: SETTINGS,
      bulkBytes: BULK_BYTES,
      batchSizes: BATCH_SIZES,
      dumpChunks: DUMP_CHUNKS,
      rawWindow: RAW_WINDOW,
      perfVcpus: PERF_VCPUS,
    },
    messageSizes: sizes,
    comparisons: comparisons.map(({ bridge: _b, baseline: _l, ...c }) => ({
      ...c,
      bridge: c.bridgeId,
      baseline: c.baselineId,
      bridgeMedian: _b?.median,
      baselineMedian: _l?.median,
    })),
    floors,
    ceiling: ceiling === undefined ? undefined : { id: "raw.read.pipelined", medianMBs: ceiling.median },
    figures: results.all(),
    cpuPerOperation: cpuMeter?.perOp(),
    memory,
    warnings,
    profiles,
  };
  writeFileSync(jsonPath, `${JSON.stringify(json, (_k, v: unknown) => (typeof v === "number" && !Number.isFinite(v) ? null : v), 2)}\n`);
  process.stdout.write(`Results written to ${jsonPath}\n`);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`[bench] failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
