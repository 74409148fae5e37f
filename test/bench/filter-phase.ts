// SPDX-License-Identifier: Apache-2.0
/**
 * The event-filter part of `npm run bench` (docs/event-filters.md): what a guest pays for an event
 * the bridge answers itself, against the raw KVMI event hop of the same run.
 *
 * Processes: the emulated VMs in one child (filter-emulator-child.ts), the bridge in another
 * (bridge-child.ts), and this process as the tools: SDK controllers of the bridge and the raw
 * KVMI tool (codec only). Bridge and raw tool are each one UNIX-socket hop from the guest.
 *
 *   (a) `reply`: MOV CR3 answered by a `cr cr=3 -> reply` rule, guest-timed, against the same write
 *       answered by the raw tool (the raw KVMI event hop), and against the same write delivered to
 *       the controller (no rule);
 *   (b) `notify`: the guest-side stall of the same write under a `notify` rule, for isolated writes
 *       (one per PACED_GAP_MS ms, against the raw hop paced the same way) and back to back (where the
 *       notifications of a sustained stream leave in batches while the guest goes on), and how long an
 *       isolated notification takes from the guest's write to the controller's `events()` loop
 *       (the write's CLOCK_MONOTONIC start travels in R15, lib/filter-guest.ts);
 *   (c) mixed: 10 VMs each traced by a tool counting syscalls with `count` rules (per-process rules
 *       on the PF that the entry page's removed execute access raises, as `trace --method ept`
 *       does) and one VM traced by a tool that gets each syscall delivered and answers it; guest
 *       syscalls/s and CPU per event, against the same guests with nothing intercepted.
 */
import { mkdtempSync, rmSync } from "node:fs";
import type { Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect, PAGE_ACCESS } from "@kvmi/clients";
import type { BridgeClient, Session } from "@kvmi/clients";
import { guestModel } from "@kvmi/kvm-bridge/emulator";
import { v9Ids } from "@kvmi/kvm-bridge/wire";
import { WireTool } from "../support/wire-tool.js";
import type { BridgeStarted } from "./bridge-child.js";
import { profiled, progress, waitFor } from "./lib/child-helpers.js";
import { compare } from "./lib/compare.js";
import type { EventLoopResult, VmSpec } from "./lib/emulator-host.js";
import type { SyscallLoopResult } from "./lib/filter-guest.js";
import { ChildHandle } from "./lib/ipc.js";
import { answerEvents, listenRaw } from "./lib/raw-kvmi.js";
import type { RawConnection } from "./lib/raw-kvmi.js";
import { formatFigure, renderTable } from "./lib/report.js";
import type { Results } from "./lib/report.js";
import { CpuMeter, eventLoop } from "./perf-phases.js";

/** VMs traced with `count` rules in the mixed workload, besides the one traced with `deliver`. */
export const MIXED_COUNT_VMS = 10;
const VM_MIB = 16;
/**
 * The pause between isolated events: long enough for the bridge and the controller to finish a
 * notification's work on a loaded 2-core machine before the next event comes.
 */
const PACED_GAP_MS = 4;

export interface FilterSettings {
  readonly runs: number;
  readonly windowMs: number;
  readonly sustainedMs: number;
  readonly bridgeLog: string;
  /**
   * With `--profile`: after the measured runs, one more (unrecorded) run of the `reply` and
   * `notify` event loops with the V8 profiler in the bridge and the emulator, profiles written here.
   */
  readonly profileDir?: string | undefined;
}

/** The part's own report: table lines for the output, and what goes into the JSON results. */
export interface FilterReport {
  readonly lines: string[];
  readonly json: Record<string, unknown>;
}

/** A controller that answers what is delivered and times the notifications it receives. */
class TimingController {
  /** Guest-to-controller latencies (µs) of the notifications received while collecting. */
  latencies: number[] | undefined;
  notifications = 0;
  private readonly done: Promise<void>;

