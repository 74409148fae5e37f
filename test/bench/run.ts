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
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import type { Server } from "node:net";
import { cpus, loadavg, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { create } from "@bufbuild/protobuf";
import { v9Ids } from "@kvmi/kvm-bridge/wire";
import { EventType, GetVcpuInfoRequestSchema, ReadPhysicalMemoryRequestSchema, Role } from "@kvmi/proto";
import { WireTool } from "../support/wire-tool.js";
import type { BridgeStarted } from "./bridge-child.js";
import type { VmSpec } from "./lib/emulator-host.js";
import { BRIDGE, BridgeClient, EchoClient, SessionClient } from "./lib/clients.js";
import type { MessageSizes } from "./lib/clients.js";
import { drainBridge, profiled, progress, waitFor } from "./lib/child-helpers.js";
import { ChildHandle } from "./lib/ipc.js";
import { answerEvents, listenRaw, PipelinedReader } from "./lib/raw-kvmi.js";
import type { RawConnection } from "./lib/raw-kvmi.js";
import { Results } from "./lib/report.js";
import { MEMORY_VM_MIB, MEMORY_VMS, memoryPhase } from "./memory-phase.js";
import { relayPart } from "./relay-phase.js";
import { filterPart } from "./filter-phase.js";
import type { FilterReport } from "./filter-phase.js";
import type { MemoryReport } from "./memory-phase.js";
import {
  BATCH_SIZES,
  BULK_BYTES,
  bulkPhase,
  commandsPhase,
  CpuMeter,
  CR3,
  DUMP_CHUNKS,
  eventLoop,
  eventsPhase,
  forwarderPhase,
  MEM_BASE,
  PAGE,
  PERF_VCPUS,
  RAW_WINDOW,
} from "./perf-phases.js";
import { buildReport } from "./perf-report.js";
import type { Context } from "./perf-phases.js";
import { noisyPhase } from "./noisy-phase.js";
import { socatPhase, startSocatPeer } from "./socat-phase.js";


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
  --only perf|memory|relay|filters
                       run only the latency/throughput part, only the memory test, or only the
                       kvmi-relay comparison (a libkvmi tool through relay + bridge vs a local socket)
  --no-relay           skip the kvmi-relay comparison
  --no-filters         skip the event-filter part (rule-answered events, notifications, the
                       10-VM mixed workload; --only filters runs only it)
  --emulator WHERE     where the emulated VMs of the latency/throughput part run: "in-bridge"
                       (default; the bridge's process, as embedded mode and npm start run them, so
                       the KVMI peer costs no process wake-up, as the kernel's would not) or
                       "process" (a process of their own). The memory test always uses a process.
  --phases LIST        the latency/throughput phases to run, comma-separated (default
                       commands,events,bulk,noisy,forwarder,socat); for development, e.g. with perf
                       attached. socat: the peer baseline, raw KVMI relayed over TCP by socat
  --event-batches on|off
                       whether the measuring controller attaches with event_batches and answers
                       a batch with one EventReplyBatch, as the SDK does (default on)
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
    "no-relay": { type: "boolean", default: false },
    "no-filters": { type: "boolean", default: false },
    "memory-seconds": { type: "string" },
    "bridge-log": { type: "string", default: "info" },
    only: { type: "string" },
    emulator: { type: "string", default: "in-bridge" },
    "event-batches": { type: "string", default: "on" },
    phases: { type: "string", default: "commands,events,bulk,noisy,forwarder,socat" },
    help: { type: "boolean", short: "h", default: false },
  },
});
if (flags.only !== undefined && flags.only !== "perf" && flags.only !== "memory" && flags.only !== "relay" && flags.only !== "filters") {
  process.stderr.write(`--only takes perf, memory, relay or filters\n${HELP}`);
  process.exit(2);
}
if (flags["event-batches"] !== "on" && flags["event-batches"] !== "off") {
  process.stderr.write(`--event-batches takes on or off\n${HELP}`);
  process.exit(2);
}
if (flags.emulator !== "in-bridge" && flags.emulator !== "process") {
  process.stderr.write(`--emulator takes in-bridge or process\n${HELP}`);
  process.exit(2);
}
const PHASES = new Set(flags.phases.split(","));
for (const phase of PHASES) {
  if (phase !== "commands" && phase !== "events" && phase !== "bulk" && phase !== "noisy" && phase !== "forwarder" && phase !== "socat") {
    process.stderr.write(`--phases takes commands, events, bulk, noisy, forwarder and/or socat, got ${phase}\n${HELP}`);
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
  let filters: FilterReport | undefined;
  let sizes: Record<string, MessageSizes> = {};
  let cpuMeter: CpuMeter | undefined;
  const t0 = performance.now();
  try {
    if (flags.only === undefined || flags.only === "perf") await perfPart();
    if (!flags["no-relay"] && (flags.only === undefined || flags.only === "relay")) await relayPart(SETTINGS, results);
    if (!flags["no-filters"] && (flags.only === undefined || flags.only === "filters")) filters = await filterPart({ ...SETTINGS, profileDir }, results);
    if (!flags["no-memory"] && (flags.only === undefined || flags.only === "memory")) {
      progress(`memory: ${MEMORY_VMS} VMs × ${MEMORY_VM_MIB} MiB × 1 vCPU with the workload, ${SETTINGS.memoryMs / 1000} s`);
      memory = await memoryPhase(SETTINGS, dir, profileDir, warnings);
    }
  } finally {
    for (const close of closers) close();
    for (const child of children) child.kill();
    rawServer?.close();
    rmSync(dir, { recursive: true, force: true });
  }

  async function perfPart(): Promise<void> {
    const ownEmulator = SETTINGS.emulator === "process";
    const [echoChild, bridgeChild, emulatorChild, forwarderChild] = await Promise.all([
      ChildHandle.start("echo", new URL("./echo-child.ts", import.meta.url)),
      ChildHandle.start("bridge", new URL("./bridge-child.ts", import.meta.url), { quiet: true }),
      ownEmulator ? ChildHandle.start("emulator", new URL("./emulator-child.ts", import.meta.url)) : undefined,
      ChildHandle.start("forwarder", new URL("./forwarder-child.ts", import.meta.url)),
    ]);
    const emulator = emulatorChild ?? bridgeChild;
    children.push(...(emulatorChild ? [emulatorChild] : []), bridgeChild, echoChild, forwarderChild);
    const { target: echoTarget } = await echoChild.call<{ target: string }>("start");
    const started = await bridgeChild.call<BridgeStarted>("start", { kvmiSocket: join(dir, "kvmi.sock"), logLevel: SETTINGS.bridgeLog, metrics: false });

    const rawPath = join(dir, "raw-tool.sock");
    const rawConnections = new Map<string, (c: RawConnection) => void>();
    const rawConnection = (name: string): Promise<RawConnection> => new Promise((r) => rawConnections.set(name, r));
    const rawToolConnected = rawConnection("raw");
    const rawReaderConnected = rawConnection("raw-bulk");
    rawServer = await listenRaw(rawPath, (c) => rawConnections.get(c.identity.name)?.(c));
    // KubeVirt node mode: the VM connects to the forwarder, which carries it to this listener.
    const rawForwardedConnected = rawConnection("raw-fwd");
    const forwardedServer = await listenRaw(join(dir, "raw-forward-up.sock"), (c) => rawConnections.get(c.identity.name)?.(c), { forwarded: true });
    closers.push(() => forwardedServer.close());
    const { listenPath: forwarderPath } = await forwarderChild.call<{ listenPath: string }>("start", { listenPath: join(dir, "forwarder.sock"), upstreamPath: join(dir, "raw-forward-up.sock") });

    const perfVm = (key: string, path: string): VmSpec => ({ key, endpoint: { kind: "unix", path }, vcpus: PERF_VCPUS, memoryMiB: 64, workload: false });
    const vms = await emulator.call<Array<{ key: string; uuid: string }>>("addVms", {
      specs: [perfVm("bridge", started.kvmiSocket), perfVm("raw", rawPath), { ...perfVm("raw-bulk", rawPath), vcpus: 1 }, { ...perfVm("raw-fwd", forwarderPath), vcpus: 1 }],
    });
    const vm = `vms/${vms.find((v) => v.key === "bridge")!.uuid}`;
    // The bulk region holds written memory, the same bytes in both VMs the bulk reads come from.
    for (const key of ["bridge", "raw-bulk"]) await emulator.call("fillRam", { key, gpa: MEM_BASE, bytes: BULK_BYTES, seed: 1 });
    const raw = { tool: new WireTool((await rawToolConnected).socket) };
    raw.tool.socket.resume();
    const rawForwarded = { tool: new WireTool((await rawForwardedConnected).socket) };
    rawForwarded.tool.socket.resume();
    for (const [cmd, body] of [["KVMI_VCPU_CONTROL_EVENTS", { event_id: v9Ids.KVMI_EVENT_CR, enable: 1 }], ["KVMI_VCPU_CONTROL_CR", { cr: CR3, enable: 1 }]] as const) {
      const reply = await rawForwarded.tool.command(cmd, body, 0);
      if (reply.err !== 0) throw new Error(`forwarded ${cmd}: err ${reply.err}`);
    }
    const forwardedResponder = answerEvents(rawForwarded.tool);
    closers.unshift(() => forwardedResponder.stop());
    const rawReader = new PipelinedReader((await rawReaderConnected).socket);
    await waitFor(async () => (await bridgeChild.call<number>("hooked")) >= 1, 10_000, "the VM hooked to the bridge");

    // Controllers: CR3 write events on every vCPU, through the bridge and on the raw socket.
    const bridge = new BridgeClient(started.grpcTarget);
    const echo = new EchoClient(echoTarget);
    const echoStream = echo.bidi();
    closers.push(() => echoStream.end(), () => echo.close(), () => bridge.close());
    const controller = new SessionClient(bridge, vm, Role.CONTROLLER, undefined, flags["event-batches"] === "on");
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

    // The peer baseline: the raw KVMI stream relayed over TCP by socat (socat-phase.ts).
    const socatPeer = PHASES.has("socat") ? await startSocatPeer(dir, emulator) : undefined;
    if (socatPeer !== undefined) closers.unshift(() => socatPeer.stop());
    const processes: Record<string, ChildHandle> = {
      bridge: bridgeChild,
      echo: echoChild,
      ...(emulatorChild ? { emulator: emulatorChild } : {}),
      ...(socatPeer ? { socat: socatPeer.cpu as ChildHandle } : {}),
    };
    // Event loops watched on the event phases: the bridge's (with the emulator in it by default),
    // the emulator's own with --emulator process, and the echo's (the client's is always watched).
    cpuMeter = new CpuMeter(results, processes, ["bridge", ...(emulatorChild ? ["emulator"] : []), "echo"]);
    const ctx: Context = { settings: SETTINGS, results, cpu: cpuMeter, warnings, bridge, echo, echoStream, emulator, controller, vm, raw, rawForwarded, rawReader, sizes };
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
        ["noisy", noisyPhase],
        ["forwarder", forwarderPhase],
        ["socat", (c: Context) => socatPhase(c, socatPeer!)],
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

  const { lines: out, comparisons, floors, ceiling, loops, profiles } = buildReport({ settings: SETTINGS, results, memory, filters, cpuMeter, warnings, profileDir });
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
    eventLoops: loops,
    memory,
    filters: filters?.json,
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
