// SPDX-License-Identifier: Apache-2.0
/**
 * trace: counts system calls per process at the kernel's syscall entry (`--symbol` picks another
 * kernel function, e.g. one syscall's `__x64_sys_getppid`; the profile gives its address). Two
 * methods:
 *
 * - `--method ept` (default): the entry's page loses its execute access and event-filter rules
 *   count each entry in the bridge, per process, answering it at once (trace-rules.ts). The guest
 *   never waits for this tool, and every vCPU is counted all the time. It needs execute
 *   restrictions (SET_PAGE_ACCESS without X), which kvmi-qemu's stock QEMU cannot give
 *   (docs/qemu-backend.md): use `--method int3` there.
 * - `--method int3`: DRAKVUF's breakpoint technique, where every syscall is an event this tool
 *   answers (the way to go when a tool must look at each call before the guest goes on): an INT3
 *   on the entry's first instruction, stepped over on every hit (kernel-breakpoint.ts); each hit
 *   is counted for the running process (its CR3 names the task). `--comm NAME` counts only that
 *   process's calls; `--follow` prints each counted call as it happens (a JSON line each with
 *   `--json`), before the summary.
 *
 * Ctrl-C, --duration or the unhook notice restore the guest and release. `--duration` counts from
 * the moment tracing is armed, not from the start: on a real guest behind kvmi-qemu the preparation
 * (profile, process list, translation) takes seconds of gdbstub round trips.
 *
 *   npx tsx clients/examples/trace.ts --target 127.0.0.1:50051 --vm demo-0 --duration 5000
 */
import type { BreakpointEvent, SessionItem } from "@kvmi/clients";
import { fail, integerOption, setup, stdout } from "./example-args.js";
import { openGuest, PROFILE_OPTION, TaskIndex } from "./guest-profile.js";
import { drain, KernelBreakpoint } from "./kernel-breakpoint.js";
import { addCount, hex, loop } from "./trace-common.js";
import type { ProcessCount, TraceOutcome, TraceTarget } from "./trace-common.js";
import { MAX_PROCESS_RULES, traceWithRules } from "./trace-rules.js";

const USAGE =
  "usage: trace.ts --vm <uuid|name> [--target host:port] [--duration ms] [--profile isf.json] [--symbol name] [--method ept|int3] [--max-rules n] [--comm name] [--follow] [--json]";

/** What `--method int3` adds: one process only, each call as it happens. */
interface Int3Options {
  readonly comm: string | undefined;
  readonly follow: boolean;
  readonly json: boolean;
  /** Starts the --duration timer: called once the INT3 is armed. */
  readonly armed: () => void;
}

async function main(): Promise<void> {
  const { client, vm, json, values } = await setup<{
    duration?: string;
    profile?: string;
    symbol?: string;
    method?: string;
    "max-rules"?: string;
    comm?: string;
    follow?: boolean;
  }>(USAGE, {
    duration: { type: "string" },
    symbol: { type: "string", default: "entry_SYSCALL_64" },
    method: { type: "string", default: "ept" },
    // How many processes get a counting rule; the others are named from notifications.
    "max-rules": { type: "string" },
    comm: { type: "string" },
    follow: { type: "boolean", default: false },
    ...PROFILE_OPTION,
  });
  const method = values.method ?? "ept";
  const maxRules = integerOption(values, "max-rules", USAGE) ?? MAX_PROCESS_RULES;
  if ((method !== "ept" && method !== "int3") || maxRules > MAX_PROCESS_RULES) {
    process.stderr.write(`--method is ept or int3; --max-rules at most ${MAX_PROCESS_RULES}\n${USAGE}\n`);
    process.exit(2);
  }
  if (method === "ept" && (values.comm !== undefined || values.follow === true)) {
    process.stderr.write(`--comm and --follow need --method int3 (rules count in the bridge, not here)\n${USAGE}\n`);
    process.exit(2);
  }
  const stop = new AbortController();
  for (const signal of ["SIGINT", "SIGTERM"] as const) process.once(signal, () => stop.abort());
  const duration = integerOption(values, "duration", USAGE);
  const startTimer = (): void => {
    if (duration !== undefined) setTimeout(() => stop.abort(), duration).unref();
  };

  const guest = await openGuest(client.vm(vm.uuid), values.profile);
  const symbol = values.symbol ?? "entry_SYSCALL_64";
  const entryGva = guest.profile.requireSymbol(symbol);
  const tasks = new TaskIndex(await guest.processes());
  const session = await client.attach(vm.uuid, { role: "controller" });
  try {
    // Breakpoints and page access work on guest-physical memory: the kernel image is shared by every address space.
    const entryGpa = await session.translate(0, entryGva);
    if (entryGpa === undefined) throw new Error(`${symbol} is not mapped`);
    const vcpus = Array.from({ length: session.vm.vcpuCount }, (_, i) => i);
    const target: TraceTarget = { session, guest, tasks, vcpus, symbol, entryGva, entryGpa, signal: stop.signal };
    if (method === "ept") {
      startTimer();
      report(await traceWithRules(target, maxRules), json);
    } else {
      report(await traceWithInt3(target, { comm: values.comm, follow: values.follow === true, json, armed: startTimer }), json);
    }
  } finally {
    await session.release();
    client.close();
  }
}

