// SPDX-License-Identifier: Apache-2.0
/**
 * cr3-monitor: a process-switch timeline from CR3 writes. Every scheduler switch loads the next
 * process's page tables into CR3; with CR3 interception on (KVMI_VCPU_CONTROL_CR + the CR event)
 * each write arrives as an event holding the old and the new value, which the task list maps to
 * processes. The tool lets every write through unchanged, so it asks the bridge to do that itself:
 * a `notify` filter rule (docs/event-filters.md) answers each CR3 write at once next to the guest
 * and sends the event on as a notification, so the vCPU never waits for the network.
 *
 * A VM without the CR event (a stock QEMU behind kvmi-qemu: the gdbstub cannot intercept CR writes,
 * docs/qemu-backend.md) is followed one step earlier instead: an INT3 on the kernel's
 * `switch_mm_irqs_off(prev, next, tsk)` (kernel-breakpoint.ts), the function that loads CR3 on a
 * switch to another address space. At its entry CR3 still holds the old root and `next` (RSI, the
 * second argument of the x86-64 calling convention) points at the mm_struct whose `pgd` becomes the
 * new one. Calls that keep the root (a thread of the same process, or a process coming back to the
 * CPU whose idle time kept its page tables loaded, "lazy TLB") are skipped: they are not process
 * switches (the kernel reloads CR3 there only to flush the TLB). `tsk` (RDX) names the next task,
 * which is how a process started after the task list was read is still named. The profile gives the symbol and `mm_struct.pgd`, so nothing here is kernel-specific.
 *
 * `--duration` counts from the moment monitoring starts (the preparation can take seconds on a real
 * guest behind kvmi-qemu).
 *
 *   npx tsx clients/examples/cr3-monitor.ts --target 127.0.0.1:50051 --vm demo-0 --duration 2000
 */
import { CancelledError, UnavailableError } from "@kvmi/clients";
import type { BreakpointEvent, LinuxGuest, LinuxProcess, Session, SessionItem } from "@kvmi/clients";
import { fail, integerOption, setup, stdout, stdoutClosed } from "./example-args.js";
import { openGuest, PROFILE_OPTION, TaskIndex } from "./guest-profile.js";
import { drain, KernelBreakpoint } from "./kernel-breakpoint.js";

const USAGE = "usage: cr3-monitor.ts --vm <uuid|name> [--target host:port] [--duration ms] [--count n] [--profile isf.json] [--json]";
/** The kernel function that writes CR3 on a switch of address space (arch/x86/mm/tlb.c). */
const SWITCH_MM = "switch_mm_irqs_off";
/** The page-table root in a CR3 value (PCID and flag bits dropped). */
const ROOT_MASK = 0x000ffffffffff000n;

/**
 * One switch on `vcpu` from one page-table root to another; `lookup` finds the processes the task
 * list does not know (started after it was read, or in the middle of an exec).
 */
type OnSwitch = (vcpu: number, time: Date, from: bigint, to: bigint, lookup?: { from(): Promise<LinuxProcess>; to(): Promise<LinuxProcess> }) => Promise<void>;

/** Where the switches come from: CR3 write events, or the breakpoint on the switch function. */
interface SwitchSource {
  readonly what: string;
  /** Turns one session item into a switch (or none), and answers it. */
  handle(item: SessionItem, onSwitch: OnSwitch): Promise<void>;
  stop(): Promise<void>;
}

async function main(): Promise<void> {
  const { client, vm, json, values } = await setup<{ duration?: string; count?: string; profile?: string }>(USAGE, {
    duration: { type: "string" },
    count: { type: "string" },
    ...PROFILE_OPTION,
  });
  const stop = new AbortController();
  // `cr3-monitor --json | head`: the reader's exit ends the monitor like Ctrl-C, releasing the session.
  stdoutClosed.addEventListener("abort", () => stop.abort(), { once: true });
  for (const signal of ["SIGINT", "SIGTERM"] as const) process.once(signal, () => stop.abort());
  const duration = integerOption(values, "duration", USAGE);
  const max = integerOption(values, "count", USAGE) ?? Infinity;

  const guest = await openGuest(client.vm(vm.uuid), values.profile);
  const tasks = new TaskIndex(await guest.processes());
  const session = await client.attach(vm.uuid, { role: "controller" });
  // Vm.events lists what the VM offers once hooked (empty while only announced).
  const source = session.vm.events.length > 0 && !session.vm.events.includes("CR") ? await switchBreakpoint(session, guest) : await crEvents(session);
  let switches = 0;

  const describe = async (root: bigint, fallback?: () => Promise<LinuxProcess>) => {
    const found = tasks.byPageTable(root) ?? (await fallback?.().catch(() => undefined));
    return { pid: found?.pid ?? null, comm: found?.comm ?? null, text: found ? `${found.pid} (${found.comm})` : `? (cr3 0x${root.toString(16)})` };
  };
  const onSwitch: OnSwitch = async (vcpu, time, from, to, lookup) => {
    if (switches >= max) return;
    const [f, t] = [await describe(from & ROOT_MASK, lookup?.from), await describe(to & ROOT_MASK, lookup?.to)];
    if (json) stdout.write(`${JSON.stringify({ time: time.toISOString(), vcpu, fromPid: f.pid, fromComm: f.comm, toPid: t.pid, toComm: t.comm, cr3: `0x${to.toString(16)}` })}\n`);
    else stdout.write(`${time.toISOString().padEnd(24)}  ${String(vcpu).padStart(4)}  ${f.text} -> ${t.text}\n`);
    switches++;
  };

  try {
    if (duration !== undefined) setTimeout(() => stop.abort(), duration).unref();
    process.stderr.write(`monitoring CR3 writes on ${session.vm.vcpuCount} vCPU(s) of ${vm.displayName} (${source.what})\n`);
    if (!json) stdout.write(`${"TIME".padEnd(24)}  VCPU  FROM -> TO\n`);
    for await (const item of session.events({ signal: stop.signal })) {
      if (item.kind === "unhook") break;
      await source.handle(item, onSwitch);
      if (switches >= max) break;
    }
  } catch (err) {
    if (!(stop.signal.aborted && err instanceof CancelledError)) throw err;
  } finally {
    await source.stop();
    // Release answers any event still pending with CONTINUE (a CR write keeps the guest's value).
    await session.release();
    client.close();
  }
  process.stderr.write(`${switches} switches\n`);
}

