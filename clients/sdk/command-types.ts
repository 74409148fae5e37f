// SPDX-License-Identifier: Apache-2.0
/**
 * The public shapes of the typed commands: {@link VmCommands} (one method per KVMI v9 command plus
 * the memory helpers of any length), their argument and result types, and {@link PAGE_ACCESS}.
 * Separate from `commands.ts` (which builds requests and reads responses) so that the API a caller
 * programs against, and that `profile/`, `gdb/` and `dump/` depend on, reads in one place without
 * the wire conversions.
 *
 * Values the wire holds as u64 (addresses, registers, MSR values, GFNs, TSC) are `bigint`.
 *
 * @see ../../proto/kvmi/v1/command.proto
 */
import type { Command, CpuMode, MtrrType, Regs, Sregs } from "@kvmi/proto";
import type { CallOptions } from "./channel.js";
import type { KvmiBridgeError, MemoryHoleInfo } from "./errors.js";
import type { EventName, VcpuEventName } from "./names.js";

/** The 18 general purpose registers, `struct kvm_regs`; all are required because the kernel writes every one. */
export type X86Regs = Omit<Regs, "$typeName" | "$unknown">;

/** Result of {@link VmCommands.getVersion} (`struct kvmi_get_version_reply`). */
export interface VersionInfo {
  /** KVMI API version; 1 for v9. */
  readonly version: number;
  /** Whether the host can single-step vCPUs (`features.singlestep`). */
  readonly singlestep: boolean;
  /** Largest message body the kernel accepts, in bytes. */
  readonly maxMsgSize: number;
}

/** Result of {@link VmCommands.getRegisters} (`struct kvmi_vcpu_get_registers_reply`). */
export interface RegistersSnapshot {
  /** The code size the vCPU executes (`CPU_MODE_BITS_64`, …). */
  readonly mode: CpuMode;
  readonly regs: Regs;
  readonly sregs: Sregs;
  /** The requested MSRs by index, in request order. */
  readonly msrs: ReadonlyMap<number, bigint>;
}

/** Result of {@link VmCommands.getCpuid}. */
export interface CpuidLeaf {
  readonly eax: number;
  readonly ebx: number;
  readonly ecx: number;
  readonly edx: number;
}

/** Result of {@link VmCommands.getMtrrType}. */
export interface MtrrTypeInfo {
  /** The memory type; `MTRR_TYPE_UNSPECIFIED` if the kernel value is unknown. */
  readonly type: MtrrType;
  /** The kernel value, 0..255. */
  readonly rawType: number;
}

/** Page access bits of {@link VmCommands.setPageAccess} (`KVMI_PAGE_ACCESS_*`). */
export const PAGE_ACCESS = Object.freeze({ R: 1, W: 2, X: 4, RWX: 7 });

/** One entry of {@link VmCommands.setPageAccess}. */
export interface PageAccessInput {
  /** A guest physical address inside the page. */
  readonly gpa: bigint;
  /** Allowed access bits: R = 1, W = 2, X = 4 ({@link PAGE_ACCESS}); 7 removes the restriction. */
  readonly access: number;
  /** Require the page to be visible to the guest (v9 `visible`); default false. */
  readonly visible?: boolean;
}

/** How a virtual address is translated: with a vCPU's current paging (its index), or by walking the tables at a CR3. */
export type TranslationTarget = number | { readonly cr3: bigint };

/** One range of {@link VmCommands.batchReadMemory}. */
export interface MemoryRangeInput {
  /** Guest physical address, or guest virtual address when `via` is set. */
  readonly address: bigint;
  /** Bytes to read, at least 1. */
  readonly length: number | bigint;
  /** Translate `address` as a virtual address with this vCPU or CR3; physical when absent. */
  readonly via?: TranslationTarget;
}

/** One result of {@link VmCommands.batchReadMemory}. */
export type MemoryRangeResultInfo =
  | { readonly ok: true; readonly data: Uint8Array; readonly holes: readonly MemoryHoleInfo[] }
  | { readonly ok: false; readonly error: KvmiBridgeError; readonly holes: readonly MemoryHoleInfo[] };

/** Options of {@link VmCommands.getRegisters}. */
export interface GetRegistersOptions extends CallOptions {
  /** MSR indexes to read as well (at most 481), e.g. `0xc0000080` (EFER). */
  readonly msrs?: readonly number[];
}

