// SPDX-License-Identifier: Apache-2.0
/**
 * The contract between the guest model and the emulated KVM/KVMI kernel side.
 *
 * Every vCPU runs as an async "thread" (see `vcpu.ts`). At each interception point the thread calls
 * one method of the VM's {@link VcpuExitHandler} and **awaits** it: while the promise is pending the
 * vCPU executes no guest operation, exactly like a vCPU thread blocked in `kvmi_send_event()` waiting
 * for the tool's reply (kvmi-abi §3.3). The kernel side is expected to keep running that vCPU's queued
 * KVMI jobs meanwhile (§2.5: jobs run "while it is halted or blocked waiting for an event reply").
 *
 * Each method is called whether or not the tool enabled the matching event: filtering by the event
 * masks, CONTROL_CR/CONTROL_MSR selections and the allow lists is the kernel side's job. A handler that
 * does not introspect answers as {@link passThroughExitHandler} does.
 *
 * If a method throws or rejects, the VM is crashed (the kernel could not go on either).
 */
import type { Vcpu } from "./vcpu.js";
import type { GuestException } from "./vcpu-state.js";

/** A value or a promise of it: handlers may answer synchronously. */
export type Awaitable<T> = T | PromiseLike<T>;

/** Reply to an event that accepts CONTINUE, RETRY and CRASH (`KVMI_EVENT_ACTION_*`, kvmi-abi §3.5). */
export type ExitAction = "continue" | "retry" | "crash";
/** Reply to an event that accepts only CONTINUE and CRASH. */
export type NotifyAction = "continue" | "crash";

/** Descriptor-table register touched by a DESCRIPTOR exit (`KVMI_DESC_*`, kvmi-abi §5 id 7). */
export const KVMI_DESC_IDTR = 1;
export const KVMI_DESC_GDTR = 2;
export const KVMI_DESC_LDTR = 3;
export const KVMI_DESC_TR = 4;
export type DescriptorKind = typeof KVMI_DESC_IDTR | typeof KVMI_DESC_GDTR | typeof KVMI_DESC_LDTR | typeof KVMI_DESC_TR;

/** Reply to a CR or MSR write: the action and the value the register actually receives (`new_val`). */
export interface WriteReply {
  readonly action: NotifyAction;
  /** Value loaded into the register on CONTINUE. Echo `newValue` to let the write through unchanged. */
  readonly value: bigint;
}

/** Reply to a KVMI agent hypercall. */
export interface HypercallReply {
  readonly action: NotifyAction;
  /**
   * Whether the HYPERCALL event was enabled and sent (`kvmi_hypercall_event()` returned true). The guest
   * then gets RAX = 0; otherwise RAX = -KVM_ENOSYS (-1000 as u64), kvmi-abi §5 id 2.
   */
  readonly consumed: boolean;
}

/**
 * Implemented by the emulated kernel side; one instance serves every vCPU of a VM.
 *
 * Ordering guarantees, per vCPU: calls never overlap (the next call starts after the previous promise
 * settled); `onEntry` precedes every guest entry, including re-entries after RETRY and idle entries
 * caused by {@link Vcpu.kick}; `singleStep` follows each instruction that completed while
 * `state.singlestep` is set.
 */
export interface VcpuExitHandler {
  /**
   * Called before every guest entry, i.e. before each operation and after each RETRY, and on
   * {@link Vcpu.kick} while the vCPU is idle or halted (not while it is stopped). The kernel side runs
   * queued KVMI vCPU jobs here, sends pending PAUSE_VCPU events, and performs KVMI_VCPU_INJECT_EXCEPTION:
   * queue the exception with {@link Vcpu.queueException} unless `state.pendingException` is already set
   * (a re-injected #BP wins, kvmi-abi §8 item 20), then report `state.pendingException` in the TRAP event.
   * The exception is delivered to the guest right after this call returns.
   */
  onEntry(vcpu: Vcpu): Awaitable<void>;

  /**
   * The guest executed INT3 (kvmi-abi §5 id 3). RIP still points at the INT3.
   * - `continue`: re-inject #BP into the guest (recorded in {@link Vcpu.deliveredExceptions}).
   * - `retry`: do not inject; re-enter and execute at the (possibly changed) RIP.
   * - `crash`: kill the VM.
   * @param gpa guest-physical address of the INT3 byte.
   * @param insnLen length of the breakpoint instruction (1 for 0xCC).
   */
  breakpoint(vcpu: Vcpu, gpa: bigint, insnLen: number): Awaitable<ExitAction>;

