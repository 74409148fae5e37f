// SPDX-License-Identifier: Apache-2.0
/**
 * The vCPU thread: an async loop per vCPU that enters the guest (`onEntry`), delivers the pending
 * exception, and executes queued instructions one at a time, awaiting exit handlers in between.
 * Public behaviour is specified on {@link Vcpu} in `vcpu.ts`.
 *
 * Crash and reset must never leave a promise hanging, even while the loop is stuck in an exit whose
 * handler never returns: operations are settled from outside the loop, a generation counter makes late
 * handler results void, and reset starts a fresh loop (a token tells the stale one to exit).
 */
import { GuestModelError } from "./errors.js";
import { passThroughExitHandler, type AbortReason, type OperationOutcome, type VcpuExitHandler } from "./exits.js";
import {
  ABORTED, HALTING, RETRY, cpuidInstruction, descriptorInstruction, executeInstruction, haltInstruction, hypercallInstruction,
  memoryInstruction, writeCrInstruction, writeMsrInstruction, xsetbvInstruction,
  type DescriptorInstruction, type ExecContext, type ExitKind, type GuestAddress, type Instruction,
} from "./instructions.js";
import type { GuestMemory } from "./memory.js";
import { walkPageTables } from "./paging.js";
import type { KvmDtable, VcpuState } from "./vcpu-state.js";
import {
  DELIVERED_EXCEPTION_LOG, type DeliveredException, type ExecuteOptions, type InstructionOptions, type Vcpu,
  type VcpuRunState,
} from "./vcpu.js";
import { EFER_LMA, U64_MASK, X86_CR0_PG, X86_TRAP_PF, exceptionHasErrorCode } from "./x86.js";

/** Consecutive RETRYs of one instruction after which the thread yields a macrotask, so a retry loop cannot starve I/O. */
const RETRY_YIELD_EVERY = 16;

/** TSC cycles charged per executed instruction. */
export const CYCLES_PER_INSTRUCTION = 1000n;

/** What the guest uses to drive a vCPU thread. @internal */
export interface VcpuController extends Vcpu {
  /** Enters KVM_RUN for the first time (no-op if already started). */
  start(): void;
  /** Settles every queued operation with `aborted` (`reset`) without killing the thread. */
  abortAll(reason: AbortReason): void;
  /** Marks the thread dead and settles everything (VM crash). */
  kill(): void;
  /** Brings a dead thread back to `not-started` (VM reset after a crash). */
  revive(): void;
}

/** Options of {@link createVcpu}. @internal */
export interface VcpuOptions {
  readonly state: VcpuState;
  readonly memory: GuestMemory;
  /** Current exit handler of the VM (looked up at every exit, so it can be swapped at runtime). */
  readonly handler: () => VcpuExitHandler | undefined;
  /** Crashes the whole VM. */
  readonly crashVm: (reason: string, cause?: unknown) => void;
}

/**
 * One submitted instruction. A class rather than an object with a settle closure: under tsx every
 * named closure costs a `__name` call, and one is submitted per guest instruction.
 */
class Queued {
  attempt = 0;
  private settled = false;

  constructor(
    readonly insn: Instruction<unknown>,
    private readonly resolve: (outcome: OperationOutcome<unknown>) => void,
  ) {}

  /** Settles the operation once; later outcomes (a late handler after a crash) are ignored. */
  settle(outcome: OperationOutcome<unknown>): void {
    if (this.settled) return;
    this.settled = true;
    this.resolve(outcome);
  }
}

/** Creates a vCPU thread in the `not-started` state. @internal */
export function createVcpu(options: VcpuOptions): VcpuController {
  return new VcpuThread(options);
}

class VcpuThread implements VcpuController {
  readonly state: VcpuState;
  readonly memory: GuestMemory;
  currentExit: ExitKind | undefined;
  deliveredExceptionCount = 0;
  private readonly log: DeliveredException[] = [];
  private queue: Queued[] = [];
  private started = false;
  private dead = false;
  private stopRequested = false;
  private parked = false;
  private kickPending = false;
  private generation = 0;
  private loopToken = 0;
  private wake: (() => void) | undefined;
  private parkWaiters: Array<() => void> = [];
  private readonly ctx: ExecContext;

  constructor(private readonly options: VcpuOptions) {
    this.state = options.state;
    this.memory = options.memory;
    this.ctx = {
      vcpu: this,
      state: this.state,
      memory: this.memory,
      exit: (kind, call) => this.exit(kind, call),
      crash: (reason) => this.options.crashVm(reason),
    };
  }

  get index(): number {
    return this.state.index;
  }
  get runState(): VcpuRunState {
    if (this.dead) return "dead";
    if (!this.started) return "not-started";
    return this.parked ? "stopped" : "running";
  }
  get pendingOperations(): number {
    return this.queue.length;
  }
  get deliveredExceptions(): readonly DeliveredException[] {
    return this.log;
  }

