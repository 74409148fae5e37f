// SPDX-License-Identifier: Apache-2.0
/**
 * Per-vCPU KVMI state of the emulated kernel (`struct kvm_vcpu_introspection`): the job queue
 * of vCPU commands, the event currently awaiting its reply, the enable masks, and the code that
 * turns guest exits into events (kvmi-abi §2.5, §3.3, §5).
 *
 * The vCPU "thread" is modelled by a mutex: entry work (jobs, TRAP, PAUSE_VCPU) and every event
 * hold it, so a vCPU never has two events outstanding (kvmi-abi §10). Jobs do not take it: the
 * kernel runs them while the vCPU is blocked waiting for a reply, and so do we.
 */
import type { Dialect, EventActionName, EventSpec } from "../../wire/dialect.js";
import { decodeEventReplyData, encodeEvent } from "../../wire/message.js";
import type { EventKind } from "../../wire/ops.js";
import type { GuestPort, KvmRegs, VcpuPort } from "./guest-port.js";

/** The reply a vCPU gets for its event; undefined when the tool went away (treated as CONTINUE). */
export interface EventOutcome {
  readonly action: EventActionName;
  readonly data: Record<string, unknown> | undefined;
}

/** What the per-VM state offers a vCPU (kept small so the two files stay decoupled). */
export interface VmIntrospectionContext {
  readonly dialect: Dialect;
  readonly guest: GuestPort;
  /** The spec of an event kind in the VM's dialect (docs/decisions/0010-dialect-model.md). */
  eventSpec(kind: EventKind): EventSpec;
  /** True while hooked and the socket is usable: otherwise no event is sent (kvmi-abi §2.8). */
  canSendEvents(): boolean;
  /** Pre-incremented per-VM event counter: the first event has seq 1 (kvmi-abi §3.1). */
  nextEventSeq(): number;
  /** One write per message; false when the socket is gone. */
  send(message: Uint8Array): boolean;
}

interface PendingReply {
  readonly seq: number;
  readonly spec: EventSpec;
  readonly resolve: (outcome: EventOutcome | undefined) => void;
  /** KVMI_VCPU_SET_REGISTERS received while waiting: applied when the reply is processed. */
  registers: KvmRegs | undefined;
}

/** A guest exception the kernel must report through a TRAP event (kvmi-abi §5 TRAP). */
interface Exception {
  readonly vector: number;
  readonly errorCode: number;
  readonly address: bigint;
}

/** The KVMI side of one vCPU. */
export class VcpuIntrospection {
  /** Events enabled with KVMI_VCPU_CONTROL_EVENTS (ids). */
  readonly enabledEvents = new Set<number>();
  /** CRs selected with KVMI_VCPU_CONTROL_CR. */
  readonly crMask = new Set<number>();
  /** MSRs whose writes are intercepted (KVMI_VCPU_CONTROL_MSR). */
  readonly msrWrites = new Set<number>();
  private stepping = false;
  /** Successful KVMI_VCPU_PAUSE requests not yet turned into PAUSE_VCPU events. */
  pausePending = 0;
  /** KVMI_VCPU_INJECT_EXCEPTION accepted and not yet reported by its TRAP event (EBUSY meanwhile). */
  injection: Exception | undefined;
  private waiting: PendingReply | undefined;
  private jobs: Array<() => void | Promise<void>> = [];
  /** Set while an asynchronous job (a guest behind QEMU) runs; jobs stay in order behind it. */
  private draining: Promise<void> | undefined;
  private drainScheduled = false;
  private thread: Promise<unknown> = Promise.resolve();
  private readonly unsubscribe: () => void;

  constructor(
    private readonly vm: VmIntrospectionContext,
    readonly port: VcpuPort,
  ) {
    this.unsubscribe = port.onResume(() => this.kick());
  }

  /**
   * KVMI_VCPU_CONTROL_SINGLESTEP state. Setting it also arms or disarms the vCPU's monitor trap
   * flag: without that the guest never takes a single-step exit, so no SINGLESTEP event could
   * fire (kvmi-abi §5 id 10); the release job of §2.8 clears both.
   */
  get singlestep(): boolean {
    return this.stepping;
  }