/** `--method int3`: a breakpoint at the entry, each hit delivered to this tool and stepped over. */
async function traceWithInt3(target: TraceTarget, options: Int3Options): Promise<TraceOutcome> {
  const { session, guest, tasks, symbol, entryGva } = target;
  const counts = new Map<number, ProcessCount>();
  let started = 0;

  const count = async (item: BreakpointEvent): Promise<void> => {
    // Identify the process by its page tables; fall back to the per-CPU `current_task`.
    const task = tasks.byPageTable(item.arch.sregs.cr3) ?? (await guest.currentProcess(item.vcpu));
    if (options.comm !== undefined && task.comm !== options.comm) return;
    if (options.follow) follow(item.vcpu, task.pid, task.comm, (performance.now() - started) / 1000, options.json);
    addCount(counts, task);
  };
  const breakpoint = await KernelBreakpoint.at(session, entryGva, count);
  const handle = (item: SessionItem): Promise<void> => breakpoint.handle(item);

  try {
    started = performance.now();
    await breakpoint.arm();
    // The duration is the tracing time (see the header): its timer starts once the INT3 is armed.
    options.armed();
    process.stderr.write(`armed: INT3 at ${symbol} (gva ${hex(entryGva)}, gpa ${hex(breakpoint.gpa)}), original byte 0x${breakpoint.original[0]!.toString(16)}\n`);
    await loop(session, target.signal, handle);
  } finally {
    await breakpoint.disarm();
    // Events the kernel sent before the breakpoint went away still need their reply.
    await drain(session, handle);
    const back = await session.readPhysical(breakpoint.gpa, 1);
    process.stderr.write(`disarmed: entry byte is 0x${back[0]!.toString(16)} (${back[0] === breakpoint.original[0] ? "restored" : "NOT restored"})\n`);
  }
  return { counts, seconds: (performance.now() - started) / 1000, figures: {} };
}

/** One counted call, as it happens (`--follow`). */
function follow(vcpu: number, pid: number, comm: string, seconds: number, json: boolean): void {
  if (json) stdout.write(`${JSON.stringify({ t: Number(seconds.toFixed(3)), vcpu, pid, comm })}\n`);
  else stdout.write(`${seconds.toFixed(3).padStart(9)}  vcpu ${vcpu}  ${pid} (${comm})\n`);
}

function report({ counts, seconds, figures }: TraceOutcome, json: boolean): void {
  const rows = [...counts.values()].sort((a, b) => b.count - a.count || a.pid - b.pid);
  const total = rows.reduce((n, r) => n + r.count, 0) + (figures["unattributed"] ?? 0);
  if (json) {
    const syscalls = Object.fromEntries(rows.map((r) => [r.pid, r.count]));
    stdout.write(`${JSON.stringify({ syscalls, total, seconds: Number(seconds.toFixed(3)), ...figures })}\n`);
    return;
  }
  stdout.write(`${"PID".padStart(6)}  ${"COMM".padEnd(16)}  ${"SYSCALLS".padStart(8)}\n`);
  for (const r of rows) stdout.write(`${String(r.pid).padStart(6)}  ${r.comm.padEnd(16)}  ${String(r.count).padStart(8)}\n`);
  if ((figures["unattributed"] ?? 0) > 0) stdout.write(`${"?".padStart(6)}  ${"(unknown)".padEnd(16)}  ${String(figures["unattributed"]).padStart(8)}\n`);
  const where = figures["inBridge"] === undefined ? "" : ` (${figures["inBridge"]} counted in the bridge, ${figures["notified"]} notified)`;
  stdout.write(`total: ${total} syscalls in ${seconds.toFixed(2)} s${where}\n`);
}

main().catch(fail);
