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
import { MemoryHoleError, UnavailableError } from "../errors.js";
import type { KvmiBridgeError } from "../errors.js";
import type { SessionItem, VcpuEvent } from "../events.js";
import { splitPages } from "../memory.js";
import type { Session } from "../session.js";
import type { RegisterSource } from "./x86-registers.js";

const INT3 = 0xcc;
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

interface Breakpoint {
  original: number;
  refs: number;
}

/** The VM as gdb sees it. Not reentrant: the RSP server runs one request at a time. */
export class GdbTarget {
  /** Translate and insert breakpoints by guest physical address instead of virtual (`monitor phys on`). */
  physical = false;
  private readonly held = new Map<number, VcpuEvent>();
  private readonly absent = new Set<number>();
  private readonly regsOverride = new Map<number, X86Regs>();
  private readonly xsave = new Map<number, Uint8Array | undefined>();
  private readonly byGpa = new Map<bigint, Breakpoint>();
  private readonly byAddress = new Map<bigint, bigint>();
  private readonly formerBreakpoints = new Set<bigint>();
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
  private breakpointEventsOn = false;
  private detaching = false;
  private endError: Error | undefined;
  private readonly pump: Promise<void>;

  private constructor(
    private readonly session: Session,
    readonly vcpuCount: number,
    private readonly log: (line: string) => void,
  ) {
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
      this.held.set(v, event);
      const report = this.stopReason(event);
      if (report !== undefined && report.signal === GDB_SIGTRAP) this.pendingStops.push(report);
      this.stopping.delete(v);
      if (this.stopping.size === 0) await this.finishStop();
      return;
    }
    if (!this.running || this.held.has(v)) {
      // A vCPU that was not started when the target stopped: keep it stopped too.
      if (!this.running && !this.held.has(v)) this.held.set(v, event);
      else await this.answerNeutral(event);
      return;
    }
    const report = this.stopReason(event);
    if (report === undefined) return this.answerNeutral(event);
    this.held.set(v, event);
    this.running = false;
    // Not awaited: the pump must go on reading to see the other vCPUs' PAUSE_VCPU events.
    void this.stopAll(report);
  }

  /** The stop an event means while running, or `undefined` for an event gdb need not see. */
  private stopReason(event: VcpuEvent): StopReport | undefined {
    const thread = event.vcpu;
    if (event.type === "breakpoint" && this.byGpa.has(event.gpa)) return { thread, signal: GDB_SIGTRAP, swbreak: true };
    if (event.type === "singleStep" && this.stepping.has(thread)) return { thread, signal: GDB_SIGTRAP };
    if (event.type === "pauseVcpu" && this.interruptRequested) return { thread, signal: GDB_SIGINT };
    return undefined;
  }

  /** Lets the guest carry on as if nobody watched: an INT3 of ours (or one we removed) re-executes, the guest's own is re-injected. */
  private async answerNeutral(event: VcpuEvent, registers?: X86Regs): Promise<void> {
    try {
      const options = registers === undefined ? {} : { registers };
      if (event.type === "breakpoint" && (this.byGpa.has(event.gpa) || this.formerBreakpoints.has(event.gpa))) await event.retry(options);
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

  private isAtBreakpoint(v: number): boolean {
    const event = this.held.get(v);
    return event?.type === "breakpoint" && this.byGpa.has(event.gpa);
  }

  /**
   * Executes the instruction under a breakpoint on vCPU `v` alone: original byte back, KVMI
   * single-step, RETRY, wait for the SINGLESTEP event, INT3 again. Returns the stop for a step.
   */
  private async stepOverBreakpoint(v: number, action: ResumeAction): Promise<StopReport | undefined> {
    const gpa = (this.held.get(v) as Extract<VcpuEvent, { type: "breakpoint" }>).gpa;
    const bp = this.byGpa.get(gpa)!;
    await this.session.writePhysical(gpa, Uint8Array.of(bp.original));
    await this.setSinglestep(v, true);
    const stepped = this.nextEvent(v, (e) => e.type === "singleStep");
    await this.release(v);
    const event = await stepped;
    if (this.byGpa.has(gpa)) await this.session.writePhysical(gpa, Uint8Array.of(INT3));
    await this.setSinglestep(v, false);
    this.held.set(v, event);
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
  // Memory

  /** The GPA of `address` for vCPU `v` (virtual mode) or `address` itself (physical mode). */
  private async toGpa(v: number, address: bigint): Promise<bigint | undefined> {
    return this.physical ? address : this.session.translateGva(v, address).catch(() => undefined);
  }

  /**
   * Reads up to `length` bytes at `address`, page by page; stops at the first unmapped or unbacked
   * page. Bytes under the gateway's INT3s read as the original bytes.
   */
  async readMemory(v: number, address: bigint, length: number): Promise<Uint8Array> {
    const out = new Uint8Array(length);
    let got = 0;
    for (const piece of splitPages(address, length)) {
      const gpa = await this.toGpa(v, piece.address);
      if (gpa === undefined) break;
      let data: Uint8Array;
      try {
        data = await this.session.readPhysical(gpa, piece.length);
      } catch (err) {
        if (err instanceof MemoryHoleError) break;
        throw err;
      }
      for (const [bpGpa, bp] of this.byGpa) if (bpGpa >= gpa && bpGpa < gpa + BigInt(piece.length)) data[Number(bpGpa - gpa)] = bp.original;
      out.set(data, piece.offset);
      got += piece.length;
    }
    return out.subarray(0, got);
  }

  /**
   * Writes `data` at `address` if every page is mapped (nothing is written otherwise). A byte under
   * a breakpoint becomes the breakpoint's original byte; the INT3 stays.
   * @returns false when a page is unmapped.
   */
  async writeMemory(v: number, address: bigint, data: Uint8Array): Promise<boolean> {
    const pieces = splitPages(address, data.length);
    const gpas = await Promise.all(pieces.map((p) => this.toGpa(v, p.address)));
    if (gpas.some((g) => g === undefined)) return false;
    for (let i = 0; i < pieces.length; i++) {
      const p = pieces[i]!;
      const gpa = gpas[i]!;
      const bytes = data.slice(p.offset, p.offset + p.length);
      for (const [bpGpa, bp] of this.byGpa) {
        if (bpGpa >= gpa && bpGpa < gpa + BigInt(p.length)) {
          bp.original = bytes[Number(bpGpa - gpa)]!;
          bytes[Number(bpGpa - gpa)] = INT3;
        }
      }
      await this.session.writePhysical(gpa, bytes);
    }
    return true;
  }

  // -------------------------------------------------------------------------------------------
  // Breakpoints

  /** Inserts a software breakpoint (Z0). @returns false when the address is not mapped */
  async insertBreakpoint(v: number, address: bigint): Promise<boolean> {
    const known = this.byAddress.get(address);
    if (known !== undefined) {
      this.byGpa.get(known)!.refs++;
      return true;
    }
    const gpa = await this.toGpa(v, address);
    if (gpa === undefined) return false;
    const existing = this.byGpa.get(gpa);
    if (existing !== undefined) {
      existing.refs++;
      this.byAddress.set(address, gpa);
      return true;
    }
    const original = (await this.session.readPhysical(gpa, 1))[0]!;
    if (!this.breakpointEventsOn) {
      for (let i = 0; i < this.vcpuCount; i++) {
        await this.session.controlVcpuEvents(i, "breakpoint", true).catch((err: Error) => this.log(`BREAKPOINT events of vCPU ${i}: ${err.message}`));
      }
      this.breakpointEventsOn = true;
    }
    await this.session.writePhysical(gpa, Uint8Array.of(INT3));
    this.byGpa.set(gpa, { original, refs: 1 });
    this.byAddress.set(address, gpa);
    this.formerBreakpoints.delete(gpa);
    return true;
  }

  /** Removes a software breakpoint (z0); unknown addresses are fine (gdb may remove twice). */
  async removeBreakpoint(address: bigint): Promise<void> {
    const gpa = this.byAddress.get(address);
    if (gpa === undefined) return;
    this.byAddress.delete(address);
    const bp = this.byGpa.get(gpa)!;
    if (--bp.refs > 0) return;
    this.byGpa.delete(gpa);
    this.formerBreakpoints.add(gpa);
    await this.session.writePhysical(gpa, Uint8Array.of(bp.original));
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
    for (const [gpa, bp] of this.byGpa) {
      this.formerBreakpoints.add(gpa);
      await attempt(`restore the byte at ${gpa.toString(16)}`, () => this.session.writePhysical(gpa, Uint8Array.of(bp.original)));
    }
    this.byGpa.clear();
    this.byAddress.clear();
    if (this.breakpointEventsOn) {
      for (let v = 0; v < this.vcpuCount; v++) await attempt(`disable BREAKPOINT events of vCPU ${v}`, () => this.session.controlVcpuEvents(v, "breakpoint", false));
    }
    for (const v of [...this.singlestepOn]) await attempt(`stop single-stepping vCPU ${v}`, () => this.setSinglestep(v, false));
    for (const v of [...this.held.keys()]) await attempt(`resume vCPU ${v}`, () => this.release(v));
    this.eventWaiters.clear();
    if (!this.session.closed) await this.session.release({ keepChanges: clean }).catch(() => undefined);
  }
}

const MSR_KERNEL_GS_BASE = 0xc0000102;
const ZERO_REGS: X86Regs = {
  rax: 0n, rbx: 0n, rcx: 0n, rdx: 0n, rsi: 0n, rdi: 0n, rsp: 0n, rbp: 0n, r8: 0n, r9: 0n, r10: 0n, r11: 0n,
  r12: 0n, r13: 0n, r14: 0n, r15: 0n, rip: 0n, rflags: 0n,
};