/** Options of {@link VmCommands.pauseVcpu}. */
export interface PauseVcpuOptions extends CallOptions {
  /** Wait for the vCPU to acknowledge the kick before replying (`wait`). */
  readonly wait?: boolean;
}

/** An exception for {@link VmCommands.injectException}. */
export interface ExceptionInput {
  /** Vector 0..255, e.g. 14 for #PF. */
  readonly vector: number;
  /** Error code, used when the vector pushes one. */
  readonly errorCode?: number;
  /** CR2 for #PF. */
  readonly address?: bigint;
}

/**
 * The KVMI commands of one VM, with typed arguments and results. Methods that change guest state
 * (writes, pauses, event and interception control, registers, page access, single-step) need the
 * controller: run them on a controller {@link Session}, or on a {@link VmHandle} created with the
 * controller's session id. Every method accepts {@link CallOptions} (`signal`, `timeoutMs`) last.
 *
 * @throws KvmiBridgeError subclasses: InvalidArgumentError (bad range, vCPU index), NotFoundError
 *   (unknown VM, unbacked memory), PermissionDeniedError (not allowed, or not the controller),
 *   UnavailableError (VM not hooked, vCPU not started; reads are retried), …
 * @see ../../proto/kvmi/v1/command.proto for each command's errors.
 */
export interface VmCommands {
  /** The VM's UUID. */
  readonly uuid: string;

  /** KVMI_GET_VERSION: the KVMI version and features. */
  getVersion(options?: CallOptions): Promise<VersionInfo>;
  /** KVMI_VM_CHECK_COMMAND: resolves if the command is supported and allowed. @throws NotFoundError, PermissionDeniedError */
  checkCommand(command: Command, options?: CallOptions): Promise<void>;
  /** KVMI_VM_CHECK_EVENT: resolves if the event is supported and allowed. @throws NotFoundError, PermissionDeniedError */
  checkEvent(event: EventName, options?: CallOptions): Promise<void>;
  /** KVMI_VM_GET_INFO: the number of online vCPUs. */
  getVmInfo(options?: CallOptions): Promise<{ readonly vcpuCount: number }>;
  /** KVMI_VM_CONTROL_EVENTS: enables or disables the UNHOOK event (the only VM event). Controller only. */
  controlVmEvents(event: "unhook", enable: boolean, options?: CallOptions): Promise<void>;
  /** KVMI_VM_READ_PHYSICAL: 1..4096 bytes within one page. Use {@link readPhysical} for any length. */
  readPhysicalMemory(gpa: bigint, size: number, options?: CallOptions): Promise<Uint8Array>;
  /** KVMI_VM_WRITE_PHYSICAL: 1..4096 bytes within one page. Controller only. Use {@link writePhysical} for any length. */
  writePhysicalMemory(gpa: bigint, data: Uint8Array, options?: CallOptions): Promise<void>;
  /** KVMI_VM_CONTROL_CLEANUP: whether unhooking restores KVM's interception state. Controller only. */
  controlCleanup(enable: boolean, options?: CallOptions): Promise<void>;
  /** KVMI_VM_GET_MAX_GFN: the first guest frame number past guest memory. */
  getMaxGfn(options?: CallOptions): Promise<bigint>;
  /** KVMI_VM_SET_PAGE_ACCESS: R/W/X access of 1..511 pages (EPT). Controller only. */
  setPageAccess(entries: readonly PageAccessInput[], options?: CallOptions): Promise<void>;
  /** BatchReadMemory: many ranges of any length, physical or virtual; unreadable pages are holes. */
  batchReadMemory(ranges: readonly MemoryRangeInput[], options?: CallOptions): Promise<MemoryRangeResultInfo[]>;

