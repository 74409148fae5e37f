// SPDX-License-Identifier: Apache-2.0
/**
 * What the emulated KVMI kernel needs from the guest, and nothing more: the same things real KVM
 * reaches through `struct kvm` and `struct kvm_vcpu`. Keeping this port narrow lets the kernel be
 * tested against the guest model and lets the guest model evolve without touching KVMI code.
 */
import type { LayoutValue } from "../../wire/layout.js";
import type { kvmRegs, kvmSregs } from "../../wire/layouts/x86.js";

export type KvmRegs = LayoutValue<typeof kvmRegs>;
/**
 * A value now, or later: the emulated guest answers at once, a guest behind QEMU's gdbstub
 * (kvm-bridge/src/qemu/) needs a round trip. The kernel side keeps its synchronous path for the former.
 */
export type MaybePromise<T> = T | Promise<T>;

/** True when a port answered asynchronously. */
export function isPromise<T>(value: MaybePromise<T>): value is Promise<T> {
  return typeof (value as { then?: unknown } | undefined)?.then === "function";
}
export type KvmSregs = LayoutValue<typeof kvmSregs>;

/** One CPUID leaf. */
export interface CpuidLeaf {
  readonly eax: number;
  readonly ebx: number;
  readonly ecx: number;
  readonly edx: number;
}

/** A vCPU as KVM sees it. */
export interface VcpuPort {
  readonly index: number;
  /** False while the vCPU is in KVM_MP_STATE_UNINITIALIZED (an AP not yet started): EAGAIN. */
  readonly initialized: boolean;
  /** True while its thread is inside KVM_RUN; jobs and events wait while the VM is stopped. */
  readonly running: boolean;
  getRegs(): KvmRegs;
  setRegs(regs: KvmRegs): void;
  getSregs(): KvmSregs;
  /** 2, 4 or 8: 16/32/64-bit code (kvmi-abi §6 `mode`). */
  mode(): number;
  /** Current value of an MSR, or undefined when the MSR does not exist (EINVAL for GET_REGISTERS). */
  readMsr(index: number): bigint | undefined;
  cpuid(fn: number, index: number): CpuidLeaf | undefined;
  xcr0(): bigint;
  /** The 4096-byte `struct kvm_xsave`. */
  getXsave(): Uint8Array;
  /** Loads an XSAVE area (already zero-extended to 4096 bytes); false when KVM would reject it. */
  setXsave(region: Uint8Array): boolean;
  mtrrType(gpa: bigint): number;
  tscHz(): bigint;
  /** Guest page walk with the vCPU's current paging mode; undefined when unmapped. */
  translate(gva: bigint): MaybePromise<bigint | undefined>;
  /**
   * Brings the synchronous state accessors (registers, MSRs, mode) up to date before vCPU jobs run
   * and before an event's `kvmi_event_arch` is taken. Absent for a guest whose state is always at hand.
   */
  refresh?(): Promise<void>;
  /** Queues an exception for delivery to the guest at this entry (what KVM injects). */
  queueException(vector: number, errorCode: number, address: bigint): void;
  /** The exception the guest already has pending, if any (e.g. #BP re-injected after CONTINUE). */
  pendingException(): { readonly vector: number; readonly errorCode: number; readonly address: bigint } | undefined;
  /**
   * Turns the monitor trap flag on or off: while on, the guest calls the `singleStep` exit after
   * every instruction (KVMI_VCPU_CONTROL_SINGLESTEP, kvmi-abi §4 id 24).
   */
  setSinglestep(enabled: boolean): void;
  /** Forces an entry soon, also from halt (an IPI); no effect while the vCPU is stopped. */
  kick(): void;
  /** Subscribes to the vCPU re-entering KVM_RUN after the device manager stopped it. */
  onResume(listener: () => void): () => void;
}

/** The VM as KVM sees it. */
export interface GuestPort {
  readonly vcpus: readonly VcpuPort[];
  /**
   * Reads guest physical memory inside one page; undefined when a page is not mapped (ENOENT). The
   * bytes may be a view of guest memory: encode them before the guest runs again.
   */
  readPhysical(gpa: bigint, size: number): MaybePromise<Uint8Array | undefined>;
  /** Writes guest physical memory inside one page; false when not mapped (ENOENT). */
  writePhysical(gpa: bigint, data: Uint8Array): MaybePromise<boolean>;
  /** 1 + highest GFN of the user memslots (KVMI_VM_GET_MAX_GFN). */
  maxGfn(): bigint;
  /** True when a memslot covers the GFN (SET_PAGE_ACCESS `visible`). */
  isGfnVisible(gfn: bigint): boolean;
  /**
   * The EPT/NPT access the guest may use on a GFN (7 = rwx, no restriction). A guest that cannot
   * enforce a restriction answers with a KVM errno (e.g. -KVM_EOPNOTSUPP), and may answer later
   * (QEMU inserts gdbstub watchpoints); undefined or 0 is success.
   */
  setPageAccess(gfn: bigint, access: number): MaybePromise<number | void>;
  /** The access the guest may use on a GFN now (7 when unrestricted; kvmi-v7 GET_PAGE_ACCESS). */
  pageAccess(gfn: bigint): number;
  /** Drops every restriction (KVM_INTROSPECTION_UNHOOK, kvmi-abi §2.6 step 6). */
  clearPageAccess(): void;
  /**
   * v9 CRASH: SIGTERM to every vCPU thread, which ends QEMU (kvmi-abi §3.5, §1.3 item 10).
   * The device manager reacts as to any VM termination.
   */
  crash(reason: string): void;
}

/** Capabilities of the emulated host that change v9 answers (kvmi-abi §4, §7). */
export interface HostFeatures {
  /** VMX monitor trap flag: GET_VERSION features.singlestep and CONTROL_SINGLESTEP (else EOPNOTSUPP). */
  readonly singlestep: boolean;
  /** Descriptor-table exits: CONTROL_EVENTS(DESCRIPTOR) (else EOPNOTSUPP). */
  readonly descriptorExits: boolean;
  /** Userspace holds #BP interception (KVM_SET_GUEST_DEBUG): CONTROL_EVENTS(BREAKPOINT) is EBUSY. */
  readonly userspaceBreakpoints: boolean;
}

/** Defaults: an Intel host with everything available, as in the v9 selftest on VMX. */
export const DEFAULT_HOST_FEATURES: HostFeatures = {
  singlestep: true,
  descriptorExits: true,
  userspaceBreakpoints: false,
};
