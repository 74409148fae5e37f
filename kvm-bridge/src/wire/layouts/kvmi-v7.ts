// SPDX-License-Identifier: Apache-2.0
/**
 * Structs of the libkvmi product dialect `kvmi-v7` that differ from v9 or exist only there
 * (docs/protocol/kvmi-v7.md; libkvmi `include/linux/kvmi.h` and `include/linux/x86_64/asm/kvmi.h`).
 * Structs whose bytes equal v9's are not repeated: the dialect table uses the v9 layouts, and
 * {@link KVMI_V7_LAYOUTS} lists them under their kvmi-v7 C names.
 *
 * Field names follow the neutral vocabulary (wire/ops.ts): where kvmi-v7's C name differs from the
 * name the same field has in v9, our layout uses v9's and the comment gives the C name.
 */
import type { Layout } from "../layout.js";
import { array, bytes, defineLayout, pad, struct, u16, u32, u64, u64AsNumber, u8 } from "../layout.js";
import { kvmiErrorCode, kvmiMsgHdr, kvmiVcpuHdr } from "./common.js";
import {
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
  kvmiVcpuPause,
  kvmiVcpuTranslateGva,
  kvmiVcpuTranslateGvaReply,
  kvmiVmCheckCommand,
  kvmiVmCheckEvent,
  kvmiVmControlEvents,
  kvmiVmGetInfoReply,
  kvmiVmGetMaxGfnReply,
} from "./commands.js";
import {
  kvmiEventBreakpoint,
  kvmiEventCrReply,
  kvmiEventDescriptor,
  kvmiEventMsr,
  kvmiEventMsrReply,
  kvmiEventReply,
  kvmiEventSinglestep,
  kvmiEventTrap,
} from "./events.js";
import { kvmiEventArchMsrs, kvmMsrEntry, kvmMsrs, kvmRegs, kvmSregs } from "./x86.js";

/** `struct kvmi_features` of kvmi-v7 (8 bytes): SPP, VMFUNC, EPTP switching and #VE support. */
export const kvmiV7Features = defineLayout("kvmi_features", 8, {
  spp: u8(0),
  vmfunc: u8(1),
  eptp: u8(2),
  ve: u8(3),
  padding: pad(4, 4),
});

/** `struct kvmi_get_version_reply` of kvmi-v7 (16 bytes): v9's shape with kvmi-v7's features. */
export const kvmiV7GetVersionReply = defineLayout("kvmi_get_version_reply", 16, {
  version: u32(0),
  padding: pad(4, 4),
  features: struct(8, kvmiV7Features),
});

/**
 * `struct kvmi_control_cmd_response` (8 bytes): turns command replies off (`enable = 0`) and on;
 * with `now = 1` the new state already applies to this command's own reply.
 */
export const kvmiControlCmdResponse = defineLayout("kvmi_control_cmd_response", 8, {
  enable: u8(0),
  now: u8(1),
  padding1: pad(2, 2),
  padding2: pad(4, 4),
});

/** `struct kvmi_read_physical` of kvmi-v7 (16 bytes): `u64 size`, no padding; decoded as a number. */
export const kvmiV7ReadPhysical = defineLayout("kvmi_read_physical", 16, {
  gpa: u64(0),
  size: u64AsNumber(8),
});

/** `struct kvmi_write_physical` fixed part of kvmi-v7 (16 bytes); `u8 data[size]` follows @16. */
export const kvmiV7WritePhysical = defineLayout("kvmi_write_physical", 16, {
  gpa: u64(0),
  size: u64AsNumber(8),
});

/** `struct kvmi_page_access_entry` of kvmi-v7 (16 bytes): no `visible`. */
export const kvmiV7PageAccessEntry = defineLayout("kvmi_page_access_entry", 16, {
  gpa: u64(0),
  access: u8(8),
  padding1: pad(9, 1),
  padding2: pad(10, 2),
  padding3: pad(12, 4),
});

/** `struct kvmi_set_page_access` fixed part of kvmi-v7 (8 bytes): the EPT `view` first. */
export const kvmiV7SetPageAccess = defineLayout("kvmi_set_page_access", 8, {
  view: u16(0),
  count: u16(2),
  padding: pad(4, 4),
});

/**
 * `struct kvmi_get_page_access` fixed part (8 bytes; libkvmi before Oct 2020): `u64 gpa[count]`
 * follows, the reply is `u8 access[count]`.
 */
