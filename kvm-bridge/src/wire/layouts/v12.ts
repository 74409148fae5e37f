// SPDX-License-Identifier: Apache-2.0
/**
 * Structs of the upstream v12 series that differ from v9 (docs/protocol/v12.md; kvmi-abi §1.3).
 * Everything else keeps v9's bytes under a `kvmi_vcpu_*` / `kvmi_vm_*` C name; {@link V12_LAYOUTS}
 * lists the whole set under v12's C names.
 */
import type { Layout } from "../layout.js";
import { defineLayout, pad, struct, u16, u32, u64, u8 } from "../layout.js";
import { kvmiErrorCode, kvmiMsgHdr, kvmiVcpuHdr } from "./common.js";
import {
  kvmiFeatures,
  kvmiVcpuControlCr,
  kvmiVcpuControlEvents,
  kvmiVcpuControlMsr,
  kvmiVcpuControlSinglestep,
  kvmiVcpuGetCpuid,
  kvmiVcpuGetCpuidReply,
  kvmiVcpuGetInfoReply,
  kvmiVcpuGetMtrrType,
  kvmiVcpuGetMtrrTypeReply,
  kvmiVcpuGetRegisters,
  kvmiVcpuGetRegistersReply,
  kvmiVcpuGetXcr,
  kvmiVcpuGetXcrReply,
  kvmiVcpuInjectException,
  kvmiVcpuTranslateGva,
  kvmiVcpuTranslateGvaReply,
  kvmiVmCheckCommand,
  kvmiVmCheckEvent,
  kvmiVmControlEvents,
  kvmiVmGetInfoReply,
  kvmiVmReadPhysical,
  kvmiVmSetPageAccess,
  kvmiVmWritePhysical,
} from "./commands.js";
import {
  kvmiEventBreakpoint,
  kvmiEventCr,
  kvmiEventCrReply,
  kvmiEventDescriptor,
  kvmiEventMsr,
  kvmiEventMsrReply,
  kvmiEventPf,
  kvmiEventReply,
  kvmiEventSinglestep,
  kvmiEventTrap,
  kvmiEventXsetbv,
} from "./events.js";
import { kvmiEventArch, kvmMsrEntry, kvmMsrs, kvmRegs, kvmSregs, kvmXsave } from "./x86.js";

/**
 * `struct kvmi_get_version_reply` of v12 (16 bytes): v9's `padding` word carries the largest
 * message the kernel accepts (KVMI_MSG_SIZE, 8184).
 */
export const kvmiV12GetVersionReply = defineLayout("kvmi_get_version_reply", 16, {
  version: u32(0),
  max_msg_size: u32(4),
  features: struct(8, kvmiFeatures),
});

/** `struct kvmi_vm_pause_vcpu` (8 bytes): v12 pauses from the VM scope, naming the vCPU in the body. */
export const kvmiVmPauseVcpu = defineLayout("kvmi_vm_pause_vcpu", 8, {
  vcpu: u16(0),
  wait: u8(2),
  padding1: pad(3, 1),
  padding2: pad(4, 4),
});

/** `struct kvmi_vm_control_cleanup` of v12 (8 bytes): v9's bytes with the padding as one array. */
export const kvmiV12VmControlCleanup = defineLayout("kvmi_vm_control_cleanup", 8, {
  enable: u8(0),
  padding: pad(1, 7),
});

/** `struct kvmi_page_access_entry` of v12 (16 bytes): no `visible`. */
export const kvmiV12PageAccessEntry = defineLayout("kvmi_page_access_entry", 16, {
  gpa: u64(0),
  access: u8(8),
  padding: pad(9, 7),
});

/** `struct kvmi_event_hdr` (8 bytes): first in every v12 event, carrying the event id. C: `__u16 padding[3]`. */
export const kvmiEventHdr = defineLayout("kvmi_event_hdr", 8, {
  event: u16(0),
  padding: pad(2, 6),
});

/**
 * `struct kvmi_vcpu_event` (544 bytes): follows `kvmi_event_hdr` in vCPU events; `size` locates the
 * event-specific data. The arch part is v9's `kvmi_event_arch` (C: `kvmi_vcpu_event_arch`).
 */