  translateGva(gva: bigint): bigint | null {
    const s = this.state.sregs;
    if ((s.cr0 & X86_CR0_PG) === 0n) return gva & 0xffffffffn;
    if ((s.efer & EFER_LMA) === 0n) return null; // legacy 32-bit/PAE paging is not modelled
    return walkPageTables(this.memory, s.cr3, gva)?.gpa ?? null;
  }

  queueException(e: { readonly nr: number; readonly error_code?: number; readonly address?: bigint }): boolean {
    if (this.state.pendingException !== null) return false;
    const hasErrorCode = exceptionHasErrorCode(e.nr);
    this.state.pendingException = {
      nr: e.nr,
      has_error_code: hasErrorCode,
      error_code: hasErrorCode ? (e.error_code ?? 0) : 0,
      address: e.nr === X86_TRAP_PF ? (e.address ?? 0n) : 0n,
      insn_len: 0,
    };
    this.signal();
    return true;
  }

  kick(): void {
    this.kickPending = true;
    this.signal();
  }

  startup(): void {
    this.state.initialized = true;
    this.signal();
  }

  stop(): Promise<void> {
    this.stopRequested = true;
    if (!this.started || this.dead || this.parked) {
      this.parked = this.started && !this.dead;
      return Promise.resolve();
    }
    this.signal();
    return new Promise((resolve) => this.parkWaiters.push(resolve));
  }

  resume(): void {
    this.stopRequested = false;
    this.signal();
  }

  crash(reason = "vCPU requested crash"): void {
    this.options.crashVm(reason);
  }

  start(): void {
    if (this.started || this.dead) return;
    this.started = true;
    void this.loop(++this.loopToken);
  }

  abortAll(reason: AbortReason): void {
    this.generation++;
    const queued = this.queue;
    this.queue = [];
    this.kickPending = false;
    this.currentExit = undefined;
    for (const q of queued) q.settle({ status: "aborted", reason });
    this.signal();
    // The old loop may sit in an exit whose handler never returns; a fresh loop takes over, and the old
    // one exits (token mismatch) whenever that handler settles, ignoring its result (generation mismatch).
    if (this.started && !this.dead) void this.loop(++this.loopToken);
  }

  kill(): void {
    if (this.dead) return;
    this.dead = true;
    this.parked = false;
    this.abortAll("crashed");
    this.releaseParkWaiters();
  }

  revive(): void {
    if (!this.dead) return;
    this.dead = false;
    this.started = false;
    this.stopRequested = false;
    this.loopToken++; // a loop still blocked in an old exit handler exits when that handler returns
  }

  executeAt(gva: bigint, options: ExecuteOptions = {}) {
    return this.submit(executeInstruction(gva, options.regs));
  }
  writeCr(cr: number, value: bigint, options: InstructionOptions = {}) {
    return this.submit(writeCrInstruction(cr, value, options.at));
  }
  writeMsr(msr: number, value: bigint, options: InstructionOptions = {}) {
    return this.submit(writeMsrInstruction(msr, value, options.at));
  }
  xsetbv(xcr: number, value: bigint, options: InstructionOptions = {}) {
    return this.submit(xsetbvInstruction(xcr, value, options.at));
  }
  descriptorOp(op: DescriptorInstruction, operand?: KvmDtable | number, options: InstructionOptions = {}) {
    const load = op === "lgdt" || op === "lidt" ? "table" : op === "lldt" || op === "ltr" ? "selector" : undefined;
    if ((load === "table" && typeof operand !== "object") || (load === "selector" && typeof operand !== "number")) {
      throw new GuestModelError("GUEST_INVALID_ARGUMENT", `${op} needs a ${load} operand`);
    }
    return this.submit(descriptorInstruction(op, operand, options.at));
  }
  readMemory(address: GuestAddress, length: number, options: InstructionOptions = {}) {
    if (!Number.isInteger(length) || length < 0) {
      throw new GuestModelError("GUEST_INVALID_ARGUMENT", `length must be a non-negative integer, got ${length}`);
    }
    return this.submit(memoryInstruction(address, length, undefined, options.at)) as Promise<OperationOutcome<Uint8Array>>;
  }
  writeMemory(address: GuestAddress, bytes: Uint8Array, options: InstructionOptions = {}) {
    return this.submit(memoryInstruction(address, bytes.length, bytes.slice(), options.at)) as Promise<OperationOutcome<void>>;
  }
  hypercall(rax: bigint, rdi: bigint, rsi: bigint, options: InstructionOptions = {}) {
    return this.submit(hypercallInstruction(rax, rdi, rsi, options.at));
  }
  cpuid(fn: number, index: number, options: InstructionOptions = {}) {
    return this.submit(cpuidInstruction(fn, index, options.at));
  }
  halt(ms: number) {
    return this.submit(haltInstruction(ms));
  }