export const kvmiGetPageAccess = defineLayout("kvmi_get_page_access", 8, {
  view: u16(0),
  count: u16(2),
  padding: pad(4, 4),
});

/** `struct kvmi_control_spp` (8 bytes). */
export const kvmiControlSpp = defineLayout("kvmi_control_spp", 8, {
  enable: u8(0),
  padding1: pad(1, 1),
  padding2: pad(2, 2),
  padding3: pad(4, 4),
});

/** `struct kvmi_get_page_write_bitmap` fixed part (8 bytes; libkvmi before Oct 2020): `u64 gpa[count]` follows. */
export const kvmiGetPageWriteBitmap = defineLayout("kvmi_get_page_write_bitmap", 8, {
  view: u16(0),
  count: u16(2),
  padding: pad(4, 4),
});

/** `struct kvmi_page_write_bitmap_entry` (16 bytes): SPP write permission per 128-byte sub-page. */
export const kvmiPageWriteBitmapEntry = defineLayout("kvmi_page_write_bitmap_entry", 16, {
  gpa: u64(0),
  bitmap: u32(8),
  padding: pad(12, 4),
});

/** `struct kvmi_set_page_write_bitmap` fixed part (8 bytes): `entries[count]` follow @8. */
export const kvmiSetPageWriteBitmap = defineLayout("kvmi_set_page_write_bitmap", 8, {
  view: u16(0),
  count: u16(2),
  padding: pad(4, 4),
});

/** `struct kvmi_mem_token` (32 bytes): GET_MAP_TOKEN's reply, for `/dev/kvmmem` on the host. */
export const kvmiMemToken = defineLayout("kvmi_mem_token", 32, {
  token: array(0, "u64", 4),
});

/** `struct kvmi_query_physical` (8 bytes). */
export const kvmiQueryPhysical = defineLayout("kvmi_query_physical", 8, {
  gfn: u64(0),
});

/** `struct kvmi_query_physical_reply` (16 bytes): the memslot holding the gfn. */
export const kvmiQueryPhysicalReply = defineLayout("kvmi_query_physical_reply", 16, {
  gfn: u64(0),
  size: u64(8),
});

/** `struct kvmi_get_next_available_gfn_reply` (8 bytes). */
export const kvmiGetNextAvailableGfnReply = defineLayout("kvmi_get_next_available_gfn_reply", 8, {
  gfn: u64(0),
});

/** `struct kvmi_set_ve_info_page` (16 bytes): enable #VE with this info page. */
export const kvmiSetVeInfoPage = defineLayout("kvmi_set_ve_info_page", 16, {
  gpa: u64(0),
  trigger_vmexit: u8(8),
  padding: pad(9, 7),
});

/** `struct kvmi_switch_ept_view_req` (8 bytes). C: `__u16 padding[3]`. */
export const kvmiSwitchEptViewReq = defineLayout("kvmi_switch_ept_view_req", 8, {
  view: u16(0),
  padding: pad(2, 6),
});

/** `struct kvmi_get_ept_view_reply` (8 bytes). */
export const kvmiGetEptViewReply = defineLayout("kvmi_get_ept_view_reply", 8, {
  view: u16(0),
  padding: pad(2, 6),
});

/** `struct kvmi_control_ept_view_req` (8 bytes): may the guest switch to `view` with VMFUNC. */
export const kvmiControlEptViewReq = defineLayout("kvmi_control_ept_view_req", 8, {
  view: u16(0),
  visible: u8(2),
  padding1: pad(3, 1),
  padding2: pad(4, 4),
});

/** `struct kvmi_vcpu_change_gfn` (24 bytes). */
export const kvmiVcpuChangeGfn = defineLayout("kvmi_vcpu_change_gfn", 24, {
  view: u16(0),
  padding1: pad(2, 2),
  padding2: pad(4, 4),
  old_gfn: u64(8),
  new_gfn: u64(16),
});

/** `struct kvmi_vcpu_alloc_gfn` (8 bytes). */
export const kvmiVcpuAllocGfn = defineLayout("kvmi_vcpu_alloc_gfn", 8, {
  gfn: u64(0),
});

/** `struct kvmi_vcpu_free_gfn` (8 bytes). */
export const kvmiVcpuFreeGfn = defineLayout("kvmi_vcpu_free_gfn", 8, {
  gfn: u64(0),
});

