// SPDX-License-Identifier: Apache-2.0
/**
 * The execution model: each vCPU is an async "thread" that takes queued guest instructions one at a
 * time, enters the guest for each (`onEntry`), and blocks inside exit handlers (see `exits.ts`).
 *
 * Thread states, mirroring a QEMU vCPU thread and `KVM_RUN`:
 * - `not-started`: created, the VM has not been started yet (instructions queue up).
 * - `running`: inside KVM_RUN: executing, idle (halted with nothing to do), or blocked in an exit.
 * - `stopped`: outside KVM_RUN (QEMU stopped the VM or this vCPU); no entries, so the kernel's
 *   vCPU jobs wait (kvmi-abi §2.5). Stopping takes effect at the next entry boundary.
 * - `dead`: the VM crashed; every operation settles with `aborted`.
 *
 * The implementation lives in `vcpu-thread.ts`; this module is the contract.
 */
import type { CpuidEntry } from "./cpuid.js";
import type { OperationOutcome } from "./exits.js";
import type {
  DescriptorInstruction, DescriptorResult, ExecuteResult, ExitKind, GuestAddress,
} from "./instructions.js";
import type { GuestMemory } from "./memory.js";
import type { GuestException, KvmDtable, KvmRegs, VcpuState } from "./vcpu-state.js";

export type { DescriptorInstruction, DescriptorResult, ExecuteResult, ExitKind, GuestAddress };

/** Lifecycle of a vCPU thread (see the module comment). */
export type VcpuRunState = "not-started" | "running" | "stopped" | "dead";

/** Options common to the instruction-shaped operations. */
export interface InstructionOptions {
  /** GVA of the instruction: RIP is set to it before the first attempt. Default: the current RIP. */
  readonly at?: bigint;
}

/** Options of {@link Vcpu.executeAt}. */
export interface ExecuteOptions {
  /** Registers loaded just before the fetch (first attempt only), e.g. RAX = syscall nr at a syscall entry. */
  readonly regs?: Partial<KvmRegs>;
}

/** An exception as the guest received it. */
export interface DeliveredException extends GuestException {
  /** RIP at delivery (the faulting instruction, or the INT3 for a re-injected #BP). */
  readonly rip: bigint;
}

/** How many delivered exceptions {@link Vcpu.deliveredExceptions} keeps (oldest dropped first). */
export const DELIVERED_EXCEPTION_LOG = 256;

/** One vCPU of the guest. All driving operations settle, never reject. */
export interface Vcpu {
  /** KVMI vCPU index. */
  readonly index: number;
  /**
   * Registers, MSRs, CPUID, XSAVE, flags. The kernel side may change them from `onEntry` and the exit
   * handlers (the vCPU is not executing then), e.g. KVMI_VCPU_SET_REGISTERS assigns `state.regs`.
   */
  readonly state: VcpuState;
  readonly memory: GuestMemory;
  readonly runState: VcpuRunState;
  /** The exit being handled right now (the vCPU is blocked in it), if any. */
  readonly currentExit: ExitKind | undefined;
  /** Queued operations, including the one executing. */
  readonly pendingOperations: number;
  /** The last {@link DELIVERED_EXCEPTION_LOG} exceptions delivered to the guest, oldest first. */
  readonly deliveredExceptions: readonly DeliveredException[];
  /** Count of all exceptions ever delivered (not capped). */
  readonly deliveredExceptionCount: number;

  /** GVA → GPA with the vCPU's current paging mode (KVMI_VCPU_TRANSLATE_GVA); `null` if unmapped. */
  translateGva(gva: bigint): bigint | null;
  /**
   * Queues an exception for delivery at the next guest entry. Returns false (and queues nothing) if one
   * is already pending, e.g. a #BP being re-injected.
   */
  queueException(exception: { readonly nr: number; readonly error_code?: number; readonly address?: bigint }): boolean;
  /** Requests an entry (`onEntry`) soon even if no instruction is queued; deferred while stopped. */
  kick(): void;
  /** INIT/SIPI: leaves KVM_MP_STATE_UNINITIALIZED so queued instructions can run. */
  startup(): void;
  /**
   * Leaves KVM_RUN at the next entry boundary; resolves once the thread is parked (or dead). A vCPU
   * blocked in an exit parks only after that handler returns, so never await this from inside one of
   * this vCPU's own exit handlers.
   */
  stop(): Promise<void>;
  /** Re-enters KVM_RUN after {@link Vcpu.stop}. */
  resume(): void;
  /** KVMI CRASH semantics (v9): the whole VM is killed. */
  crash(reason?: string): void;

  /**
   * Jumps to `gva` and executes one instruction there: the fetch goes through the guest page tables and
   * the X restriction; an INT3 byte (0xCC) takes the `breakpoint` exit with insn_len 1, anything else
   * advances RIP by its decoded length. After a RETRY the instruction at the (possibly moved) RIP runs.
   */
  executeAt(gva: bigint, options?: ExecuteOptions): Promise<OperationOutcome<ExecuteResult>>;
  /** MOV to CR0/2/3/4/8; `value` is what the CR actually received. */
  writeCr(cr: number, value: bigint, options?: InstructionOptions): Promise<OperationOutcome<bigint>>;
  /** WRMSR; `value` is what the MSR actually received. */
  writeMsr(msr: number, value: bigint, options?: InstructionOptions): Promise<OperationOutcome<bigint>>;
  /** XSETBV. */
  xsetbv(xcr: number, value: bigint, options?: InstructionOptions): Promise<OperationOutcome<bigint>>;
  /** SGDT/SIDT/SLDT/STR (no operand) or LGDT/LIDT (table) / LLDT/LTR (selector). */
  descriptorOp(
    op: DescriptorInstruction, operand?: KvmDtable | number, options?: InstructionOptions,
  ): Promise<OperationOutcome<DescriptorResult>>;
  /** Reads guest memory as the guest would (page tables for `gva`, EPT restrictions always). */
  readMemory(address: GuestAddress, length: number, options?: InstructionOptions): Promise<OperationOutcome<Uint8Array>>;
  /** Writes guest memory as the guest would. */
  writeMemory(address: GuestAddress, bytes: Uint8Array, options?: InstructionOptions): Promise<OperationOutcome<void>>;
  /** VMCALL with the given RAX/RDI/RSI; the value is the RAX the guest got back. */
  hypercall(rax: bigint, rdi: bigint, rsi: bigint, options?: InstructionOptions): Promise<OperationOutcome<bigint>>;
  /**
   * CPUID with EAX = `fn`, ECX = `index` (the `cpuid` exit first); the value is the leaf the guest
   * got in EAX..EDX. `skipped` when the tool answered it itself (RETRY after moving RIP).
   */
  cpuid(fn: number, index: number, options?: InstructionOptions): Promise<OperationOutcome<CpuidEntry>>;
  /** HLT for `ms` milliseconds (ends early when an exception is delivered). */
  halt(ms: number): Promise<OperationOutcome<void>>;
}
