// SPDX-License-Identifier: Apache-2.0
/**
 * The vCPUs the GDB gateway holds stopped, and what gdb sees of them. A vCPU is held while the
 * gateway keeps one of its events unanswered (gdb-target.ts); everything gdb learns or changes
 * about it lives here until the answer lets it run: when the event was taken (for the keep-alive),
 * the INT3 it sits on after a keep-alive swap, gdb's register writes (they travel with the answer,
 * the only way KVMI sets registers of a vCPU in an event) and the XSAVE area, read once per stop.
 * Separate from `GdbTarget` so that its execution control deals in "held or not" while this
 * per-stop bookkeeping, and the register view built from it, sit in one place.
 */
import type { X86Regs } from "../command-types.js";
import type { VcpuEvent } from "../events.js";
import type { Session } from "../session.js";
import type { RegisterSource } from "./x86-registers.js";

/** What answering a held vCPU needs: its event and gdb's pending register writes. */
export interface TakenVcpu {
  readonly event: VcpuEvent;
  readonly registers: X86Regs | undefined;
}

/** Stopped vCPUs by index. Not reentrant, like the target that owns it. */
export class HeldVcpus {
  private readonly events = new Map<number, VcpuEvent>();
  /** When each held event was taken (for the keep-alive). */
  private readonly takenAt = new Map<number, number>();
  /** vCPUs whose BREAKPOINT event the keep-alive swapped for a PAUSE_VCPU one: the INT3's GPA. */
  private readonly rearmedAtBreakpoint = new Map<number, bigint>();
  private readonly regsOverride = new Map<number, X86Regs>();
  private readonly xsave = new Map<number, Uint8Array | undefined>();

  constructor(private readonly session: Session) {}

  has(v: number): boolean {
    return this.events.has(v);
  }

  /** The event vCPU `v` is held in, if it is held. */
  event(v: number): VcpuEvent | undefined {
    return this.events.get(v);
  }

  /** The held vCPUs. */
  vcpus(): number[] {
    return [...this.events.keys()];
  }

  /** Holds vCPU `v` in `event`; `int3Gpa` records the INT3 it stands on when `event` does not say so (a keep-alive swap). */
  hold(v: number, event: VcpuEvent, int3Gpa?: bigint): void {
    this.events.set(v, event);
    this.takenAt.set(v, performance.now());
    if (int3Gpa !== undefined) this.rearmedAtBreakpoint.set(v, int3Gpa);
  }

  /** Forgets everything about held vCPU `v` and returns what its answer needs; `undefined` when it is not held. */
  take(v: number): TakenVcpu | undefined {
    const event = this.events.get(v);
    if (event === undefined) return undefined;
    this.events.delete(v);
    this.takenAt.delete(v);
    this.rearmedAtBreakpoint.delete(v);
    this.xsave.delete(v);
    const registers = this.regsOverride.get(v);
    this.regsOverride.delete(v);
    return { event, registers };
  }

  /**
   * Drops only the event of vCPU `v`, which the keep-alive is answering to take a fresh one at the
   * same place: gdb's register writes, the XSAVE area and the INT3 stay for the fresh event.
   */
  dropEventForSwap(v: number): void {
    this.events.delete(v);
  }

  /** The held vCPUs whose event was taken at least `ageMs` before `now`. */
  heldLongerThan(now: number, ageMs: number): number[] {
    return [...this.takenAt].filter(([, at]) => now - at >= ageMs).map(([v]) => v);
  }

  /** The GPA of the INT3 vCPU `v` stopped on (its BREAKPOINT event's, or the one kept across a keep-alive swap), if any. */
  int3Gpa(v: number): bigint | undefined {
    const event = this.events.get(v);
    return event?.type === "breakpoint" ? event.gpa : this.rearmedAtBreakpoint.get(v);
  }

  // -------------------------------------------------------------------------------------------
  // Registers

  /** What `g`/`p` read for vCPU `v`: the held event's state (with gdb's pending writes), else GET_REGISTERS. */
  async registers(v: number): Promise<RegisterSource> {
    const event = this.events.get(v);
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

  /** Sets the general purpose registers of held vCPU `v`; they reach the vCPU with the reply that resumes it. */
  setRegisters(v: number, regs: X86Regs): void {
    if (!this.events.has(v)) throw new Error(`vCPU ${v} is not stopped in an event; its registers cannot be set`);
    this.regsOverride.set(v, regs);
  }
}

const MSR_KERNEL_GS_BASE = 0xc0000102;
const ZERO_REGS: X86Regs = {
  rax: 0n, rbx: 0n, rcx: 0n, rdx: 0n, rsi: 0n, rdi: 0n, rsp: 0n, rbp: 0n, r8: 0n, r9: 0n, r10: 0n, r11: 0n,
  r12: 0n, r13: 0n, r14: 0n, r15: 0n, rip: 0n, rflags: 0n,
};