/** `struct kvmi_create_ept_view_reply` (8 bytes). C: `__u16 pad[3]`. */
export const kvmiCreateEptViewReply = defineLayout("kvmi_create_ept_view_reply", 8, {
  view: u16(0),
  pad: pad(2, 6),
});

/** `struct kvmi_destroy_ept_view` (8 bytes). C: `__u16 pad[3]`. */
export const kvmiDestroyEptView = defineLayout("kvmi_destroy_ept_view", 8, {
  view: u16(0),
  pad: pad(2, 6),
});

/** `struct kvmi_control_cr` of kvmi-v7 (8 bytes): `enable` first and a u32 `cr`. */
export const kvmiV7ControlCr = defineLayout("kvmi_control_cr", 8, {
  enable: u8(0),
  padding1: pad(1, 1),
  padding2: pad(2, 2),
  cr: u32(4),
});

/** `struct kvmi_event_arch` of kvmi-v7 (536 bytes): v9's, with the EPT `view` @2. */
export const kvmiV7EventArch = defineLayout("kvmi_event_arch", 536, {
  /** 2, 4 or 8: 16/32/64-bit code. */
  mode: u8(0),
  padding1: pad(1, 1),
  /** The EPT view the vCPU runs in (0 without EPT views). */
  view: u16(2),
  padding2: pad(4, 4),
  regs: struct(8, kvmRegs),
  sregs: struct(152, kvmSregs),
  msrs: struct(464, kvmiEventArchMsrs),
});

/** `struct kvmi_event` of kvmi-v7 (544 bytes): v9's shape with kvmi-v7's arch. */
export const kvmiV7Event = defineLayout("kvmi_event", 544, {
  size: u16(0),
  vcpu: u16(2),
  event: u8(4),
  padding: pad(5, 3),
  arch: struct(8, kvmiV7EventArch),
});

/** `struct kvmi_event_cr` of kvmi-v7 (24 bytes): a u16 `cr`. C: `__u16 padding[3]`. */
export const kvmiV7EventCr = defineLayout("kvmi_event_cr", 24, {
  cr: u16(0),
  padding: pad(2, 6),
  old_value: u64(8),
  new_value: u64(16),
});

/** `struct kvmi_event_pf` of kvmi-v7 (24 bytes): the EPT `view` the fault happened in. */
export const kvmiV7EventPf = defineLayout("kvmi_event_pf", 24, {
  gva: u64(0),
  gpa: u64(8),
  access: u8(16),
  padding1: pad(17, 1),
  view: u16(18),
  padding2: pad(20, 4),
});

/**
 * `struct kvmi_event_pf_reply` (272 bytes): what the kernel does after a PF event: emulation
 * context (`ctx_data` returned to the guest for reads of `ctx_addr`), single-step, REP completion.
 */
export const kvmiEventPfReply = defineLayout("kvmi_event_pf_reply", 272, {
  ctx_addr: u64(0),
  ctx_size: u32(8),
  singlestep: u8(12),
  rep_complete: u8(13),
  padding: pad(14, 2),
  ctx_data: bytes(16, 256),
});

/** `struct kvmi_event_cpuid` (16 bytes): the guest executed CPUID. */
export const kvmiEventCpuid = defineLayout("kvmi_event_cpuid", 16, {
  function: u32(0),
  index: u32(4),
  insn_length: u8(8),
  padding1: pad(9, 3),
  padding2: pad(12, 4),
});

/**
 * Every struct of kvmi-v7 keyed by its kvmi-v7 C name, for the C cross-check and round trips. Some
 * values are the v9 layouts (same bytes, other C name); `kvmi_event_trap` keeps v9's field names
 * `nr`/`address` for C's `vector`/`cr2`.
 */
