// SPDX-License-Identifier: Apache-2.0
/**
 * Public surface of the guest model: what the emulated KVMI kernel side builds on. The kernel side
 * implements {@link VcpuExitHandler}, installs it with `guest.setExitHandler()`, and serves commands
 * from `guest.memory` and `vcpu.state`.
 */

// End-user API.
export { createGuest } from "./guest.js";
export type { Guest, GuestLifecycleEvent, GuestOptions, GuestRunState } from "./guest.js";
export {
  KVMI_DESC_GDTR, KVMI_DESC_IDTR, KVMI_DESC_LDTR, KVMI_DESC_TR, passThroughExitHandler,
} from "./exits.js";
export type {
  AbortReason, Awaitable, DescriptorKind, ExitAction, HypercallReply, NotifyAction, OperationOutcome,
  VcpuExitHandler, WriteReply,
} from "./exits.js";
export type {
  DeliveredException, DescriptorInstruction, DescriptorResult, ExecuteOptions, ExecuteResult, ExitKind,
  GuestAddress, InstructionOptions, Vcpu, VcpuRunState,
} from "./vcpu.js";
export type {
  CpuMode, GuestException, KvmDtable, KvmRegs, KvmSegment, KvmSregs, PendingException, VcpuState,
} from "./vcpu-state.js";
export {
  E820_TYPE_RAM, E820_TYPE_RESERVED, KVMI_PAGE_ACCESS_R, KVMI_PAGE_ACCESS_RWX, KVMI_PAGE_ACCESS_W,
  KVMI_PAGE_ACCESS_X, PAGE_SHIFT, PAGE_SIZE,
} from "./memory.js";
export type { E820Entry, GuestMemory, MemorySlot, NotMapped, ReadResult, WriteResult } from "./memory.js";
export { translateGva, walkPageTables } from "./paging.js";
export type { AddressSpace, MapOptions, PageWalk, PageWalkStep, PhysicalReader } from "./paging.js";
export type { PageAllocator } from "./page-allocator.js";
export { eventArchMsrs } from "./msr-file.js";
export type { KvmiEventArchMsrs, MsrFile } from "./msr-file.js";
export type { CpuidEntry, CpuidLeaf, CpuidTable } from "./cpuid.js";
export { XSAVE_AREA_BYTES } from "./xsave.js";
export type { XsaveRejectReason, XsaveSetResult, XsaveState } from "./xsave.js";
export {
  MTRR_TYPE_UNCACHABLE, MTRR_TYPE_WRBACK, MTRR_TYPE_WRCOMB, MTRR_TYPE_WRPROT, MTRR_TYPE_WRTHROUGH,
} from "./mtrr.js";
export type {
  Cr3SwitchRecord, SyscallRecord, Workload, WorkloadGroundTruth, WorkloadOptions,
} from "./scheduler.js";
export {
  DIRECT_MAP_GVA, INIT_TASK_GVA, KERNEL_BASE_GVA, KVMI_AGENT_VMCALL_GVA, LINUX_BANNER_GVA, PERCPU_CURRENT_TASK,
  PF_KTHREAD, SWITCH_MM_GVA, SYSCALL_ENTRY_GVA, TASK_COMM, TASK_COMM_LEN, TASK_CPU, TASK_CR3, TASK_FLAGS,
  TASK_NR_SYSCALLS, TASK_PID, TASK_PPID, TASK_STATE, TASK_STRUCT_SIZE, TASK_TASKS_NEXT, TASK_TASKS_PREV,
  USER_DATA_GVA, USER_INFO_MAGIC, USER_TEXT_GVA, WORKLOAD_TASKS, percpuGva,
} from "./workload.js";
export type { WorkloadTask, WorkloadTaskSpec } from "./workload.js";
export { GuestModelError } from "./errors.js";
export type { GuestModelErrorCode } from "./errors.js";

// ---------------------------------------------------------------------------------------------------
// Building blocks, exported for the emulator's own tests and tools; not semver-stable.

/** @internal */
export { createGuestMemory } from "./memory.js";
/** @internal */
export { createPageAllocator } from "./page-allocator.js";
/** @internal */
export { createAddressSpace } from "./paging.js";
/** @internal */
export { createVcpuState } from "./vcpu-state.js";
/** @internal */
export { isValidXcr0 } from "./xsave.js";
