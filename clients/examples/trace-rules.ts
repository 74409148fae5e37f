// SPDX-License-Identifier: Apache-2.0
/**
 * trace's default method (`--method ept`): the bridge counts the syscalls itself, with event-filter
 * rules (docs/event-filters.md), and no syscall waits for the network.
 *
 * The entry's page loses its execute access (KVMI_VM_SET_PAGE_ACCESS), so every fetch there is a PF
 * event (an EPT violation, access X) whose GVA is the instruction's address and whose CR3 names the
 * process. Rules answer each one in the bridge with CONTINUE, which lets the kernel emulate the
 * instruction and the vCPU go on: no INT3, no step-over, and no window in which another vCPU's
 * syscall goes uncounted.
 *
 *     pf gva=ENTRY access=x %cr3&ROOT_MASK==ROOT -> count as pid-N    one per known process
 *     pf gva=ENTRY access=x -> notify as other                         anything else: sent on, so we name it
 *     pf gpa=PAGE-PAGE_END access=x -> reply as same-page              other code on that page
 *
 * The counters come back with the SetEventFilter that removes the rules, exact to the event.
 */
import { PAGE_ACCESS, UnavailableError } from "@kvmi/clients";
import type { LinuxProcess, SessionItem } from "@kvmi/clients";
import { PAGE_TABLE_ROOT_MASK, TaskIndex } from "./guest-profile.js";
import { drain } from "./kernel-breakpoint.js";
import { addCount, hex, loop } from "./trace-common.js";
import type { ProcessCount, TraceOutcome, TraceTarget } from "./trace-common.js";

/** A filter holds at most 256 rules; two are not per process. */
export const MAX_PROCESS_RULES = 254;

/** The rules of this method, in the compact syntax, and which process each `pid-N` rule counts. */
export function syscallRules(tasks: TaskIndex, entryGva: bigint, entryGpa: bigint, maxProcessRules: number): { text: string; byRule: Map<string, LinuxProcess> } {
  const entry = `pf gva=${hex(entryGva)} access=x`;
  const byRule = new Map<string, LinuxProcess>();
  const rules: string[] = [];
  for (const [root, task] of tasks.roots()) {
    if (byRule.size >= maxProcessRules) break;
    const name = `pid-${task.pid}`;
    byRule.set(name, task);
    rules.push(`${entry} %cr3&${hex(PAGE_TABLE_ROOT_MASK)}==${hex(root)} -> count as ${name}`);
  }
  const page = entryGpa & ~0xfffn;
  rules.push(`${entry} -> notify as other`, `pf gpa=${hex(page)}-${hex(page + 0xfffn)} access=x -> reply as same-page`);
  return { text: rules.join(" ; "), byRule };
}

/** Runs the trace until `target.signal` fires or the VM is unhooked. */
export async function traceWithRules(target: TraceTarget, maxProcessRules: number): Promise<TraceOutcome> {
  const { session, guest, vcpus, entryGpa } = target;
  const counts = new Map<number, ProcessCount>();
  const { text, byRule } = syscallRules(target.tasks, target.entryGva, entryGpa, maxProcessRules);
  let tasks = target.tasks;
  let notified = 0;
  let unattributed = 0;

  // A process the rules do not know (started since, or past the rule limit): name it by its CR3,
  // reading the task list again the first time a page-table root is new.
  const unknownRoots = new Set<bigint>();
  const handle = async (item: SessionItem): Promise<void> => {
    if (item.kind !== "event") return;
    if (item.notification === undefined) return item.continue(); // not ours: let it go on unchanged
    if (item.type !== "pageFault") return;
    notified++;
    const cr3 = item.arch.sregs.cr3;
    let task = tasks.byPageTable(cr3);
    if (task === undefined && !unknownRoots.has(cr3 & PAGE_TABLE_ROOT_MASK)) {
      tasks = new TaskIndex(await guest.processes());
      task = tasks.byPageTable(cr3);
      if (task === undefined) unknownRoots.add(cr3 & PAGE_TABLE_ROOT_MASK);
    }
    if (task === undefined) unattributed++;
    else addCount(counts, task);
  };

  // The rules are in place before the first PF can happen.
  await session.setEventFilter(text);
  for (const v of vcpus) {
    // KVM_EAGAIN (UnavailableError): the guest has not started this vCPU yet.
    await session.controlVcpuEvents(v, "pageFault", true).catch((err: unknown) => {
      if (!(err instanceof UnavailableError)) throw err;
      process.stderr.write(`vCPU ${v} is not started yet; not traced\n`);
    });
  }
  await session.setPageAccess([{ gpa: entryGpa, access: PAGE_ACCESS.R | PAGE_ACCESS.W }]);
  const started = performance.now();
  process.stderr.write(
    `armed: execute access removed from the page of ${target.symbol} (gva ${hex(target.entryGva)}, gpa ${hex(entryGpa)}); ${byRule.size} process(es) counted by rules in the bridge\n`,
  );
  let seconds = 0;
  let summary;
  try {
    await loop(session, target.signal, handle);
  } finally {
    if (!session.closed) {
      // The page executes freely again before the rules go, so every PF raised met a rule.
      await session.setPageAccess([{ gpa: entryGpa, access: PAGE_ACCESS.RWX }]);
      for (const v of vcpus) await session.controlVcpuEvents(v, "pageFault", false).catch(() => undefined);
      seconds = (performance.now() - started) / 1000;
      summary = await session.setEventFilter("");
      // The bridge sent every notification before its answer to SetEventFilter; take them in.
      await drain(session, handle);
    }
  }
  if (summary === undefined) throw new Error("the session ended before the rules' counters could be read");
  let inBridge = 0;
  for (const rule of summary.rules) {
    const task = byRule.get(rule.name);
    if (task === undefined) continue;
    addCount(counts, task, Number(rule.matched));
    inBridge += Number(rule.matched);
  }
  // Notifications the stream had no room for were answered all the same, but we never saw whose they were.
  unattributed += Number(summary.notificationsDropped);
  process.stderr.write(`disarmed: ${inBridge} syscall(s) counted in the bridge, ${notified} notified${unattributed > 0 ? `, ${unattributed} not attributed to a process` : ""}\n`);
  return { counts, seconds, figures: { inBridge, notified, unattributed } };
}
