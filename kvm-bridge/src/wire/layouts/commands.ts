// SPDX-License-Identifier: Apache-2.0
/**
 * Request and reply bodies of the 25 v9 commands (kvmi-abi §4; `include/uapi/linux/kvmi.h` and
 * `arch/x86/include/uapi/asm/kvmi.h`). Request offsets are relative to the start of the body, i.e.
 * after `kvmi_msg_hdr` and, for vCPU commands, after `kvmi_vcpu_hdr`. Variable-length parts
 * (`data[size]`, `msrs_idx[nmsrs]`, `entries[count]`, `region[]`) are tails in `dialects/v9.ts`.
 *
 * `pad` marks padding the v9 kernel rejects with -KVM_EINVAL when non-zero (every request padding
 * field; GET_CPUID and GET_MTRR_TYPE have none). Reply padding is also `pad`: the kernel always
 * writes it as zero, and the check only matters where the kernel decodes.
 */
import { defineLayout, pad, struct, u16, u32, u64, u8 } from "../layout.js";
import { kvmMsrs, kvmRegs, kvmSregs } from "./x86.js";

/** `struct kvmi_features` (8 bytes, kvmi-abi §4 id 1): hardware features reported by GET_VERSION. */
export const kvmiFeatures = defineLayout("kvmi_features", 8, {
  singlestep: u8(0),
  padding: pad(1, 7),
});

/** `struct kvmi_get_version_reply` (16 bytes, kvmi-abi §4 id 1). */
export const kvmiGetVersionReply = defineLayout("kvmi_get_version_reply", 16, {
  version: u32(0),
  padding: pad(4, 4),
  features: struct(8, kvmiFeatures),
});

/** `struct kvmi_vm_check_command` (8 bytes, kvmi-abi §4 id 2). */
export const kvmiVmCheckCommand = defineLayout("kvmi_vm_check_command", 8, {
  id: u16(0),
  padding1: pad(2, 2),
  padding2: pad(4, 4),
});

/** `struct kvmi_vm_check_event` (8 bytes, kvmi-abi §4 id 3). */
export const kvmiVmCheckEvent = defineLayout("kvmi_vm_check_event", 8, {
  id: u16(0),
  padding1: pad(2, 2),
  padding2: pad(4, 4),
});

/** `struct kvmi_vm_get_info_reply` (16 bytes, kvmi-abi §4 id 4). C: `__u32 padding[3]`. */
export const kvmiVmGetInfoReply = defineLayout("kvmi_vm_get_info_reply", 16, {
  vcpu_count: u32(0),
  padding: pad(4, 12),
});

/** `struct kvmi_vm_control_events` (8 bytes, kvmi-abi §4 id 5). */
export const kvmiVmControlEvents = defineLayout("kvmi_vm_control_events", 8, {
  event_id: u16(0),
  enable: u8(2),
  padding1: pad(3, 1),
  padding2: pad(4, 4),
});

/** `struct kvmi_vm_read_physical` (16 bytes, kvmi-abi §4 id 6). The reply is `size` raw bytes. */
export const kvmiVmReadPhysical = defineLayout("kvmi_vm_read_physical", 16, {
  gpa: u64(0),
  size: u16(8),
  padding1: pad(10, 2),
  padding2: pad(12, 4),
});

/** `struct kvmi_vm_write_physical` fixed part (16 bytes, kvmi-abi §4 id 7); `data[size]` follows @16. */
export const kvmiVmWritePhysical = defineLayout("kvmi_vm_write_physical", 16, {
  gpa: u64(0),
  size: u16(8),
  padding1: pad(10, 2),
  padding2: pad(12, 4),
});

/** `struct kvmi_vcpu_get_info_reply` (8 bytes, kvmi-abi §4 id 8): TSC frequency in Hz. */
export const kvmiVcpuGetInfoReply = defineLayout("kvmi_vcpu_get_info_reply", 8, {
  tsc_speed: u64(0),
});

/** `struct kvmi_vcpu_pause` (8 bytes, kvmi-abi §4 id 9). */
export const kvmiVcpuPause = defineLayout("kvmi_vcpu_pause", 8, {
  wait: u8(0),
  padding1: pad(1, 1),
  padding2: pad(2, 2),
  padding3: pad(4, 4),
});

/** `struct kvmi_vcpu_control_events` (8 bytes, kvmi-abi §4 id 10). */
export const kvmiVcpuControlEvents = defineLayout("kvmi_vcpu_control_events", 8, {
  event_id: u16(0),
  enable: u8(2),
  padding1: pad(3, 1),
  padding2: pad(4, 4),
});

/** `struct kvmi_vcpu_get_registers` fixed part (8 bytes, kvmi-abi §4 id 11); `u32 msrs_idx[nmsrs]` follows @8. */
export const kvmiVcpuGetRegisters = defineLayout("kvmi_vcpu_get_registers", 8, {
  nmsrs: u16(0),
  padding1: pad(2, 2),
  padding2: pad(4, 4),
});

/**
 * `struct kvmi_vcpu_get_registers_reply` fixed part (472 bytes, kvmi-abi §4 id 11):
 * `kvm_msr_entry msrs.entries[msrs.nmsrs]` follows @472.
 */