  constructor(readonly session: Session) {
    this.done = (async () => {
      for await (const item of session.events()) {
        if (item.kind !== "event") continue;
        if (item.notification === undefined) {
          await item.continue();
          continue;
        }
        this.notifications++;
        this.latencies?.push(Number(process.hrtime.bigint() - item.arch.regs.r15) / 1000);
      }
    })().catch(() => undefined);
  }

  async close(): Promise<void> {
    await this.session.release().catch(() => undefined);
    await this.done;
  }
}

/** A tool tracing a VM's syscall entry through the PF its page's missing execute access raises. */
async function syscallTool(client: BridgeClient, uuid: string, roots: readonly string[], mode: "count" | "deliver"): Promise<Session> {
  const entry = `pf gva=0x${guestModel.SYSCALL_ENTRY_GVA.toString(16)} access=x`;
  // One counting rule per process, as `trace` writes them; the last one counts anything else.
  const rules =
    mode === "count"
      ? [...roots.map((root, i) => `${entry} %cr3&0xffffffffff000==${root} -> count as p${i}`), `${entry} -> count as other`]
      : [`${entry} -> deliver as syscall`];
  const session = await client.attach(uuid, { role: "controller", eventFilter: rules.join(" ; ") });
  const gpa = await session.translate(0, guestModel.SYSCALL_ENTRY_GVA);
  if (gpa === undefined) throw new Error("the syscall entry is not mapped");
  await session.controlVcpuEvents(0, "pageFault", true);
  await session.setPageAccess([{ gpa, access: PAGE_ACCESS.R | PAGE_ACCESS.W }]);
  if (mode === "deliver") {
    void (async () => {
      for await (const item of session.events()) if (item.kind === "event") await item.continue();
    })().catch(() => undefined);
  }
  return session;
}