  private submit<T>(insn: Instruction<T>): Promise<OperationOutcome<T>> {
    if (this.dead) return Promise.resolve({ status: "aborted", reason: "crashed" });
    return new Promise((resolve) => {
      this.queue.push(new Queued(insn as Instruction<unknown>, resolve as (outcome: OperationOutcome<unknown>) => void));
      this.signal();
    });
  }

  private signal(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  private releaseParkWaiters(): void {
    const waiters = this.parkWaiters;
    this.parkWaiters = [];
    for (const w of waiters) w();
  }

  /** Sleeps until {@link signal}, or until `deadlineMs` for a halted vCPU. */
  private async sleep(deadlineMs: number | undefined): Promise<void> {
    await new Promise<void>((resolve) => {
      const timer = deadlineMs === undefined ? undefined : setTimeout(resolve, Math.max(0, deadlineMs - Date.now()));
      this.wake = () => {
        if (timer !== undefined) clearTimeout(timer);
        resolve();
      };
    });
  }

  private halting(q: Queued | undefined): boolean {
    return q?.insn.haltDeadlineMs !== undefined && Date.now() < q.insn.haltDeadlineMs;
  }

  private async loop(token: number): Promise<void> {
    let retries = 0;
    while (!this.dead && token === this.loopToken) {
      if (this.stopRequested) {
        this.parked = true;
        this.releaseParkWaiters();
        await this.sleep(undefined);
        if (!this.stopRequested) this.parked = false;
        continue;
      }
      const head = this.queue[0];
      const runnable = head !== undefined && this.state.initialized && !this.halting(head);
      if (!runnable && !this.kickPending && this.state.pendingException === null) {
        await this.sleep(this.halting(head) ? head!.insn.haltDeadlineMs : undefined);
        continue;
      }
      this.kickPending = false;
      const gen = this.generation;
      if ((await this.exit("onEntry", (h) => h.onEntry(this))) === ABORTED) continue;
      if (this.dead || this.stopRequested || gen !== this.generation) continue;
      if (this.deliverPendingException() && head?.insn.haltDeadlineMs !== undefined) head.insn.haltDeadlineMs = 0;
      const q = this.queue[0];
      if (q === undefined || q !== head || !runnable) continue;
      const step = await q.insn.exec(this.ctx, q.attempt++);
      if (step === ABORTED || gen !== this.generation || this.queue[0] !== q) continue;
      if (step === HALTING) continue;
      if (step === RETRY) {
        if (++retries % RETRY_YIELD_EVERY === 0) await new Promise((r) => setImmediate(r));
        continue;
      }
      retries = 0;
      if (q.insn.countsAsInstruction) this.state.tsc = (this.state.tsc + CYCLES_PER_INSTRUCTION) & U64_MASK;
      if (step.status === "done" && q.insn.countsAsInstruction && this.state.singlestep) {
        const action = await this.exit("singleStep", (h) => h.singleStep(this, false));
        if (action === ABORTED || gen !== this.generation) continue;
        if (action === "crash") {
          this.options.crashVm("CRASH reply to singleStep");
          continue;
        }
      }
      this.queue.shift();
      q.settle(step);
    }
  }

  /** Delivers the pending exception, as VM entry with event injection would. */
  private deliverPendingException(): boolean {
    const e = this.state.pendingException;
    if (e === null) return false;
    this.state.pendingException = null;
    const regs = this.state.regs;
    if (e.nr === X86_TRAP_PF) this.state.sregs.cr2 = e.address;
    const { insn_len: _insnLen, ...exception } = e;
    this.log.push({ ...exception, rip: regs.rip });
    if (this.log.length > DELIVERED_EXCEPTION_LOG) this.log.shift();
    this.deliveredExceptionCount++;
    // The guest's handler (not modelled) returns to the pushed return address.
    regs.rip = (regs.rip + BigInt(e.insn_len)) & U64_MASK;
    return true;
  }

  private async exit<T>(kind: ExitKind, call: (handler: VcpuExitHandler) => PromiseLike<T> | T): Promise<T | typeof ABORTED> {
    const gen = this.generation;
    this.currentExit = kind;
    try {
      const value = await call(this.options.handler() ?? passThroughExitHandler);
      return this.dead || gen !== this.generation ? ABORTED : value;
    } catch (err) {
      if (!this.dead && gen === this.generation) this.options.crashVm(`exit handler ${kind} failed`, err);
      return ABORTED;
    } finally {
      if (gen === this.generation) this.currentExit = undefined;
    }
  }
}