  set singlestep(enabled: boolean) {
    this.stepping = enabled;
    this.port.setSinglestep(enabled);
  }

  get index(): number {
    return this.port.index;
  }

  /** True while an event of this vCPU waits for its reply. */
  get isWaitingForReply(): boolean {
    return this.waiting !== undefined;
  }

  /** The seq and spec of the event awaiting a reply. */
  get pendingEvent(): { readonly seq: number; readonly spec: EventSpec } | undefined {
    return this.waiting;
  }

  // ---------------------------------------------------------------------------------------------
  // Jobs (kvmi-abi §2.5: vCPU commands run on the vCPU thread, only inside KVM_RUN)

  /** Queues a vCPU command; it runs soon if the vCPU is in KVM_RUN, else when it resumes. */
  queueJob(job: () => void | Promise<void>): void {
    this.jobs.push(job);
    this.scheduleDrain();
  }

  private scheduleDrain(): void {
    if (this.drainScheduled || !this.port.running) return;
    this.drainScheduled = true;
    setImmediate(() => {
      this.drainScheduled = false;
      this.runJobs();
    });
  }

  /** Runs queued jobs in order; synchronous jobs run at once, an asynchronous one holds the rest. */
  private runJobs(): void | Promise<void> {
    if (!this.port.running) return;
    if (this.draining !== undefined) return this.draining;
    if (this.jobs.length > 0 && this.port.refresh !== undefined) return this.drainAsync(this.port.refresh());
    while (this.jobs.length > 0) {
      const pending = this.jobs.shift()!();
      if (pending !== undefined) return this.drainAsync(pending);
    }
  }

  private drainAsync(first: Promise<void>): Promise<void> {
    const run = (async () => {
      await first.catch(() => undefined);
      while (this.jobs.length > 0 && this.port.running) await this.jobs.shift()!();
    })();
    this.draining = run.finally(() => (this.draining = undefined));
    return this.draining;
  }

  /** Stashes registers for the pending event; false when no event is pending (EOPNOTSUPP). */
  stashRegisters(regs: KvmRegs): boolean {
    if (this.waiting === undefined) return false;
    this.waiting.registers = regs;
    return true;
  }

  // ---------------------------------------------------------------------------------------------
  // Entry work: what the vCPU does each time it (re-)enters the guest

  /** Called by the guest before each instruction (KVM_REQ_INTROSPECTION handling). */
  onEntry(): Promise<void> {
    return this.exclusive(() => this.entryWork());
  }

  /** Makes a running vCPU enter now, even from halt (the IPI of KVMI_VCPU_PAUSE). */
  kick(): void {
    this.port.kick();
  }