/** Runs the event-filter measurements into `results` (ids `filter.*`). */
export async function filterPart(settings: FilterSettings, results: Results): Promise<FilterReport> {
  const dir = mkdtempSync(join(tmpdir(), "kvmi-bench-filter-"));
  const warnings: string[] = [];
  const closers: Array<() => Promise<unknown> | unknown> = [];
  let rawServer: Server | undefined;
  try {
    const [bridgeChild, emulator] = await Promise.all([
      ChildHandle.start("bridge", new URL("./bridge-child.ts", import.meta.url), { quiet: true }),
      ChildHandle.start("emulator", new URL("./filter-emulator-child.ts", import.meta.url)),
    ]);
    closers.unshift(() => bridgeChild.stop(), () => emulator.stop());
    const started = await bridgeChild.call<BridgeStarted>("start", { kvmiSocket: join(dir, "kvmi.sock"), logLevel: settings.bridgeLog, metrics: false });
    const rawConnected = new Promise<RawConnection>((resolve) => {
      void listenRaw(join(dir, "raw.sock"), resolve).then((s) => (rawServer = s));
    });
    await waitFor(async () => rawServer !== undefined, 5000, "the raw tool's socket");

    const toBridge = (key: string): VmSpec => ({ key, endpoint: { kind: "unix", path: started.kvmiSocket }, vcpus: 1, memoryMiB: VM_MIB, workload: false });
    const mixed = Array.from({ length: MIXED_COUNT_VMS }, (_, i) => `mix-count-${i}`);
    const plain = Array.from({ length: MIXED_COUNT_VMS + 1 }, (_, i) => `plain-${i}`);
    const specs = [toBridge("f-bridge"), { ...toBridge("f-raw"), endpoint: { kind: "unix", path: join(dir, "raw.sock") } } as VmSpec, ...[...mixed, "mix-deliver", ...plain].map(toBridge)];
    const vms = new Map((await emulator.call<Array<{ key: string; uuid: string }>>("addVms", { specs })).map((v) => [v.key, v.uuid]));
    const onBridge = specs.length - 1;
    await waitFor(async () => (await bridgeChild.call<number>("hooked")) >= onBridge, 30_000, `${onBridge} VMs hooked to the bridge`);

    // The raw KVMI tool on f-raw: CR3 write events, answered CONTINUE with the guest's value.
    const raw = new WireTool((await rawConnected).socket);
    raw.socket.resume();
    for (const [cmd, body] of [["KVMI_VCPU_CONTROL_EVENTS", { event_id: v9Ids.KVMI_EVENT_CR, enable: 1 }], ["KVMI_VCPU_CONTROL_CR", { cr: 3, enable: 1 }]] as const) {
      const reply = await raw.command(cmd, body, 0);
      if (reply.err !== 0) throw new Error(`raw ${cmd}: err ${reply.err}`);
    }
    const responder = answerEvents(raw);
    closers.unshift(() => responder.stop());

    const client = connect({ target: started.grpcTarget });
    closers.unshift(() => client.close());
    const controller = new TimingController(await client.attach(vms.get("f-bridge")!, { role: "controller" }));
    closers.unshift(() => controller.close());
    await controller.session.controlVcpuEvents(0, "cr", true);
    await controller.session.controlCr(0, 3, true);

    const tools: Session[] = [];
    for (const key of [...mixed, "mix-deliver"]) {
      const roots = await emulator.call<string[]>("processRoots", { key });
      tools.push(await syscallTool(client, vms.get(key)!, roots, key === "mix-deliver" ? "deliver" : "count"));
    }
    closers.unshift(() => Promise.all(tools.map((t) => t.release().catch(() => undefined))));

    const cpu = new CpuMeter(results, { bridge: bridgeChild, emulator });
    const ms = settings.windowMs;
    /** Guest-timed CR3 writes on `key`: back to back (`gapMs` 0, emulator-host's loop) or one per `gapMs`. */
    const guestEvents = async (id: string, label: string, key: string, gapMs = 0): Promise<EventLoopResult> => {
      const r = await cpu.track(
        id,
        "event",
        () => (gapMs === 0 ? eventLoop(emulator, key, 1, ms) : emulator.call<EventLoopResult>("stampedCrLoop", { key, durationMs: ms, maxSamples: ms * 200, gapMs })),
        (x) => x.completed,
      );
      if (r.failures > 0) warnings.push(`${id}: ${r.failures} MOV CR3 did not complete with the written value`);
      results.latency(id, label, r.samples);
      return r;
    };
    const syscalls = async (id: string, keys: readonly string[]): Promise<SyscallLoopResult> => {
      const total = (r: SyscallLoopResult): number => Object.values(r.completed).reduce((a, b) => a + b, 0);
      const r = await cpu.track(id, "event", () => emulator.call<SyscallLoopResult>("syscallLoop", { keys, durationMs: settings.sustainedMs }), total);
      if (r.failures > 0) warnings.push(`${id}: ${r.failures} syscalls did not complete normally`);
      results.rate(id, `guest syscalls/s, ${keys.length} VMs`, "events/s", (total(r) * 1000) / r.elapsedMs);
      return r;
    };

    let counted = 0;
    for (let run = 0; run <= settings.runs; run++) {
      results.recording = run > 0;
      progress(`filters: ${run === 0 ? "warm-up" : `run ${run}/${settings.runs}`}`);
      // (a) reply, the raw hop, and delivery without a rule.
      await controller.session.setEventFilter("cr cr=3 -> reply as cr3");
      await guestEvents("filter.reply.event", "CR3 write answered by a `reply` rule (guest-timed)", "f-bridge");
      await guestEvents("filter.raw.event", "CR3 write answered by the raw KVMI tool (guest-timed)", "f-raw");
      await guestEvents("filter.reply.paced", `CR3 write answered by a \`reply\` rule, one per ${PACED_GAP_MS} ms (guest-timed)`, "f-bridge", PACED_GAP_MS);
      await controller.session.setEventFilter("");
      await guestEvents("filter.deliver.event", "CR3 write delivered to the controller, no rule (guest-timed)", "f-bridge");
      // (b) notify: the stall of events back to back and of isolated ones (one per PACED_GAP_MS ms, the raw hop
      // paced the same way), and the isolated notifications' way to the controller.
      await guestEvents("filter.raw.paced", `CR3 write answered by the raw KVMI tool, one per ${PACED_GAP_MS} ms (guest-timed)`, "f-raw", PACED_GAP_MS);
      await controller.session.setEventFilter("cr cr=3 -> notify as cr3");
      const before = controller.notifications;
      const stall = await guestEvents("filter.notify.stall", "CR3 write answered by a `notify` rule, back to back (guest-timed)", "f-bridge");
      // Every notification of the back-to-back loop arrives before the paced loop starts timing its own.
      await waitFor(async () => controller.notifications - before >= stall.completed, 5000, "the notifications").catch(() => {
        warnings.push(`notify back to back: ${stall.completed} writes, ${controller.notifications - before} notifications received`);
      });
      const received = controller.notifications;
      controller.latencies = [];
      const n = await guestEvents("filter.notify.paced", `CR3 write answered by a \`notify\` rule, one per ${PACED_GAP_MS} ms (guest-timed)`, "f-bridge", PACED_GAP_MS);
      await waitFor(async () => controller.notifications - received >= n.completed, 5000, "the notifications").catch(() => {
        warnings.push(`notify: ${n.completed} writes, ${controller.notifications - received} notifications received`);
      });
      results.latency("filter.notify.latency", `guest's CR3 write → notification in the controller's events() loop, one per ${PACED_GAP_MS} ms`, Float64Array.from(controller.latencies));
      controller.latencies = undefined;
      await controller.session.setEventFilter("");
      // (c) the mixed workload, and the same guests with nothing intercepted.
      const m = await syscalls("filter.mixed", [...mixed, "mix-deliver"]);
      counted += mixed.reduce((a, k) => a + (m.completed[k] ?? 0), 0);
      results.rate("filter.mixed.count.vm", "guest syscalls/s of one VM traced with `count` rules", "events/s", (mixed.reduce((a, k) => a + (m.completed[k] ?? 0), 0) * 1000) / m.elapsedMs / mixed.length);
      results.rate("filter.mixed.deliver.vm", "guest syscalls/s of the VM traced with `deliver`", "events/s", ((m.completed["mix-deliver"] ?? 0) * 1000) / m.elapsedMs);
      await syscalls("filter.plain", plain);
    }
    results.recording = false;
    if (settings.profileDir !== undefined) {
      progress("filters: profiled run");
      const children = { bridge: bridgeChild, emulator };
      await controller.session.setEventFilter("cr cr=3 -> reply as cr3");
      await profiled(settings.profileDir, "filter-reply", children, () => guestEvents("filter.reply.event", "", "f-bridge"));
      await controller.session.setEventFilter("cr cr=3 -> notify as cr3");
      await profiled(settings.profileDir, "filter-notify", children, () => guestEvents("filter.notify.stall", "", "f-bridge"));
      await controller.session.setEventFilter("");
    }

    // The count tools' counters must hold every syscall their guests made, warm-up included.
    let matched = 0;
    for (const tool of tools.slice(0, mixed.length)) {
      const last = await tool.setEventFilter("");
      for (const rule of last?.rules ?? []) matched += Number(rule.matched);
    }
    if (matched !== counted) warnings.push(`count rules matched ${matched} syscalls, the guests made ${counted}`);
    progress(`filters: count rules matched ${matched} of ${counted} syscalls`);
    return report(results, cpu, warnings, { matched, counted });
  } finally {
    for (const close of closers) await close();
    rawServer?.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

function report(results: Results, cpu: CpuMeter, warnings: string[], check: { matched: number; counted: number }): FilterReport {
  const LAT = { op: "≤", ratio: 1.2 } as const;
  const comparisons = [
    compare(results, { metric: "Event answered by a `reply` rule, guest-side / raw KVMI event hop", bridge: "filter.reply.event", baseline: "filter.raw.event", target: LAT }),
    compare(results, { metric: `Event answered by a \`notify\` rule, guest-side stall (one per ${PACED_GAP_MS} ms) / raw KVMI event hop (one per ${PACED_GAP_MS} ms)`, bridge: "filter.notify.paced", baseline: "filter.raw.paced", target: LAT }),
    compare(results, { metric: `\`notify\` / \`reply\` rule, guest-side stall (one per ${PACED_GAP_MS} ms each)`, bridge: "filter.notify.paced", baseline: "filter.reply.paced", target: undefined }),
    compare(results, { metric: "Event answered by a `notify` rule, back to back, guest-side stall / raw KVMI event hop", bridge: "filter.notify.stall", baseline: "filter.raw.event", target: LAT }),
    compare(results, { metric: "`notify` / `reply` rule, back to back, guest-side stall", bridge: "filter.notify.stall", baseline: "filter.reply.event", target: undefined }),
    compare(results, { metric: "Event delivered to the controller (no rule), guest-side / raw KVMI event hop", bridge: "filter.deliver.event", baseline: "filter.raw.event", target: undefined }),
    compare(results, { metric: `\`notify\`: guest's write → notification in the controller's loop (one per ${PACED_GAP_MS} ms) / raw KVMI event hop (one per ${PACED_GAP_MS} ms)`, bridge: "filter.notify.latency", baseline: "filter.raw.paced", target: undefined }),
    compare(results, {
      metric: `Mixed: ${MIXED_COUNT_VMS} VMs traced with \`count\` + 1 with \`deliver\`, guest syscalls/s / same guests not intercepted`,
      bridge: "filter.mixed",
      baseline: "filter.plain",
      target: undefined,
    }),
    compare(results, { metric: "Mixed: one VM's syscalls/s traced with `deliver` / with `count`", bridge: "filter.mixed.deliver.vm", baseline: "filter.mixed.count.vm", target: undefined }),
  ];
  const ratio = (c: (typeof comparisons)[number]): string =>
    Number.isNaN(c.ratio) ? "n/a" : `${c.ratio.toFixed(2)}×${c.ratioRange && c.ratioRange[0] !== c.ratioRange[1] ? ` (${c.ratioRange[0].toFixed(2)}–${c.ratioRange[1].toFixed(2)})` : ""}`;
  const perOp = cpu.perOp();
  const fmt = (v: number | undefined): string => (v === undefined ? "" : v >= 100 ? v.toFixed(0) : v.toFixed(1));
  const lines = [
    "",
    "Event filters (docs/event-filters.md; emulator, bridge and this client each a process of their own; ratio: median of the per-run ratios):",
    renderTable(
      ["metric", "bridge", "baseline", "ratio", "target", "result"],
      comparisons.map((c) => [c.metric, formatFigure(c.bridge), formatFigure(c.baseline), ratio(c), c.target, Number.isNaN(c.ratio) ? "not run" : c.pass === undefined ? "info" : c.pass ? "PASS" : "FAIL"]),
    ),
    `Count rules matched ${check.matched} syscalls; the count-traced guests made ${check.counted}${check.matched === check.counted ? " (exact)" : " (MISMATCH)"}.`,
    "",
    "Event filters: CPU time per event (µs, all measured runs; client = the tools: SDK controllers and the raw KVMI tool):",
    renderTable(
      ["measurement", "bridge", "emulator", "client"],
      Object.entries(perOp).map(([id, e]) => [id, fmt(e.usPerOp["bridge"]), fmt(e.usPerOp["emulator"]), fmt(e.usPerOp["client"])]),
    ),
    ...(warnings.length > 0 ? ["", `Event-filter warnings (${warnings.length}):`, ...[...new Set(warnings)].slice(0, 10).map((w) => `  - ${w}`)] : []),
  ];
  return {
    lines,
    json: {
      comparisons: comparisons.map(({ bridge: _b, baseline: _l, ...c }) => ({ ...c, bridgeMedian: _b?.median, baselineMedian: _l?.median })),
      cpuPerOperation: perOp,
      countCheck: check,
      warnings,
    },
  };
}