export const KVMI_V7_LAYOUTS: Readonly<Record<string, Layout>> = Object.freeze({
  kvmi_msg_hdr: kvmiMsgHdr,
  kvmi_error_code: kvmiErrorCode,
  kvmi_vcpu_hdr: kvmiVcpuHdr,
  kvmi_features: kvmiV7Features,
  kvmi_get_version_reply: kvmiV7GetVersionReply,
  kvmi_control_cmd_response: kvmiControlCmdResponse,
  kvmi_check_command: kvmiVmCheckCommand,
  kvmi_check_event: kvmiVmCheckEvent,
  kvmi_get_guest_info_reply: kvmiVmGetInfoReply,
  kvmi_page_access_entry: kvmiV7PageAccessEntry,
  kvmi_set_page_access: kvmiV7SetPageAccess,
  kvmi_get_page_access: kvmiGetPageAccess,
  kvmi_control_spp: kvmiControlSpp,
  kvmi_get_page_write_bitmap: kvmiGetPageWriteBitmap,
  kvmi_page_write_bitmap_entry: kvmiPageWriteBitmapEntry,
  kvmi_set_page_write_bitmap: kvmiSetPageWriteBitmap,
  kvmi_get_vcpu_info_reply: kvmiVcpuGetInfoReply,
  kvmi_pause_vcpu: kvmiVcpuPause,
  kvmi_control_events: kvmiVcpuControlEvents,
  kvmi_control_vm_events: kvmiVmControlEvents,
  kvmi_read_physical: kvmiV7ReadPhysical,
  kvmi_write_physical: kvmiV7WritePhysical,
  kvmi_query_physical: kvmiQueryPhysical,
  kvmi_query_physical_reply: kvmiQueryPhysicalReply,
  kvmi_inject_exception: kvmiVcpuInjectException,
  kvmi_event: kvmiV7Event,
  kvmi_event_reply: kvmiEventReply,
  kvmi_event_pf: kvmiV7EventPf,
  kvmi_event_pf_reply: kvmiEventPfReply,
  kvmi_event_breakpoint: kvmiEventBreakpoint,
  kvmi_mem_token: kvmiMemToken,
  kvmi_get_max_gfn_reply: kvmiVmGetMaxGfnReply,
  kvmi_get_next_available_gfn_reply: kvmiGetNextAvailableGfnReply,
  kvmi_set_ve_info_page: kvmiSetVeInfoPage,
  kvmi_switch_ept_view_req: kvmiSwitchEptViewReq,
  kvmi_get_ept_view_reply: kvmiGetEptViewReply,
  kvmi_control_ept_view_req: kvmiControlEptViewReq,
  kvmi_vcpu_get_xcr: kvmiVcpuGetXcr,
  kvmi_vcpu_get_xcr_reply: kvmiVcpuGetXcrReply,
  kvmi_vcpu_control_singlestep: kvmiVcpuControlSinglestep,
  kvmi_vcpu_translate_gva: kvmiVcpuTranslateGva,
  kvmi_vcpu_translate_gva_reply: kvmiVcpuTranslateGvaReply,
  kvmi_vcpu_change_gfn: kvmiVcpuChangeGfn,
  kvmi_vcpu_alloc_gfn: kvmiVcpuAllocGfn,
  kvmi_vcpu_free_gfn: kvmiVcpuFreeGfn,
  kvmi_create_ept_view_reply: kvmiCreateEptViewReply,
  kvmi_destroy_ept_view: kvmiDestroyEptView,
  // x86_64/asm/kvmi.h
  kvmi_event_arch: kvmiV7EventArch,
  kvmi_event_trap: kvmiEventTrap,
  kvmi_get_registers: kvmiVcpuGetRegisters,
  kvmi_get_registers_reply: kvmiVcpuGetRegistersReply,
  kvmi_get_cpuid: kvmiVcpuGetCpuid,
  kvmi_get_cpuid_reply: kvmiVcpuGetCpuidReply,
  kvmi_control_cr: kvmiV7ControlCr,
  kvmi_event_cr: kvmiV7EventCr,
  kvmi_event_cr_reply: kvmiEventCrReply,
  kvmi_control_msr: kvmiVcpuControlMsr,
  kvmi_event_msr: kvmiEventMsr,
  kvmi_event_msr_reply: kvmiEventMsrReply,
  kvmi_get_mtrr_type: kvmiVcpuGetMtrrType,
  kvmi_get_mtrr_type_reply: kvmiVcpuGetMtrrTypeReply,
  kvmi_event_descriptor: kvmiEventDescriptor,
  kvmi_event_cpuid: kvmiEventCpuid,
  kvmi_event_singlestep: kvmiEventSinglestep,
  // linux/kvm.h, shared with v9
  kvm_regs: kvmRegs,
  kvm_sregs: kvmSregs,
  kvm_msrs: kvmMsrs,
  kvm_msr_entry: kvmMsrEntry,
});