export const kvmiVcpuEvent = defineLayout("kvmi_vcpu_event", 544, {
  size: u16(0),
  vcpu: u16(2),
  padding: pad(4, 4),
  arch: struct(8, kvmiEventArch),
});

/** Every struct of v12 keyed by its v12 C name; unchanged ones are the v9 layouts. */
export const V12_LAYOUTS: Readonly<Record<string, Layout>> = Object.freeze({
  kvmi_msg_hdr: kvmiMsgHdr,
  kvmi_error_code: kvmiErrorCode,
  kvmi_vcpu_hdr: kvmiVcpuHdr,
  kvmi_features: kvmiFeatures,
  kvmi_get_version_reply: kvmiV12GetVersionReply,
  kvmi_vm_check_command: kvmiVmCheckCommand,
  kvmi_vm_check_event: kvmiVmCheckEvent,
  kvmi_vm_get_info_reply: kvmiVmGetInfoReply,
  kvmi_vm_control_events: kvmiVmControlEvents,
  kvmi_vm_read_physical: kvmiVmReadPhysical,
  kvmi_vm_write_physical: kvmiVmWritePhysical,
  kvmi_vm_pause_vcpu: kvmiVmPauseVcpu,
  kvmi_vm_control_cleanup: kvmiV12VmControlCleanup,
  kvmi_page_access_entry: kvmiV12PageAccessEntry,
  kvmi_vm_set_page_access: kvmiVmSetPageAccess,
  kvmi_vcpu_get_info_reply: kvmiVcpuGetInfoReply,
  kvmi_vcpu_control_events: kvmiVcpuControlEvents,
  kvmi_vcpu_get_registers: kvmiVcpuGetRegisters,
  kvmi_vcpu_get_registers_reply: kvmiVcpuGetRegistersReply,
  kvmi_vcpu_get_cpuid: kvmiVcpuGetCpuid,
  kvmi_vcpu_get_cpuid_reply: kvmiVcpuGetCpuidReply,
  kvmi_vcpu_control_cr: kvmiVcpuControlCr,
  kvmi_vcpu_inject_exception: kvmiVcpuInjectException,
  kvmi_vcpu_get_xcr: kvmiVcpuGetXcr,
  kvmi_vcpu_get_xcr_reply: kvmiVcpuGetXcrReply,
  kvmi_vcpu_get_mtrr_type: kvmiVcpuGetMtrrType,
  kvmi_vcpu_get_mtrr_type_reply: kvmiVcpuGetMtrrTypeReply,
  kvmi_vcpu_control_msr: kvmiVcpuControlMsr,
  kvmi_vcpu_control_singlestep: kvmiVcpuControlSinglestep,
  kvmi_vcpu_translate_gva: kvmiVcpuTranslateGva,
  kvmi_vcpu_translate_gva_reply: kvmiVcpuTranslateGvaReply,
  kvmi_event_hdr: kvmiEventHdr,
  kvmi_vcpu_event: kvmiVcpuEvent,
  kvmi_vcpu_event_reply: kvmiEventReply,
  kvmi_vcpu_event_arch: kvmiEventArch,
  kvmi_vcpu_event_breakpoint: kvmiEventBreakpoint,
  kvmi_vcpu_event_cr: kvmiEventCr,
  kvmi_vcpu_event_cr_reply: kvmiEventCrReply,
  kvmi_vcpu_event_trap: kvmiEventTrap,
  kvmi_vcpu_event_xsetbv: kvmiEventXsetbv,
  kvmi_vcpu_event_descriptor: kvmiEventDescriptor,
  kvmi_vcpu_event_msr: kvmiEventMsr,
  kvmi_vcpu_event_msr_reply: kvmiEventMsrReply,
  kvmi_vcpu_event_pf: kvmiEventPf,
  kvmi_vcpu_event_singlestep: kvmiEventSinglestep,
  kvm_regs: kvmRegs,
  kvm_sregs: kvmSregs,
  kvm_msrs: kvmMsrs,
  kvm_msr_entry: kvmMsrEntry,
  kvm_xsave: kvmXsave,
});