export const kvmiVcpuGetRegistersReply = defineLayout("kvmi_vcpu_get_registers_reply", 472, {
  /** 2, 4 or 8. */
  mode: u32(0),
  padding: pad(4, 4),
  regs: struct(8, kvmRegs),
  sregs: struct(152, kvmSregs),
  msrs: struct(464, kvmMsrs),
});

/** `struct kvmi_vcpu_get_cpuid` (8 bytes, kvmi-abi §4 id 13). No padding. */
export const kvmiVcpuGetCpuid = defineLayout("kvmi_vcpu_get_cpuid", 8, {
  function: u32(0),
  index: u32(4),
});

/** `struct kvmi_vcpu_get_cpuid_reply` (16 bytes, kvmi-abi §4 id 13). */
export const kvmiVcpuGetCpuidReply = defineLayout("kvmi_vcpu_get_cpuid_reply", 16, {
  eax: u32(0),
  ebx: u32(4),
  ecx: u32(8),
  edx: u32(12),
});

/** `struct kvmi_vm_control_cleanup` (8 bytes, kvmi-abi §4 id 14). */
export const kvmiVmControlCleanup = defineLayout("kvmi_vm_control_cleanup", 8, {
  enable: u8(0),
  padding1: pad(1, 1),
  padding2: pad(2, 2),
  padding3: pad(4, 4),
});

/** `struct kvmi_vcpu_control_cr` (8 bytes, kvmi-abi §4 id 15). */
export const kvmiVcpuControlCr = defineLayout("kvmi_vcpu_control_cr", 8, {
  cr: u8(0),
  enable: u8(1),
  padding1: pad(2, 2),
  padding2: pad(4, 4),
});

/** `struct kvmi_vcpu_inject_exception` (16 bytes, kvmi-abi §4 id 16). */
export const kvmiVcpuInjectException = defineLayout("kvmi_vcpu_inject_exception", 16, {
  nr: u8(0),
  padding1: pad(1, 1),
  padding2: pad(2, 2),
  error_code: u32(4),
  address: u64(8),
});

/** `struct kvmi_vm_get_max_gfn_reply` (8 bytes, kvmi-abi §4 id 17). */
export const kvmiVmGetMaxGfnReply = defineLayout("kvmi_vm_get_max_gfn_reply", 8, {
  gfn: u64(0),
});

/** `struct kvmi_vcpu_get_xcr` (8 bytes, kvmi-abi §4 id 18). */
export const kvmiVcpuGetXcr = defineLayout("kvmi_vcpu_get_xcr", 8, {
  xcr: u8(0),
  padding: pad(1, 7),
});

/** `struct kvmi_vcpu_get_xcr_reply` (8 bytes, kvmi-abi §4 id 18; v9 spells the type `u64`). */
export const kvmiVcpuGetXcrReply = defineLayout("kvmi_vcpu_get_xcr_reply", 8, {
  value: u64(0),
});

/** `struct kvmi_vcpu_get_mtrr_type` (8 bytes, kvmi-abi §4 id 21). No padding. */
export const kvmiVcpuGetMtrrType = defineLayout("kvmi_vcpu_get_mtrr_type", 8, {
  gpa: u64(0),
});

/** `struct kvmi_vcpu_get_mtrr_type_reply` (8 bytes, kvmi-abi §4 id 21). */
export const kvmiVcpuGetMtrrTypeReply = defineLayout("kvmi_vcpu_get_mtrr_type_reply", 8, {
  type: u8(0),
  padding: pad(1, 7),
});

/** `struct kvmi_vcpu_control_msr` (8 bytes, kvmi-abi §4 id 22). */
export const kvmiVcpuControlMsr = defineLayout("kvmi_vcpu_control_msr", 8, {
  enable: u8(0),
  padding1: pad(1, 1),
  padding2: pad(2, 2),
  msr: u32(4),
});

/** `struct kvmi_page_access_entry` (16 bytes, kvmi-abi §4 id 23). Entry padding is checked too. */
export const kvmiPageAccessEntry = defineLayout("kvmi_page_access_entry", 16, {
  gpa: u64(0),
  /** KVMI_PAGE_ACCESS_R/W/X bits that stay allowed. */
  access: u8(8),
  visible: u8(9),
  padding1: pad(10, 2),
  padding2: pad(12, 4),
});

/** `struct kvmi_vm_set_page_access` fixed part (8 bytes, kvmi-abi §4 id 23); `entries[count]` follow @8. */
export const kvmiVmSetPageAccess = defineLayout("kvmi_vm_set_page_access", 8, {
  count: u16(0),
  padding1: pad(2, 2),
  padding2: pad(4, 4),
});

/** `struct kvmi_vcpu_control_singlestep` (8 bytes, kvmi-abi §4 id 24). */
export const kvmiVcpuControlSinglestep = defineLayout("kvmi_vcpu_control_singlestep", 8, {
  enable: u8(0),
  padding: pad(1, 7),
});

/** `struct kvmi_vcpu_translate_gva` (8 bytes, kvmi-abi §4 id 25). */
export const kvmiVcpuTranslateGva = defineLayout("kvmi_vcpu_translate_gva", 8, {
  gva: u64(0),
});

/** `struct kvmi_vcpu_translate_gva_reply` (8 bytes, kvmi-abi §4 id 25): `~0` when unmapped. */
export const kvmiVcpuTranslateGvaReply = defineLayout("kvmi_vcpu_translate_gva_reply", 8, {
  gpa: u64(0),
});
