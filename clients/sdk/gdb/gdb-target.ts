// SPDX-License-Identifier: Apache-2.0
/**
 * What the GDB gateway debugs: one VM through a controller session, in gdb's all-stop model. A vCPU
 * is stopped while the gateway holds one of its events unanswered (PAUSE_VCPU, BREAKPOINT or
 * SINGLESTEP, kvmi-abi §3.5); resuming it is answering that event. Software breakpoints are INT3
 * bytes in guest physical memory with BREAKPOINT events enabled; resuming from one puts the
 * original byte back, single-steps the vCPU with KVMI single-step while the others stay stopped,
 * then writes the INT3 again (decision record 0060). Detach undoes everything the gateway did.
 * This file is the execution control (events, stops, resumes, detach); what is known about each
 * stopped vCPU is in held-vcpus.ts, keeping stops alive past the bridge's deadline in keep-alive.ts,
 * and the stop/resume vocabulary shared with the RSP session in stop-report.ts.
 *
 * @see ../../../docs/decisions/0060-gdb-breakpoints-through-kvmi.md
 */
import type { BridgeClient } from "../client.js";
import type { X86Regs } from "../command-types.js";
import { UnavailableError } from "../errors.js";
import type { KvmiBridgeError } from "../errors.js";
import type { SessionItem, VcpuEvent } from "../events.js";
import type { Session } from "../session.js";
import { BreakpointMemory } from "./breakpoint-memory.js";
import { HeldVcpus } from "./held-vcpus.js";
import { KeepAlive } from "./keep-alive.js";
import { GDB_SIGINT, GDB_SIGTRAP } from "./stop-report.js";
import type { ResumeAction, StopReport } from "./stop-report.js";
import type { RegisterSource } from "./x86-registers.js";

export { GDB_SIGINT, GDB_SIGTRAP } from "./stop-report.js";
export type { ResumeAction, StopReport } from "./stop-report.js";

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
  private readonly held: HeldVcpus;
  private readonly absent = new Set<number>();
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
  private readonly keepAlive: KeepAlive;

  private constructor(
    private readonly session: Session,
    readonly vcpuCount: number,
    private readonly log: (line: string) => void,
  ) {
    this.memory = new BreakpointMemory(session, vcpuCount, log);
    this.held = new HeldVcpus(session);
    // Before the pump starts: a session that ends at once stops the keep-alive's timer.
    this.keepAlive = new KeepAlive(
      {
        holds: this.held,
        canSwap: () => !this.running && !this.ended,
        pauseVcpu: (v) => this.pauseVcpuCounted(v),
        nextEvent: (v, accept) => this.nextEvent(v, accept),
        forgetEventWaiter: (v) => this.eventWaiters.delete(v),
        answerNeutral: (event) => this.answerNeutral(event),
        log,
      },
      session.eventDeadlineMs ?? 60_000,
    );
    this.pump = this.runPump();
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
    this.keepAlive.stop();
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
      this.held.hold(v, event);
      const report = this.stopReason(event);
      if (report !== undefined && report.signal === GDB_SIGTRAP) this.pendingStops.push(report);
      this.stopping.delete(v);
      if (this.stopping.size === 0) await this.finishStop();
      return;
    }
    if (!this.running || this.held.has(v)) {
      // A vCPU that was not started when the target stopped: keep it stopped too.
      if (!this.running && !this.held.has(v)) this.held.hold(v, event);
      else await this.answerNeutral(event);
      return;
    }
    const report = this.stopReason(event);
    if (report === undefined) return this.answerNeutral(event);
    this.held.hold(v, event);
    this.running = false;
    // Not awaited: the pump must go on reading to see the other vCPUs' PAUSE_VCPU events.
    void this.stopAll(report);
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
    const taken = this.held.take(v);
    if (taken === undefined) return;
    const { event, registers } = taken;
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
    const gpa = this.held.int3Gpa(v);
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
    this.held.hold(v, event);
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

  /** PAUSE_VCPU for the keep-alive, counted in flight like the others until its event arrives. */
  private async pauseVcpuCounted(v: number): Promise<void> {
    this.pausesInFlight.set(v, (this.pausesInFlight.get(v) ?? 0) + 1);
    try {
      await this.session.pauseVcpu(v);
    } catch (err) {
      this.pausesInFlight.set(v, Math.max(0, (this.pausesInFlight.get(v) ?? 0) - 1));
      throw err;
    }
  }

  /** Runs a gdb request once no keep-alive swap is in progress, and keeps the next one from starting meanwhile. */
  exclusive<T>(work: () => Promise<T>): Promise<T> {
    return this.keepAlive.exclusive(work);
  }

  // -------------------------------------------------------------------------------------------
  // Registers

  /** What `g`/`p` read for vCPU `v`: the held event's state (with gdb's pending writes), else GET_REGISTERS. */
  registers(v: number): Promise<RegisterSource> {
    return this.held.registers(v);
  }

  /** Sets the general purpose registers of stopped vCPU `v`; they reach the vCPU with the reply that resumes it. */
  setRegisters(v: number, regs: X86Regs): void {
    this.held.setRegisters(v, regs);
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
    this.keepAlive.stop();
    await this.keepAlive.settled();
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
    for (const v of this.held.vcpus()) await attempt(`resume vCPU ${v}`, () => this.release(v));
    this.eventWaiters.clear();
    if (!this.session.closed) await this.session.release({ keepChanges: clean }).catch(() => undefined);
  }
}
