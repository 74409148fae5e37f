// SPDX-License-Identifier: Apache-2.0
/**
 * trace: counts system calls per process with a breakpoint on the kernel's syscall entry, the way
 * DRAKVUF's syscall tracing works (`--symbol` picks another kernel function, e.g. one syscall's
 * `__x64_sys_getppid`; the profile gives its address): an INT3 on its first instruction, stepped
 * over on every hit (kernel-breakpoint.ts); each hit is counted for the running process (its CR3
 * names the task). Ctrl-C, --duration or the unhook notice restore the original byte and release.
 *
 * `--duration` counts from the moment the INT3 is armed, not from the start: on a real guest behind
 * kvmi-qemu the preparation (profile, process list, translation) takes seconds of gdbstub round
 * trips, and a timer started before it used to end the trace right after arming.
 * `--comm NAME` counts only that process's calls; `--follow` prints each counted call as it happens
 * (a JSON line each with `--json`), before the summary.
 *
 *   npx tsx clients/examples/trace.ts --target 127.0.0.1:50051 --vm demo-0 --duration 5000
 */
import { CancelledError } from "@kvmi/clients";
import type { BreakpointEvent, Session, SessionItem } from "@kvmi/clients";
import { fail, integerOption, setup, stdout } from "./example-args.js";
import { openGuest, PROFILE_OPTION, TaskIndex } from "./guest-profile.js";
import { drain, KernelBreakpoint } from "./kernel-breakpoint.js";

const USAGE = "usage: trace.ts --vm <uuid|name> [--target host:port] [--duration ms] [--profile isf.json] [--symbol name] [--comm name] [--follow] [--json]";

interface Counter {
  readonly pid: number;
  readonly comm: string;
  count: number;
}

async function main(): Promise<void> {
  const { client, vm, json, values } = await setup<{ duration?: string; profile?: string; symbol?: string; comm?: string; follow?: boolean }>(USAGE, {
    duration: { type: "string" },
    symbol: { type: "string", default: "entry_SYSCALL_64" },
    comm: { type: "string" },
    follow: { type: "boolean", default: false },
    ...PROFILE_OPTION,
  });
  const stop = new AbortController();
  for (const signal of ["SIGINT", "SIGTERM"] as const) process.once(signal, () => stop.abort());
  const duration = integerOption(values, "duration", USAGE);

  const guest = await openGuest(client.vm(vm.uuid), values.profile);
  const symbol = values.symbol ?? "entry_SYSCALL_64";
  const entryGva = guest.profile.requireSymbol(symbol);
  const tasks = new TaskIndex(await guest.processes());
  const session = await client.attach(vm.uuid, { role: "controller" });
  const counts = new Map<number, Counter>();
  let started = 0;

  const count = async (item: BreakpointEvent): Promise<void> => {
    const cr3 = item.arch.sregs.cr3;
    // Identify the process by its page tables; fall back to the per-CPU `current_task`.
    const task = tasks.byPageTable(cr3) ?? (await guest.currentProcess(item.vcpu));
    if (values.comm !== undefined && task.comm !== values.comm) return;
    if (values.follow) follow(item.vcpu, task.pid, task.comm, (performance.now() - started) / 1000, json);
    const entry = counts.get(task.pid) ?? { pid: task.pid, comm: task.comm, count: 0 };
    entry.count++;
    counts.set(task.pid, entry);
  };
  const breakpoint = await KernelBreakpoint.at(session, entryGva, count);
  const handle = (item: SessionItem): Promise<void> => breakpoint.handle(item);

  try {
    started = performance.now();
    await breakpoint.arm();
    // The duration is the tracing time (see the header): its timer starts once the INT3 is armed.
    if (duration !== undefined) setTimeout(() => stop.abort(), duration).unref();
    process.stderr.write(`armed: INT3 at ${symbol} (gva 0x${entryGva.toString(16)}, gpa 0x${breakpoint.gpa.toString(16)}), original byte 0x${breakpoint.original[0]!.toString(16)}\n`);
    await loop(session, stop.signal, handle);
  } finally {
    await breakpoint.disarm();
    // Events the kernel sent before the breakpoint went away still need their reply.
    await drain(session, handle);
    const back = await session.readPhysical(breakpoint.gpa, 1);
    process.stderr.write(`disarmed: entry byte is 0x${back[0]!.toString(16)} (${back[0] === breakpoint.original[0] ? "restored" : "NOT restored"})\n`);
    await session.release();
    client.close();
  }
  report(counts, (performance.now() - started) / 1000, json);
}

/** Handles items until `signal` fires or the unhook notice comes. */
async function loop(session: Session, signal: AbortSignal, handle: (item: SessionItem) => Promise<void>): Promise<void> {
  try {
    for await (const item of session.events({ signal })) {
      if (item.kind === "unhook") {
        process.stderr.write(`unhook notice (${item.reason}): cleaning up before ${item.deadline?.toISOString()}\n`);
        return;
      }
      await handle(item);
      if (signal.aborted) return;
    }
  } catch (err) {
    if (!(signal.aborted && err instanceof CancelledError)) throw err;
  }
}

/** One counted call, as it happens (`--follow`). */
function follow(vcpu: number, pid: number, comm: string, seconds: number, json: boolean): void {
  if (json) stdout.write(`${JSON.stringify({ t: Number(seconds.toFixed(3)), vcpu, pid, comm })}\n`);
  else stdout.write(`${seconds.toFixed(3).padStart(9)}  vcpu ${vcpu}  ${pid} (${comm})\n`);
}

function report(counts: Map<number, Counter>, seconds: number, json: boolean): void {
  const rows = [...counts.values()].sort((a, b) => b.count - a.count || a.pid - b.pid);
  const total = rows.reduce((n, r) => n + r.count, 0);
  if (json) {
    const syscalls = Object.fromEntries(rows.map((r) => [r.pid, r.count]));
    stdout.write(`${JSON.stringify({ syscalls, total, seconds: Number(seconds.toFixed(3)) })}\n`);
    return;
  }
  stdout.write(`${"PID".padStart(6)}  ${"COMM".padEnd(16)}  ${"SYSCALLS".padStart(8)}\n`);
  for (const r of rows) stdout.write(`${String(r.pid).padStart(6)}  ${r.comm.padEnd(16)}  ${String(r.count).padStart(8)}\n`);
  stdout.write(`total: ${total} syscalls in ${seconds.toFixed(2)} s\n`);
}

main().catch(fail);
