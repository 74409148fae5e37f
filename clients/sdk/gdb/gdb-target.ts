// SPDX-License-Identifier: Apache-2.0
/**
 * What the GDB gateway debugs: one VM through a controller session, in gdb's all-stop model. A vCPU
 * is stopped while the gateway holds one of its events unanswered (PAUSE_VCPU, BREAKPOINT or
 * SINGLESTEP, kvmi-abi §3.5); resuming it is answering that event. Software breakpoints are INT3
 * bytes in guest physical memory with BREAKPOINT events enabled; resuming from one puts the
 * original byte back, single-steps the vCPU with KVMI single-step while the others stay stopped,
 * then writes the INT3 again (decision record 0060). Detach undoes everything the gateway did.
 *
 * @see ../../../docs/decisions/0060-gdb-breakpoints-through-kvmi.md
 */
import type { BridgeClient } from "../client.js";
import type { X86Regs } from "../commands.js";
import { UnavailableError } from "../errors.js";
import type { KvmiBridgeError } from "../errors.js";
import type { SessionItem, VcpuEvent } from "../events.js";
import type { Session } from "../session.js";
import { BreakpointMemory } from "./breakpoint-memory.js";
import type { RegisterSource } from "./x86-registers.js";

/** Signal numbers gdb expects in stop replies (gdb's own numbering, equal to Linux's for these). */
export const GDB_SIGINT = 2;
export const GDB_SIGTRAP = 5;

/** Why the target stopped. `thread` is a vCPU index. */
export interface StopReport {
  readonly thread: number;
  readonly signal: number;
  /** The vCPU executed one of the gateway's INT3s; RIP is already at the breakpoint. */
  readonly swbreak?: boolean;
}

/** What to do with a vCPU on resume. */
export type ResumeAction = "continue" | "step";

/** Options of {@link GdbTarget.attach}. */
export interface GdbTargetOptions {
  /** How long the bridge lets the gateway hold an event (10..60000 ms); the longest by default. */
  readonly eventDeadlineMs?: number;
  /** Diagnostic lines (stop reasons, cleanup problems). */
  readonly log?: (line: string) => void;
}

/** The VM as gdb sees it. Not reentrant: the RSP server runs one request at a time. */
export class GdbTarget {
  /** Guest memory as gdb reads and writes it, with the gateway's breakpoints. */
  readonly memory: BreakpointMemory;
  private readonly held = new Map<number, VcpuEvent>();
  /** When each held event was taken (for the keep-alive). */
  private readonly heldAt = new Map<number, number>();
  /** vCPUs whose BREAKPOINT event the keep-alive swapped for a PAUSE_VCPU one: the INT3's GPA. */
  private readonly rearmedAtBreakpoint = new Map<number, bigint>();
  private readonly absent = new Set<number>();
  private readonly regsOverride = new Map<number, X86Regs>();
  private readonly xsave = new Map<number, Uint8Array | undefined>();
  private readonly singlestepOn = new Set<number>();
  private readonly stepping = new Set<number>();
  private readonly pausesInFlight = new Map<number, number>();
  private readonly eventWaiters = new Map<number, (event: VcpuEvent) => boolean>();
  private pendingStops: StopReport[] = [];
  private stopping: Set<number> | undefined;
  private stopReport: StopReport | undefined;
  private stopWaiter: { promise: Promise<StopReport>; resolve(r: StopReport): void; reject(e: Error): void } | undefined;
  private running = false;
  private interruptRequested = false;
  private detaching = false;
  private endError: Error | undefined;
  private readonly pump: Promise<void>;
  private readonly keepAliveTimer: NodeJS.Timeout;
  private rearming: Promise<void> | undefined;
  private busy = 0;

  private constructor(
    private readonly session: Session,
    readonly vcpuCount: number,
    private readonly log: (line: string) => void,
  ) {
    this.memory = new BreakpointMemory(session, vcpuCount, log);
    this.pump = this.runPump();
    const deadlineMs = session.eventDeadlineMs ?? 60_000;
    this.keepAliveTimer = setInterval(() => this.keepAlive(deadlineMs), Math.max(5, Math.min(1000, deadlineMs / 4)));
    this.keepAliveTimer.unref();
  }