  /**
   * MOV to CR0, CR3 or CR4 that changes the value (kvmi-abi §5 id 4), before the write. The register
   * receives `reply.value`; replying with `oldValue` blocks the write. Invalid values raise #GP in the
   * guest afterwards, as the CPU would.
   */
  crWrite(vcpu: Vcpu, cr: 0 | 3 | 4, oldValue: bigint, newValue: bigint): Awaitable<WriteReply>;

  /** WRMSR to an existing MSR that changes its value (kvmi-abi §5 id 8), before the write; as {@link crWrite}. */
  msrWrite(vcpu: Vcpu, msr: number, oldValue: bigint, newValue: bigint): Awaitable<WriteReply>;

  /** XSETBV changed XCR `xcr` (kvmi-abi §5 id 6). Notification only: the new value is already loaded. */
  xsetbv(vcpu: Vcpu, xcr: number, oldValue: bigint, newValue: bigint): Awaitable<NotifyAction>;

  /**
   * SGDT/SIDT/SLDT/STR (`write` false) or LGDT/LIDT/LLDT/LTR (`write` true), before the instruction
   * (kvmi-abi §5 id 7). `continue` performs it, `retry` re-enters without performing it (the instruction
   * runs again unless the tool moved RIP, in which case it is skipped).
   */
  descriptor(vcpu: Vcpu, descriptor: DescriptorKind, write: boolean): Awaitable<ExitAction>;

  /**
   * A guest access used a right that the GFN's access restriction clears (an EPT violation, kvmi-abi §5
   * id 9). `continue` performs the access anyway (KVM emulates it), `retry` re-enters and re-executes,
   * re-checking the restriction, `crash` kills the VM.
   * @param gva linear address of the access, or `~0` (2^64-1) for a guest-physical access.
   * @param access the one right that was missing: KVMI_PAGE_ACCESS_R (1), _W (2) or _X (4).
   */
  pageFault(vcpu: Vcpu, gva: bigint, gpa: bigint, access: number): Awaitable<ExitAction>;

  /**
   * The guest issued the KVMI agent hypercall: VMCALL with RAX = 34, RDI = 24, RSI = 0 (EBX/ECX outside
   * 64-bit mode), kvmi-abi §5 id 2. Other hypercalls never reach the handler.
   */
  hypercall(vcpu: Vcpu): Awaitable<HypercallReply>;

  /**
   * The guest executed CPUID with EAX = `fn` and ECX = `index`, before it runs (kvmi-v7's CPUID
   * event, docs/protocol/kvmi-v7.md). `continue` executes it (the guest gets the table's leaf),
   * `retry` re-enters without executing it: the instruction is skipped when the tool moved RIP (it
   * answered the leaf itself through the registers), else it runs again; `crash` kills the VM.
   * @param insnLen length of the CPUID instruction (2, `0f a2`).
   */
  cpuid(vcpu: Vcpu, fn: number, index: number, insnLen: number): Awaitable<ExitAction>;

  /**
   * An instruction completed while single-stepping (kvmi-abi §5 id 10). `failed` is always false in
   * this model (there is no VM-entry failure to report).
   */
  singleStep(vcpu: Vcpu, failed: boolean): Awaitable<NotifyAction>;
}

/** Behaviour of a VM without introspection: every exit continues, the agent hypercall is not consumed. */
export const passThroughExitHandler: VcpuExitHandler = Object.freeze({
  onEntry: () => undefined,
  breakpoint: () => "continue" as const,
  crWrite: (_vcpu: Vcpu, _cr: 0 | 3 | 4, _old: bigint, value: bigint) => ({ action: "continue" as const, value }),
  msrWrite: (_vcpu: Vcpu, _msr: number, _old: bigint, value: bigint) => ({ action: "continue" as const, value }),
  xsetbv: () => "continue" as const,
  descriptor: () => "continue" as const,
  pageFault: () => "continue" as const,
  hypercall: () => ({ action: "continue" as const, consumed: false }),
  cpuid: () => "continue" as const,
  singleStep: () => "continue" as const,
});

/** Why an operation did not complete. */
export type AbortReason = "crashed" | "reset";

/**
 * How a driving operation ended. Operations are guest instructions; their promises always settle,
 * never reject (crash and reset settle them with `aborted`).
 * - `done`: the instruction completed; `value` is its result.
 * - `exception`: the instruction raised a guest exception (#PF from the guest page tables, #GP, #UD, or
 *   a #BP re-injected after a BREAKPOINT event); it is queued and delivered at the next entry.
 * - `skipped`: an exit handler replied RETRY after moving RIP away, so the instruction never ran.
 * - `aborted`: the VM crashed or was reset before the operation completed.
 */
export type OperationOutcome<T> =
  | { readonly status: "done"; readonly value: T }
  | { readonly status: "exception"; readonly exception: GuestException }
  | { readonly status: "skipped" }
  | { readonly status: "aborted"; readonly reason: AbortReason };
