// SPDX-License-Identifier: Apache-2.0
/**
 * trace: counts system calls per process at the kernel's syscall entry (`--symbol` picks another
 * kernel function, e.g. one syscall's `__x64_sys_getppid`; the profile gives its address). Two
 * methods:
 *
 * - `--method ept` (default): the entry's page loses its execute access and event-filter rules
 *   count each entry in the bridge, per process, answering it at once (trace-rules.ts). The guest
 *   never waits for this tool, and every vCPU is counted all the time.
 * - `--method int3`: DRAKVUF's breakpoint technique, where every syscall is an event this tool
 *   answers (the way to go when a tool must look at each call before the guest goes on):
 *   1. write INT3 (0xCC) over the first byte of the entry, keeping the original byte;
 *   2. on each BREAKPOINT there: count it for the running process (its CR3 names the task), then
 *      step over: restore the original byte, single-step the vCPU, reply RETRY;
 *   3. on the SINGLESTEP that follows: put the INT3 back, stop single-stepping, reply CONTINUE;
 *   4. on exit (Ctrl-C, --duration) or on the unhook notice: restore the original byte and release.
 *   While one vCPU steps over the entry the INT3 is lifted, so a syscall that another vCPU enters
 *   in that window is not counted; production tracers pause the other vCPUs or use EPT views.
 *
 *   npx tsx clients/examples/trace.ts --target 127.0.0.1:50051 --vm demo-0 --duration 5000
 */
import { UnavailableError } from "@kvmi/clients";
import type { BreakpointEvent, Session, SessionItem } from "@kvmi/clients";
import { fail, integerOption, setup, stdout } from "./example-args.js";
import { openGuest, PROFILE_OPTION, TaskIndex } from "./guest-profile.js";
import { addCount, drain, hex, loop } from "./trace-common.js";
import type { ProcessCount, TraceOutcome, TraceTarget } from "./trace-common.js";
import { MAX_PROCESS_RULES, traceWithRules } from "./trace-rules.js";

const USAGE =
  "usage: trace.ts --vm <uuid|name> [--target host:port] [--duration ms] [--profile isf.json] [--symbol name] [--method ept|int3] [--max-rules n] [--json]";
const INT3 = Uint8Array.of(0xcc);

async function main(): Promise<void> {
  const { client, vm, json, values } = await setup<{ duration?: string; profile?: string; symbol?: string; method?: string; "max-rules"?: string }>(USAGE, {
    duration: { type: "string" },
    symbol: { type: "string", default: "entry_SYSCALL_64" },
    method: { type: "string", default: "ept" },
    // How many processes get a counting rule; the others are named from notifications.
    "max-rules": { type: "string" },
    ...PROFILE_OPTION,
  });
  const method = values.method ?? "ept";
  const maxRules = integerOption(values, "max-rules", USAGE) ?? MAX_PROCESS_RULES;
  if ((method !== "ept" && method !== "int3") || maxRules > MAX_PROCESS_RULES) {
    process.stderr.write(`--method is ept or int3; --max-rules at most ${MAX_PROCESS_RULES}\n${USAGE}\n`);
    process.exit(2);
  }
  const stop = new AbortController();
  for (const signal of ["SIGINT", "SIGTERM"] as const) process.once(signal, () => stop.abort());
  const duration = integerOption(values, "duration", USAGE);
  if (duration !== undefined) setTimeout(() => stop.abort(), duration).unref();

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
    report(method === "ept" ? await traceWithRules(target, maxRules) : await traceWithInt3(target), json);
  } finally {
    await session.release();
    client.close();
  }
}

/** `--method int3`: a breakpoint at the entry, each hit delivered to this tool and stepped over. */
async function traceWithInt3(target: TraceTarget): Promise<TraceOutcome> {
  const { session, guest, tasks, vcpus, symbol, entryGva, entryGpa } = target;
  const counts = new Map<number, ProcessCount>();
  const stepping = new Set<number>();
  let armed = false;
  let started = 0;
  const original = await session.readPhysical(entryGpa, 1);

  const count = async (item: BreakpointEvent): Promise<void> => {
    // Identify the process by its page tables; fall back to the per-CPU `current_task`.
    addCount(counts, tasks.byPageTable(item.arch.sregs.cr3) ?? (await guest.currentProcess(item.vcpu)));
  };

  const handle = async (item: SessionItem): Promise<void> => {
    if (item.kind !== "event") return;
    if (item.type === "breakpoint" && item.gpa === entryGpa) {
      await count(item);
      if (!armed) return item.retry(); // the original byte is back already: just re-execute it
      if (stepping.size === 0) await session.writePhysical(entryGpa, original);
      stepping.add(item.vcpu);
      await session.controlSingleStep(item.vcpu, true);
      return item.retry();
    }
    if (item.type === "singleStep" && stepping.delete(item.vcpu)) {
      await session.controlSingleStep(item.vcpu, false);
      if (armed && stepping.size === 0) await session.writePhysical(entryGpa, INT3);
      return item.continue();
    }
    // Anything else (a guest's own INT3, a pause) goes on unchanged: CONTINUE re-injects a foreign #BP.
    return item.continue();
  };

  try {
    await session.writePhysical(entryGpa, INT3);
    armed = true;
    for (const v of vcpus) {
      // KVM_EAGAIN (UnavailableError): the guest has not started this vCPU yet.
      await session.controlVcpuEvents(v, "breakpoint", true).catch((err: unknown) => {
        if (!(err instanceof UnavailableError)) throw err;
        process.stderr.write(`vCPU ${v} is not started yet; not traced\n`);
      });
    }
    started = performance.now();
    process.stderr.write(`armed: INT3 at ${symbol} (gva ${hex(entryGva)}, gpa ${hex(entryGpa)}), original byte 0x${original[0]!.toString(16)}\n`);
    await loop(session, target.signal, handle);
  } finally {
    armed = false;
    await disarm(session, vcpus, stepping, entryGpa, original);
    // Events the kernel sent before the breakpoint went away still need their reply.
    await drain(session, handle);
    const back = await session.readPhysical(entryGpa, 1);
    process.stderr.write(`disarmed: entry byte is 0x${back[0]!.toString(16)} (${back[0] === original[0] ? "restored" : "NOT restored"})\n`);
  }
  return { counts, seconds: (performance.now() - started) / 1000, figures: {} };
}

/** Stops the events and puts the original byte back. */
async function disarm(session: Session, vcpus: readonly number[], stepping: Set<number>, entryGpa: bigint, original: Uint8Array): Promise<void> {
  if (session.closed) return;
  for (const v of vcpus) await session.controlVcpuEvents(v, "breakpoint", false).catch(() => undefined);
  await session.writePhysical(entryGpa, original);
  for (const v of stepping) await session.controlSingleStep(v, false);
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