  /** Attaches as controller and stops every vCPU; resolves when they are all stopped. */
  static async attach(client: BridgeClient, vm: string, options: GdbTargetOptions = {}): Promise<GdbTarget> {
    const session = await client.attach(vm, { role: "controller", eventDeadlineMs: options.eventDeadlineMs ?? 60_000 });
    const target = new GdbTarget(session, session.vm.vcpuCount, options.log ?? (() => undefined));
    try {
      await target.stopAll({ thread: 0, signal: GDB_SIGTRAP });
    } catch (err) {
      await session.release().catch(() => undefined);
      throw err;
    }
    return target;
  }

  /** The VM's UUID. */
  get vmUuid(): string {
    return this.session.uuid;
  }

  /** Why the target last stopped. */
  get lastStop(): StopReport {
    return this.stopReport ?? { thread: 0, signal: GDB_SIGTRAP };
  }

  /** True once the session ended (VM unhooked, bridge gone) or the gateway detached. */
  get ended(): boolean {
    return this.endError !== undefined || this.detaching;
  }

  // -------------------------------------------------------------------------------------------
  // Events

  private async runPump(): Promise<void> {
    try {
      for await (const item of this.session.events()) await this.onItem(item);
      this.end(new Error("the bridge ended the session"));
    } catch (err) {
      this.end(err as Error);
    }
  }

  private end(err: Error): void {
    clearInterval(this.keepAliveTimer);
    this.endError ??= err;
    this.stopWaiter?.reject(err);
    this.stopWaiter = undefined;
  }

  private async onItem(item: SessionItem): Promise<void> {
    if (item.kind === "unhook") {
      this.log(`the bridge is unhooking the VM (${item.reason}); detaching`);
      await this.detach().catch(() => undefined);
      this.end(new Error(`the VM was unhooked (${item.reason})`));
      return;
    }
    if (item.kind === "replyRejected") this.log(`the bridge rejected the reply to event ${item.seq} of vCPU ${item.vcpu}: ${item.error.message}`);
    if (item.kind !== "event") return;
    const event = item;
    const v = event.vcpu;
    this.absent.delete(v);
    if (event.type === "pauseVcpu") this.pausesInFlight.set(v, Math.max(0, (this.pausesInFlight.get(v) ?? 0) - 1));
    if (this.detaching) return this.answerNeutral(event);
    const waiter = this.eventWaiters.get(v);
    if (waiter !== undefined) {
      if (!waiter(event)) await this.answerNeutral(event);
      return;
    }
    if (this.stopping?.has(v)) {
      this.hold(v, event);
      const report = this.stopReason(event);
      if (report !== undefined && report.signal === GDB_SIGTRAP) this.pendingStops.push(report);
      this.stopping.delete(v);
      if (this.stopping.size === 0) await this.finishStop();
      return;
    }
    if (!this.running || this.held.has(v)) {
      // A vCPU that was not started when the target stopped: keep it stopped too.
      if (!this.running && !this.held.has(v)) this.hold(v, event);
      else await this.answerNeutral(event);
      return;
    }
    const report = this.stopReason(event);
    if (report === undefined) return this.answerNeutral(event);
    this.hold(v, event);
    this.running = false;
    // Not awaited: the pump must go on reading to see the other vCPUs' PAUSE_VCPU events.
    void this.stopAll(report);
  }

  private hold(v: number, event: VcpuEvent): void {
    this.held.set(v, event);
    this.heldAt.set(v, performance.now());
  }

  /** The stop an event means while running, or `undefined` for an event gdb need not see. */
  private stopReason(event: VcpuEvent): StopReport | undefined {
    const thread = event.vcpu;
    if (event.type === "breakpoint" && this.memory.isBreakpoint(event.gpa)) return { thread, signal: GDB_SIGTRAP, swbreak: true };
    if (event.type === "singleStep" && this.stepping.has(thread)) return { thread, signal: GDB_SIGTRAP };
    if (event.type === "pauseVcpu" && this.interruptRequested) return { thread, signal: GDB_SIGINT };
    return undefined;
  }

  /** Lets the guest carry on as if nobody watched: an INT3 of ours (or one we removed) re-executes, the guest's own is re-injected. */
  private async answerNeutral(event: VcpuEvent, registers?: X86Regs): Promise<void> {
    try {
      const options = registers === undefined ? {} : { registers };
      if (event.type === "breakpoint" && this.memory.isOrWasBreakpoint(event.gpa)) await event.retry(options);
      else if (event.type === "cr" || event.type === "msr") await event.continue();
      else await event.continue(options);
    } catch (err) {
      this.log(`could not answer ${event.type} event of vCPU ${event.vcpu}: ${(err as Error).message}`);
    }
  }

