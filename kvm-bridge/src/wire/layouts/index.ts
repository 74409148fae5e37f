// SPDX-License-Identifier: Apache-2.0
/**
 * Every v9 layout (kvmi-abi §2.3, §2.4, §3-§6) and {@link V9_LAYOUTS}, the by-name index that the C
 * cross-check and the proto-mapping test iterate.
 */
import type { Layout } from "../layout.js";
import {
  kvmiFeatures,
  kvmiGetVersionReply,
  kvmiPageAccessEntry,
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
  kvmiVcpuPause,
  kvmiVcpuTranslateGva,
  kvmiVcpuTranslateGvaReply,
  kvmiVmCheckCommand,
  kvmiVmCheckEvent,
  kvmiVmControlCleanup,
  kvmiVmControlEvents,
  kvmiVmGetInfoReply,
  kvmiVmGetMaxGfnReply,
  kvmiVmReadPhysical,
  kvmiVmSetPageAccess,
  kvmiVmWritePhysical,
} from "./commands.js";
import { kvmiErrorCode, kvmiMsgHdr, kvmiVcpuHdr } from "./common.js";
import {
  kvmiEvent,
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
import {
  qemuVmiArch,
  qemuVmiE820Entry,
  qemuVmiFromIntrospector,
  qemuVmiToIntrospector,
  qemuVmiToIntrospectorE820,
  qemuVmiToIntrospectorMaxGpa,
} from "./handshake.js";
import { kvmIntrospectionFeature, kvmIntrospectionHook } from "./ioctl.js";
import {
  kvmDtable,
  kvmiEventArch,
  kvmiEventArchMsrs,
  kvmMsrEntry,
  kvmMsrs,
  kvmRegs,
  kvmSegment,
  kvmSregs,
  kvmXsave,
} from "./x86.js";

export { kvmiErrorCode, kvmiMsgHdr, kvmiVcpuHdr } from "./common.js";
export {
  kvmDtable,
  kvmiEventArch,
  kvmiEventArchMsrs,
  kvmMsrEntry,
  kvmMsrs,
  kvmRegs,
  kvmSegment,
  kvmSregs,
  kvmXsave,
} from "./x86.js";
export {
  kvmiFeatures,
  kvmiGetVersionReply,
  kvmiPageAccessEntry,
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
  kvmiVcpuPause,
  kvmiVcpuTranslateGva,
  kvmiVcpuTranslateGvaReply,
  kvmiVmCheckCommand,
  kvmiVmCheckEvent,
  kvmiVmControlCleanup,
  kvmiVmControlEvents,
  kvmiVmGetInfoReply,
  kvmiVmGetMaxGfnReply,
  kvmiVmReadPhysical,
  kvmiVmSetPageAccess,
  kvmiVmWritePhysical,
} from "./commands.js";
export {
  kvmiEvent,
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
export {
  QEMU_VMI_COOKIE_HASH_SIZE,
  QEMU_VMI_CPU_TYPE_I386,
  QEMU_VMI_CPU_TYPE_UNKNOWN,
  QEMU_VMI_CPU_TYPE_X86_64,
  QEMU_VMI_MAX_E820_ENTRIES,
  QEMU_VMI_NAME_SIZE,
  qemuVmiArch,
  qemuVmiE820Entry,
  qemuVmiFromIntrospector,
  qemuVmiToIntrospector,
  qemuVmiToIntrospectorE820,
  qemuVmiToIntrospectorE820Body,
  qemuVmiToIntrospectorMaxGpa,
} from "./handshake.js";
export { kvmIntrospectionFeature, kvmIntrospectionHook } from "./ioctl.js";

const ALL_V9_LAYOUTS: readonly Layout[] = [
  // common.ts
  kvmiMsgHdr,
  kvmiErrorCode,
  kvmiVcpuHdr,
  // x86.ts
  kvmRegs,
  kvmSegment,
  kvmDtable,
  kvmSregs,
  kvmMsrEntry,
  kvmMsrs,
  kvmXsave,
  kvmiEventArchMsrs,
  kvmiEventArch,
  // commands.ts
  kvmiFeatures,
  kvmiGetVersionReply,
  kvmiVmCheckCommand,
  kvmiVmCheckEvent,
  kvmiVmGetInfoReply,
  kvmiVmControlEvents,
  kvmiVmReadPhysical,
  kvmiVmWritePhysical,
  kvmiVcpuGetInfoReply,
  kvmiVcpuPause,
  kvmiVcpuControlEvents,
  kvmiVcpuGetRegisters,
  kvmiVcpuGetRegistersReply,
  kvmiVcpuGetCpuid,
  kvmiVcpuGetCpuidReply,
  kvmiVmControlCleanup,
  kvmiVcpuControlCr,
  kvmiVcpuInjectException,
  kvmiVmGetMaxGfnReply,
  kvmiVcpuGetXcr,
  kvmiVcpuGetXcrReply,
  kvmiVcpuGetMtrrType,
  kvmiVcpuGetMtrrTypeReply,
  kvmiVcpuControlMsr,
  kvmiPageAccessEntry,
  kvmiVmSetPageAccess,
  kvmiVcpuControlSinglestep,
  kvmiVcpuTranslateGva,
  kvmiVcpuTranslateGvaReply,
  // events.ts
  kvmiEvent,
  kvmiEventReply,
  kvmiEventBreakpoint,
  kvmiEventCr,
  kvmiEventCrReply,
  kvmiEventTrap,
  kvmiEventXsetbv,
  kvmiEventDescriptor,
  kvmiEventMsr,
  kvmiEventMsrReply,
  kvmiEventPf,
  kvmiEventSinglestep,
  // handshake.ts
  qemuVmiToIntrospector,
  qemuVmiToIntrospectorMaxGpa,
  qemuVmiArch,
  qemuVmiE820Entry,
  qemuVmiToIntrospectorE820,
  qemuVmiFromIntrospector,
  // ioctl.ts
  kvmIntrospectionHook,
  kvmIntrospectionFeature,
];

function indexByName(layouts: readonly Layout[]): Readonly<Record<string, Layout>> {
  const out: Record<string, Layout> = {};
  for (const layout of layouts) {
    if (out[layout.name] !== undefined) throw new Error(`duplicate layout name ${layout.name}`);
    out[layout.name] = layout;
  }
  return Object.freeze(out);
}

/**
 * Every struct of the v9 ABI keyed by its C name (kvmi-abi §2.3-§6). Names that C does not have:
 * `kvmi_event_arch_msrs` (the anonymous `msrs` member of `kvmi_event_arch`), `qemu_vmi_arch`
 * (QEMU: `qemu_vmi_to_introspector_x86`), and the handshake variants
 * `qemu_vmi_to_introspector_max_gpa` / `qemu_vmi_to_introspector_e820` (QEMU: `qemu_vmi_to_introspector`).
 */
export const V9_LAYOUTS: Readonly<Record<string, Layout>> = indexByName(ALL_V9_LAYOUTS);