/** CR3 write events (KVMI_VCPU_CONTROL_CR): every write, let through unchanged. */
async function crEvents(session: Session): Promise<SwitchSource> {
  const vcpus = Array.from({ length: session.vm.vcpuCount }, (_, i) => i);
  // The bridge answers each CR3 write itself (the write goes through with the guest's value) and
  // sends the event on as a notification: the vCPU never waits for the network.
  await session.setEventFilter("cr cr=3 -> notify as cr3-switch");
  for (const v of vcpus) {
    try {
      await session.controlCr(v, 3, true);
      await session.controlVcpuEvents(v, "cr", true);
    } catch (err) {
      // KVM_EAGAIN: the guest has not started this vCPU yet.
      if (!(err instanceof UnavailableError)) throw err;
      process.stderr.write(`vCPU ${v} is not started yet; not monitored\n`);
    }
  }
  return {
    what: "CR3 write events",
    async handle(item, onSwitch) {
      if (item.kind !== "event") return;
      if (item.type === "cr" && item.cr === 3) await onSwitch(item.vcpu, item.receiveTime ?? new Date(), item.oldValue, item.newValue);
      // A notification was answered by the rule; anything else still waits for us (and goes on unchanged).
      if (item.notification === undefined) await item.continue();
    },
    async stop() {
      if (session.closed) return;
      for (const v of vcpus) {
        await session.controlVcpuEvents(v, "cr", false).catch(() => undefined);
        await session.controlCr(v, 3, false).catch(() => undefined);
      }
    },
  };
}

/** An INT3 on `switch_mm_irqs_off` (see the header): for a VM without CR events. */
async function switchBreakpoint(session: Session, guest: LinuxGuest): Promise<SwitchSource> {
  const entry = guest.symbol(SWITCH_MM);
  if (entry === undefined) throw new Error(`${session.vm.displayName} does not offer CR events and the profile has no ${SWITCH_MM} to break on instead`);
  const pgd = BigInt(guest.profile.offsetOf("mm_struct", "pgd"));
  let pending: OnSwitch | undefined;
  const onHit = async (event: BreakpointEvent): Promise<void> => {
    const { regs, sregs } = event.arch;
    // next->pgd is a direct-map address; its GPA is the root CR3 is about to hold.
    const root = await session.readVirtual(event.vcpu, regs.rsi + pgd, 8);
    const to = await session.translate(event.vcpu, new DataView(root.buffer, root.byteOffset, 8).getBigUint64(0, true));
    if (to === undefined || (to & ROOT_MASK) === (sregs.cr3 & ROOT_MASK)) return;
    // The current task is still the previous one; `tsk` is the next, or NULL when exec loads a new
    // mm into the current task (activate_mm).
    const current = () => guest.currentProcess(event.vcpu);
    const next = () => (regs.rdx === 0n ? current() : guest.readTask(regs.rdx));
    await pending?.(event.vcpu, event.receiveTime ?? new Date(), sregs.cr3, to, { from: current, to: next });
  };
  const breakpoint = await KernelBreakpoint.at(session, entry, onHit);
  await breakpoint.arm();
  return {
    what: `no CR events: INT3 at ${SWITCH_MM}`,
    async handle(item, onSwitch) {
      pending = onSwitch;
      await breakpoint.handle(item);
    },
    async stop() {
      pending = undefined;
      await breakpoint.disarm();
      // Hits the kernel sent before the INT3 went away still need their step-over reply.
      await drain(session, (item) => breakpoint.handle(item));
    },
  };
}

main().catch(fail);