  /** Pauses every vCPU that is not stopped yet and resolves with `report` once all are. */
  private stopAll(report: StopReport): Promise<StopReport> {
    this.stopReport = report;
    const stopping = new Set<number>();
    for (let v = 0; v < this.vcpuCount; v++) if (!this.held.has(v)) stopping.add(v);
    this.stopping = stopping;
    const done = this.waitStop();
    if (stopping.size === 0) void this.finishStop();
    for (const v of [...stopping]) {
      if ((this.pausesInFlight.get(v) ?? 0) > 0) continue;
      this.pausesInFlight.set(v, (this.pausesInFlight.get(v) ?? 0) + 1);
      this.session.pauseVcpu(v).catch(async (err: KvmiBridgeError) => {
        this.pausesInFlight.set(v, Math.max(0, (this.pausesInFlight.get(v) ?? 0) - 1));
        // KVM_EAGAIN: the guest has not started this vCPU; it runs nothing that could need stopping.
        if (!(err instanceof UnavailableError)) this.log(`could not pause vCPU ${v}: ${err.message}`);
        this.absent.add(v);
        if (this.stopping?.delete(v) && this.stopping.size === 0) await this.finishStop();
      });
    }
    return done;
  }

  /** The next stop; every caller until then gets the same promise. */
  private waitStop(): Promise<StopReport> {
    if (this.endError !== undefined) return Promise.reject(this.endError);
    if (this.stopWaiter === undefined) {
      let resolve!: (r: StopReport) => void;
      let reject!: (e: Error) => void;
      const promise = new Promise<StopReport>((res, rej) => ((resolve = res), (reject = rej)));
      promise.catch(() => undefined);
      this.stopWaiter = { promise, resolve, reject };
    }
    return this.stopWaiter.promise;
  }

  private async finishStop(): Promise<void> {
    this.stopping = undefined;
    this.running = false;
    for (const v of this.stepping) await this.setSinglestep(v, false);
    this.stepping.clear();
    const report = this.stopReport!;
    this.pendingStops = this.pendingStops.filter((p) => p.thread !== report.thread);
    const waiter = this.stopWaiter;
    this.stopWaiter = undefined;
    waiter?.resolve(report);
  }

  private async setSinglestep(v: number, enable: boolean): Promise<void> {
    if (enable === this.singlestepOn.has(v)) return;
    await this.session.controlSingleStep(v, enable);
    if (enable) this.singlestepOn.add(v);
    else this.singlestepOn.delete(v);
  }

  /** Answers vCPU `v`'s held event: it runs again. */
  private async release(v: number): Promise<void> {
    const event = this.held.get(v);
    if (event === undefined) return;
    this.held.delete(v);
    this.heldAt.delete(v);
    this.rearmedAtBreakpoint.delete(v);
    this.xsave.delete(v);
    const registers = this.regsOverride.get(v);
    this.regsOverride.delete(v);
    // A held INT3 (ours, or one gdb removed meanwhile) is executed again, never re-injected into the guest.
    if (event.type === "breakpoint") await event.retry(registers === undefined ? {} : { registers });
    else await this.answerNeutral(event, registers);
  }

  /** Resolves with the next event of vCPU `v` that `accept` takes; the others are answered neutrally. */
  private nextEvent(v: number, accept: (event: VcpuEvent) => boolean): Promise<VcpuEvent> {
    return new Promise((resolve) => {
      this.eventWaiters.set(v, (event) => {
        if (!accept(event)) return false;
        this.eventWaiters.delete(v);
        resolve(event);
        return true;
      });
    });
  }

  // -------------------------------------------------------------------------------------------
  // Execution control