  /** KVMI_VCPU_GET_INFO: the guest TSC frequency in Hz (0 without TSC scaling). */
  getVcpuInfo(vcpu: number, options?: CallOptions): Promise<{ readonly tscSpeed: bigint }>;
  /** KVMI_VCPU_PAUSE: kicks the vCPU; one `pauseVcpu` event follows. Controller only. */
  pauseVcpu(vcpu: number, options?: PauseVcpuOptions): Promise<void>;
  /** KVMI_VCPU_CONTROL_EVENTS: enables or disables a vCPU event. Controller only. */
  controlVcpuEvents(vcpu: number, event: VcpuEventName, enable: boolean, options?: CallOptions): Promise<void>;
  /** KVMI_VCPU_GET_REGISTERS: mode, general and special registers, and the requested MSRs. */
  getRegisters(vcpu: number, options?: GetRegistersOptions): Promise<RegistersSnapshot>;
  /** KVMI_VCPU_SET_REGISTERS: all 18 registers, only while the vCPU waits for an event reply. Controller only. */
  setRegisters(vcpu: number, regs: X86Regs, options?: CallOptions): Promise<void>;
  /** KVMI_VCPU_GET_CPUID: a guest-visible CPUID leaf. @throws NotFoundError for a missing leaf */
  getCpuid(vcpu: number, fn: number, index?: number, options?: CallOptions): Promise<CpuidLeaf>;
  /** KVMI_VCPU_CONTROL_CR: selects CR0, CR3 or CR4 for `cr` events. Controller only. */
  controlCr(vcpu: number, cr: 0 | 3 | 4, enable: boolean, options?: CallOptions): Promise<void>;
  /** KVMI_VCPU_INJECT_EXCEPTION: queues an exception; a `trap` event follows. Controller only. */
  injectException(vcpu: number, exception: ExceptionInput, options?: CallOptions): Promise<void>;
  /** KVMI_VCPU_GET_XCR: XCR0. */
  getXcr(vcpu: number, xcr?: number, options?: CallOptions): Promise<bigint>;
  /** KVMI_VCPU_GET_XSAVE: the raw `struct kvm_xsave`. */
  getXsave(vcpu: number, options?: CallOptions): Promise<Uint8Array>;
  /** KVMI_VCPU_SET_XSAVE: loads an XSAVE area (at most 4096 bytes). Controller only. */
  setXsave(vcpu: number, region: Uint8Array, options?: CallOptions): Promise<void>;
  /** KVMI_VCPU_GET_MTRR_TYPE: the guest memory type of a page. */
  getMtrrType(vcpu: number, gpa: bigint, options?: CallOptions): Promise<MtrrTypeInfo>;
  /** KVMI_VCPU_CONTROL_MSR: selects an MSR for `msr` write events. Controller only. */
  controlMsr(vcpu: number, msr: number, enable: boolean, options?: CallOptions): Promise<void>;
  /** KVMI_VCPU_CONTROL_SINGLESTEP: starts or stops single-stepping. Controller only. @throws UnimplementedError without hardware support */
  controlSingleStep(vcpu: number, enable: boolean, options?: CallOptions): Promise<void>;
  /** KVMI_VCPU_TRANSLATE_GVA: the GPA of a GVA with the vCPU's current paging; `undefined` if unmapped. */
  translateGva(vcpu: number, gva: bigint, options?: CallOptions): Promise<bigint | undefined>;

  /**
   * Reads guest physical memory of any length (BatchReadMemory, in chunks of 2 MiB).
   * @throws MemoryHoleError if part of the range is not backed (its `data` holds the rest).
   */
  readPhysical(gpa: bigint, length: number, options?: CallOptions): Promise<Uint8Array>;
  /**
   * Reads guest virtual memory of any length; each page is translated on its own, with the vCPU's
   * paging (`via` = vCPU index) or by walking the page tables at `via.cr3`.
   * @throws MemoryHoleError if a page is unmapped or not backed (its `data` holds the rest).
   */
  readVirtual(via: TranslationTarget, gva: bigint, length: number, options?: CallOptions): Promise<Uint8Array>;
  /** Writes guest physical memory of any length, page by page. Controller only. */
  writePhysical(gpa: bigint, data: Uint8Array, options?: CallOptions): Promise<void>;
  /**
   * Writes guest virtual memory of any length: translates every page first and writes only if all
   * are mapped. Controller only.
   * @throws MemoryHoleError (nothing written) if a page is unmapped.
   */
  writeVirtual(via: TranslationTarget, gva: bigint, data: Uint8Array, options?: CallOptions): Promise<void>;
  /** Translates a GVA with a vCPU (KVMI_VCPU_TRANSLATE_GVA) or a CR3 (a software page walk); `undefined` if unmapped. */
  translate(via: TranslationTarget, gva: bigint, options?: CallOptions): Promise<bigint | undefined>;
}