  private async entryWork(): Promise<void> {
    await this.runJobs();
    // TRAP is sent before any other event (kvmi-abi §3.3).
    const injection = this.injection;
    if (injection !== undefined) {
      // An exception the guest already has pending (a #BP re-injected by a CONTINUE reply) wins
      // over the requested one, and TRAP reports what was really injected (selftest step 20).
      const guestException = this.port.pendingException();
      const injected = guestException ?? injection;
      if (guestException === undefined) this.port.queueException(injected.vector, injected.errorCode, injected.address);
      await this.sendEventLocked("TRAP", {
        nr: injected.vector,
        error_code: injected.errorCode,
        address: injected.address,
      });
      this.injection = undefined;
    }
    // PAUSE_VCPU events only after every queued command has run (kvmi-abi §3.3).
    await this.runJobs();
    while (this.pausePending > 0 && this.vm.canSendEvents()) {
      this.pausePending--;
      await this.sendEventLocked("PAUSE_VCPU", undefined);
      await this.runJobs();
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Events

  private exclusive<T>(work: () => Promise<T>): Promise<T> {
    const run = this.thread.then(work, work);
    this.thread = run.catch(() => undefined);
    return run;
  }

  /** Sends an event and blocks this vCPU until its reply (or the tool's departure). */
  sendEvent(kind: EventKind, payload: Record<string, unknown> | undefined): Promise<EventOutcome | undefined> {
    return this.exclusive(() => this.sendEventLocked(kind, payload));
  }

  private async sendEventLocked(
    kind: EventKind,
    payload: Record<string, unknown> | undefined,
  ): Promise<EventOutcome | undefined> {
    if (!this.vm.canSendEvents()) return undefined;
    if (this.port.refresh !== undefined) await this.port.refresh();
    const spec = this.vm.eventSpec(kind);
    const seq = this.vm.nextEventSeq();
    const message = encodeEvent(this.vm.dialect, spec, seq, this.index, this.archSnapshot(), payload);
    const outcome = new Promise<EventOutcome | undefined>((resolve) => {
      this.waiting = { seq, spec, resolve, registers: undefined };
    });
    if (!this.vm.send(message)) {
      this.waiting = undefined;
      return undefined;
    }
    this.scheduleDrain();
    const result = await outcome;
    if (result?.action === "CRASH") this.vm.guest.crash(`${spec.name} answered with CRASH`);
    return result;
  }

  /**
   * Completes the pending event with a validated reply; applies stashed registers first.
   * Returns a reason when the reply must close the socket (kvmi-abi §2.7).
   */
  completeEvent(seq: number, action: number, data: Uint8Array): string | undefined {
    const waiting = this.waiting;
    if (waiting === undefined) return `unsolicited event reply seq ${seq} for vCPU ${this.index}`;
    if (seq !== waiting.seq) return `event reply seq ${seq} does not match pending seq ${waiting.seq}`;
    const actionName = (["CONTINUE", "RETRY", "CRASH"] as const)[action];
    if (actionName === undefined || !waiting.spec.actions.includes(actionName)) {
      return `action ${action} is not accepted by ${waiting.spec.name}`;
    }
    let decoded: Record<string, unknown> | undefined;
    try {
      decoded = decodeEventReplyData(waiting.spec, data);
    } catch (err) {
      return (err as Error).message;
    }
    if (waiting.registers !== undefined) this.port.setRegs(waiting.registers);
    this.waiting = undefined;
    waiting.resolve({ action: actionName, data: decoded });
    return undefined;
  }

  /** The tool disconnected: the "release" job of kvmi-abi §2.8 (vCPU continues as if CONTINUE). */
  release(): void {
    this.jobs = [];
    this.pausePending = 0;
    this.singlestep = false;
    const waiting = this.waiting;
    this.waiting = undefined;
    waiting?.resolve(undefined);
  }

  /** Forgets everything (KVM_INTROSPECTION_UNHOOK frees the per-vCPU state). */
  dispose(): void {
    this.release();
    this.enabledEvents.clear();
    this.crMask.clear();
    this.msrWrites.clear();
    this.injection = undefined;
    this.unsubscribe();
  }

  private readonly msrOrZero = (index: number): bigint => this.port.readMsr(index) ?? 0n;

  /** `kvmi_event_arch`: mode, regs, sregs and the MSR block at event time (kvmi-abi §6). */
  archSnapshot(): Record<string, unknown> {
    // A method rather than an inline helper: a named closure per event costs a `__name` call under tsx.
    const msr = this.msrOrZero;
    return {
      mode: this.port.mode(),
      // kvmi-v7's arch names the EPT view the vCPU runs in: always the default one here (no EPTP
      // switching). Layouts without the field ignore it.
      view: 0,
      regs: this.port.getRegs(),
      sregs: this.port.getSregs(),
      msrs: {
        sysenter_cs: msr(0x174),
        sysenter_esp: msr(0x175),
        sysenter_eip: msr(0x176),
        efer: msr(0xc0000080),
        star: msr(0xc0000081),
        lstar: msr(0xc0000082),
        cstar: msr(0xc0000083),
        pat: msr(0x277),
        shadow_gs: msr(0xc0000102),
      },
    };
  }
}