  /**
   * Resumes vCPUs (those not in `actions` stay stopped) and resolves when the target stops again:
   * a breakpoint, a finished step, or {@link interrupt}.
   * @throws Error when the session ends meanwhile.
   */
  async resume(actions: ReadonlyMap<number, ResumeAction>): Promise<StopReport> {
    if (this.endError !== undefined) throw this.endError;
    this.interruptRequested = false;
    // A breakpoint another vCPU hit while the target stopped is reported before anything runs.
    const pending = this.pendingStops.find((p) => actions.has(p.thread) && this.isAtBreakpoint(p.thread));
    this.pendingStops = [];
    if (pending !== undefined) return (this.stopReport = pending);
    for (const [v, action] of actions) {
      if (!this.isAtBreakpoint(v)) continue;
      const report = await this.stepOverBreakpoint(v, action);
      if (report !== undefined) return (this.stopReport = report);
    }
    for (const [v, action] of actions) {
      if (action === "step" && this.held.has(v)) {
        await this.setSinglestep(v, true);
        this.stepping.add(v);
      }
    }
    this.running = true;
    const stopped = this.waitStop();
    for (const v of actions.keys()) await this.release(v);
    if (actions.size === 0 || [...actions.keys()].every((v) => this.absent.has(v))) await this.stopAll(this.lastStop);
    return stopped;
  }

  /** The GPA of the gateway's INT3 that vCPU `v` is stopped on, if any. */
  private breakpointUnder(v: number): bigint | undefined {
    const event = this.held.get(v);
    const gpa = event?.type === "breakpoint" ? event.gpa : this.rearmedAtBreakpoint.get(v);
    return gpa !== undefined && this.memory.isBreakpoint(gpa) ? gpa : undefined;
  }

  private isAtBreakpoint(v: number): boolean {
    return this.breakpointUnder(v) !== undefined;
  }

  /**
   * Executes the instruction under a breakpoint on vCPU `v` alone: original byte back, KVMI
   * single-step, RETRY, wait for the SINGLESTEP event, INT3 again. Returns the stop for a step.
   */
  private async stepOverBreakpoint(v: number, action: ResumeAction): Promise<StopReport | undefined> {
    const gpa = this.breakpointUnder(v)!;
    await this.memory.lift(gpa);
    await this.setSinglestep(v, true);
    const stepped = this.nextEvent(v, (e) => e.type === "singleStep");
    await this.release(v);
    const event = await stepped;
    await this.memory.rearm(gpa);
    await this.setSinglestep(v, false);
    this.hold(v, event);
    return action === "step" ? { thread: v, signal: GDB_SIGTRAP } : undefined;
  }

  /** Ctrl-C: pauses every running vCPU; the pending {@link resume} resolves with SIGINT. */
  interrupt(): void {
    if (!this.running || this.interruptRequested || this.ended) return;
    this.interruptRequested = true;
    for (let v = 0; v < this.vcpuCount; v++) {
      if (this.held.has(v) || (this.pausesInFlight.get(v) ?? 0) > 0) continue;
      this.pausesInFlight.set(v, (this.pausesInFlight.get(v) ?? 0) + 1);
      this.session.pauseVcpu(v).catch(() => {
        this.pausesInFlight.set(v, Math.max(0, (this.pausesInFlight.get(v) ?? 0) - 1));
        this.absent.add(v);
      });
    }
  }

  /**
   * The bridge answers an event itself once the controller's deadline passes (at most 60 s), which
   * would let a vCPU gdb believes stopped run on. Before that, each held event is swapped for a
   * fresh one at the same place: PAUSE_VCPU is requested first, so the reply re-enters the guest
   * only to stop at once, before any guest instruction (kvmi-abi §3.5: pause requests are served
   * before entry); an INT3 is answered with RETRY, never re-injected.
   */
  private keepAlive(deadlineMs: number): void {
    if (this.running || this.busy > 0 || this.rearming !== undefined || this.ended) return;
    const now = performance.now();
    const due = [...this.heldAt].filter(([, at]) => now - at >= deadlineMs / 2).map(([v]) => v);
    if (due.length === 0) return;
    this.rearming = (async () => {
      for (const v of due) await this.rearm(v).catch((err: Error) => this.log(`keep-alive of vCPU ${v}: ${err.message}`));
    })().finally(() => (this.rearming = undefined));
  }

  private async rearm(v: number): Promise<void> {
    const event = this.held.get(v);
    if (event === undefined) return;
    this.pausesInFlight.set(v, (this.pausesInFlight.get(v) ?? 0) + 1);
    try {
      await this.session.pauseVcpu(v);
    } catch (err) {
      this.pausesInFlight.set(v, Math.max(0, (this.pausesInFlight.get(v) ?? 0) - 1));
      throw err;
    }
    const paused = this.nextEvent(v, (e) => e.type === "pauseVcpu");
    const atBreakpoint = event.type === "breakpoint" ? event.gpa : this.rearmedAtBreakpoint.get(v);
    this.held.delete(v);
    if (event.type === "breakpoint") await event.retry();
    else await this.answerNeutral(event);
    const next = await withTimeout(paused, REARM_TIMEOUT_MS);
    if (next === undefined) {
      // The vCPU did not stop again (the VM is going away): it runs; the next stop pauses it with the others.
      this.eventWaiters.delete(v);
      this.log(`vCPU ${v} did not stop again within ${REARM_TIMEOUT_MS} ms`);
      return;
    }
    this.hold(v, next);
    if (atBreakpoint !== undefined) this.rearmedAtBreakpoint.set(v, atBreakpoint);
  }

  /** Runs a gdb request once no keep-alive swap is in progress, and keeps the next one from starting meanwhile. */
  async exclusive<T>(work: () => Promise<T>): Promise<T> {
    while (this.rearming !== undefined) await this.rearming;
    this.busy++;
    try {
      return await work();
    } finally {
      this.busy--;
    }
  }

  // -------------------------------------------------------------------------------------------
  // Registers

  /** What `g`/`p` read for vCPU `v`: the held event's state (with gdb's pending writes), else GET_REGISTERS. */
  async registers(v: number): Promise<RegisterSource> {
    const event = this.held.get(v);
    if (!this.xsave.has(v)) this.xsave.set(v, await this.session.getXsave(v).catch(() => undefined));
    const xsave = this.xsave.get(v);
    if (event !== undefined) {
      return { regs: this.regsOverride.get(v) ?? event.arch.regs, sregs: event.arch.sregs, kernelGsBase: event.arch.msrs.shadowGs, xsave };
    }
    try {
      const r = await this.session.getRegisters(v, { msrs: [MSR_KERNEL_GS_BASE] });
      return { regs: r.regs, sregs: r.sregs, kernelGsBase: r.msrs.get(MSR_KERNEL_GS_BASE) ?? 0n, xsave };
    } catch {
      return { regs: ZERO_REGS, sregs: undefined, kernelGsBase: 0n, xsave: undefined };
    }
  }

  /** Sets the general purpose registers of stopped vCPU `v`; they reach the vCPU with the reply that resumes it. */
  setRegisters(v: number, regs: X86Regs): void {
    if (!this.held.has(v)) throw new Error(`vCPU ${v} is not stopped in an event; its registers cannot be set`);
    this.regsOverride.set(v, regs);
  }

  // -------------------------------------------------------------------------------------------
  // The end

  /**
   * Undoes everything (INT3s, BREAKPOINT events, single-step), lets every vCPU run, and releases
   * the session. Guest memory gdb wrote stays written when the undo succeeded; otherwise the bridge
   * undoes every change of the session (its hook ledger).
   */
  async detach(): Promise<void> {
    if (this.detaching) return this.pump.then(() => undefined);
    this.detaching = true;
    clearInterval(this.keepAliveTimer);
    while (this.rearming !== undefined) await this.rearming;
    this.running = false;
    let clean = true;
    const attempt = async (what: string, run: () => Promise<unknown>): Promise<void> => {
      try {
        await run();
      } catch (err) {
        clean = false;
        this.log(`detach: could not ${what}: ${(err as Error).message}`);
      }
    };
    await this.memory.removeAll(attempt);
    for (const v of [...this.singlestepOn]) await attempt(`stop single-stepping vCPU ${v}`, () => this.setSinglestep(v, false));
    for (const v of [...this.held.keys()]) await attempt(`resume vCPU ${v}`, () => this.release(v));
    this.eventWaiters.clear();
    if (!this.session.closed) await this.session.release({ keepChanges: clean }).catch(() => undefined);
  }
}

const MSR_KERNEL_GS_BASE = 0xc0000102;
/** How long a keep-alive waits for the fresh PAUSE_VCPU event. */
const REARM_TIMEOUT_MS = 10_000;

/** `promise`'s value, or `undefined` after `ms`. */
function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), ms)));
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
const ZERO_REGS: X86Regs = {
  rax: 0n, rbx: 0n, rcx: 0n, rdx: 0n, rsi: 0n, rdi: 0n, rsp: 0n, rbp: 0n, r8: 0n, r9: 0n, r10: 0n, r11: 0n,
  r12: 0n, r13: 0n, r14: 0n, r15: 0n, rip: 0n, rflags: 0n,
};
