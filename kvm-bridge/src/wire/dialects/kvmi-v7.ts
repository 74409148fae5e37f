// SPDX-License-Identifier: Apache-2.0
/**
 * The `kvmi-v7` dialect table (docs/protocol/kvmi-v7.md; kvmi-abi §1.2, §1.4, §11): Bitdefender's
 * product dialect, spoken by the KVM-VMI `kvmi-v7` kernel and QEMU branches and by every libkvmi
 * release (and so by LibVMI's KVM driver). Despite its name it is not the v7 mailing-list series.
 *
 * Compared with v9: one sparse id space (EVENT_REPLY 0, EVENT 1, commands 2..63); events arrive on
 * id 1 with v9's 544-byte `kvmi_event` whose arch carries the EPT `view`, replies go out on id 0;
 * READ/WRITE_PHYSICAL sizes are u64; SET_PAGE_ACCESS takes a view; CONTROL_CR puts `enable` first;
 * the CR event's `cr` is u16; PF replies carry 272 bytes; CONTROL_CMD_RESPONSE switches command
 * replies off and on (libkvmi's pause batch relies on it); EPT views, #VE, SPP and host mapping
 * have commands of their own; CREATE_VCPU and CPUID are extra events.
 *
 * The commands are libkvmi HEAD's (2023-11) plus GET_PAGE_ACCESS and GET_PAGE_WRITE_BITMAP, whose
 * wrappers libkvmi dropped in Oct 2020 but whose ids and layouts the kernel branch kept.
 * CONTROL_VE (12) is not listed: no source we have gives its layout.
 */
import type { Dialect } from "../dialect.js";
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
} from "../layouts/commands.js";
import { kvmiErrorCode, kvmiMsgHdr, kvmiVcpuHdr } from "../layouts/common.js";
import {
  kvmiEventBreakpoint,
  kvmiEventCrReply,
  kvmiEventDescriptor,
  kvmiEventMsr,
  kvmiEventMsrReply,
  kvmiEventReply,
  kvmiEventSinglestep,
  kvmiEventTrap,
} from "../layouts/events.js";
import {
  kvmiControlCmdResponse,
  kvmiControlEptViewReq,
  kvmiControlSpp,
  kvmiCreateEptViewReply,
  kvmiDestroyEptView,
  kvmiEventCpuid,
  kvmiEventPfReply,
  kvmiGetEptViewReply,
  kvmiGetNextAvailableGfnReply,
  kvmiGetPageAccess,
  kvmiGetPageWriteBitmap,
  kvmiMemToken,
  kvmiPageWriteBitmapEntry,
  kvmiQueryPhysical,
  kvmiQueryPhysicalReply,
  kvmiSetPageWriteBitmap,
  kvmiSetVeInfoPage,
  kvmiSwitchEptViewReq,
  kvmiV7ControlCr,
  kvmiV7Event,
  kvmiV7EventCr,
  kvmiV7EventPf,
  kvmiV7GetVersionReply,
  kvmiV7PageAccessEntry,
  kvmiV7ReadPhysical,
  kvmiV7SetPageAccess,
  kvmiV7WritePhysical,
  kvmiVcpuAllocGfn,
  kvmiVcpuChangeGfn,
  kvmiVcpuFreeGfn,
} from "../layouts/kvmi-v7.js";
import { kvmMsrEntry, kvmRegs } from "../layouts/x86.js";
import { body, command, event, finishDialect } from "./build.js";

/** `KVMI_EVENT_REPLY`: the message id of event replies (tool -> kernel). */
export const KVMI_V7_EVENT_REPLY = 0;
/** `KVMI_EVENT`: the message id of every event (kernel -> tool). */
export const KVMI_V7_EVENT = 1;
/** KVMI_MSG_SIZE = 4096 * 2 - sizeof(kvmi_msg_hdr), as in v9. */
export const KVMI_V7_MSG_SIZE = 8184;
/** KVM_CAP_INTROSPECTION: 180 in the 2023 KVM-VMI/qemu kvmi-v7 branch, 999 in kvmi-v7-2.11.93 (kvmi-abi §1.2). */
export const KVMI_V7_CAPS: readonly number[] = Object.freeze([180, 999]);
/** READ/WRITE_PHYSICAL: 0 < size <= 4096 without crossing a page (kvmi-abi §11). */
const MAX_PHYSICAL_BYTES = 4096;
/** 8 + 16 * count <= KVMI_MSG_SIZE. */
const MAX_PAGE_ACCESS_ENTRIES = 511;
/** 8 + 472 + 16 * nmsrs <= KVMI_MSG_SIZE. */
const MAX_GET_REGISTERS_MSRS = 481;
const MAX_XSAVE_BYTES = 4096;

const ALWAYS = { alwaysAllowed: true } as const;
const u64Tail = (name: string, maxCount: number) => ({ name, element: "u64", countField: "count", maxCount }) as const;

const commands = [
  command({ op: "GET_VERSION", id: 2, name: "KVMI_GET_VERSION", scope: "vm", reply: body(kvmiV7GetVersionReply), ...ALWAYS }),
  command({ op: "CHECK_COMMAND", id: 3, name: "KVMI_CHECK_COMMAND", scope: "vm", request: body(kvmiVmCheckCommand), ...ALWAYS }),
  command({ op: "CHECK_EVENT", id: 4, name: "KVMI_CHECK_EVENT", scope: "vm", request: body(kvmiVmCheckEvent), ...ALWAYS }),
  command({ op: "GET_VM_INFO", id: 5, name: "KVMI_GET_GUEST_INFO", scope: "vm", reply: body(kvmiVmGetInfoReply) }),
  command({ op: "GET_VCPU_INFO", id: 6, name: "KVMI_GET_VCPU_INFO", scope: "vcpu", reply: body(kvmiVcpuGetInfoReply) }),
  /** Carries `kvmi_vcpu_hdr`; libkvmi sends it in a batch between two CONTROL_CMD_RESPONSE. */
  command({ op: "PAUSE_VCPU", id: 7, name: "KVMI_PAUSE_VCPU", scope: "vcpu", dispatch: "receive-thread", request: body(kvmiVcpuPause) }),
  command({ op: "CONTROL_VM_EVENTS", id: 8, name: "KVMI_CONTROL_VM_EVENTS", scope: "vm", request: body(kvmiVmControlEvents) }),
  command({ op: "CONTROL_VCPU_EVENTS", id: 9, name: "KVMI_CONTROL_EVENTS", scope: "vcpu", request: body(kvmiVcpuControlEvents) }),
  command({ op: "CONTROL_CR", id: 10, name: "KVMI_CONTROL_CR", scope: "vcpu", request: body(kvmiV7ControlCr) }),
  command({ op: "CONTROL_MSR", id: 11, name: "KVMI_CONTROL_MSR", scope: "vcpu", request: body(kvmiVcpuControlMsr) }),
  command({
    op: "GET_REGISTERS",
    id: 13,
    name: "KVMI_GET_REGISTERS",
    scope: "vcpu",
    request: {
      layout: kvmiVcpuGetRegisters,
      tail: { name: "msrs_idx", element: "u32", countField: "nmsrs", maxCount: MAX_GET_REGISTERS_MSRS },
    },
    /** libkvmi requires exactly 472 + 16 * nmsrs bytes after the error code (kvmi-abi §11). */
    reply: {
      layout: kvmiVcpuGetRegistersReply,
      tail: { name: "entries", element: kvmMsrEntry, countField: "msrs.nmsrs", maxCount: MAX_GET_REGISTERS_MSRS },
    },
    closesOnShortTail: true,
  }),
  command({ op: "SET_REGISTERS", id: 14, name: "KVMI_SET_REGISTERS", scope: "vcpu", request: body(kvmRegs) }),
  command({ op: "GET_CPUID", id: 15, name: "KVMI_GET_CPUID", scope: "vcpu", request: body(kvmiVcpuGetCpuid), reply: body(kvmiVcpuGetCpuidReply) }),
  command({
    op: "GET_XSAVE",
    id: 16,
    name: "KVMI_GET_XSAVE",
    scope: "vcpu",
    reply: { layout: null, tail: { name: "region", element: "bytes" } },
  }),
  command({
    op: "READ_PHYSICAL",
    id: 17,
    name: "KVMI_READ_PHYSICAL",
    scope: "vm",
    request: body(kvmiV7ReadPhysical),
    reply: { layout: null, tail: { name: "data", element: "bytes" } },
  }),
  /** The kernel wants `hdr.size == 16 + size` exactly (kvmi-abi §11). */
  command({
    op: "WRITE_PHYSICAL",
    id: 18,
    name: "KVMI_WRITE_PHYSICAL",
    scope: "vm",
    request: { layout: kvmiV7WritePhysical, tail: { name: "data", element: "bytes", countField: "size", maxCount: MAX_PHYSICAL_BYTES } },
    closesOnShortTail: true,
  }),
  command({ op: "INJECT_EXCEPTION", id: 19, name: "KVMI_INJECT_EXCEPTION", scope: "vcpu", request: body(kvmiVcpuInjectException) }),
  /** The reply is one access byte per requested gpa; its length comes from `hdr.size`. */
  command({
    op: "GET_PAGE_ACCESS",
    id: 20,
    name: "KVMI_GET_PAGE_ACCESS",
    scope: "vm",
    request: { layout: kvmiGetPageAccess, tail: u64Tail("gpa", (KVMI_V7_MSG_SIZE - 8) / 8) },
    reply: { layout: null, tail: { name: "access", element: "bytes" } },
  }),
  command({
    op: "SET_PAGE_ACCESS",
    id: 21,
    name: "KVMI_SET_PAGE_ACCESS",
    scope: "vm",
    request: {
      layout: kvmiV7SetPageAccess,
      tail: { name: "entries", element: kvmiV7PageAccessEntry, countField: "count", maxCount: MAX_PAGE_ACCESS_ENTRIES },
    },
  }),
  command({ op: "GET_MAP_TOKEN", id: 22, name: "KVMI_GET_MAP_TOKEN", scope: "vm", reply: body(kvmiMemToken) }),
  command({
    op: "GET_MTRR_TYPE",
    id: 23,
    name: "KVMI_GET_MTRR_TYPE",
    scope: "vcpu",
    request: body(kvmiVcpuGetMtrrType),
    reply: body(kvmiVcpuGetMtrrTypeReply),
  }),
  command({ op: "CONTROL_SPP", id: 24, name: "KVMI_CONTROL_SPP", scope: "vm", request: body(kvmiControlSpp) }),
  command({
    op: "GET_PAGE_WRITE_BITMAP",
    id: 25,
    name: "KVMI_GET_PAGE_WRITE_BITMAP",
    scope: "vm",
    request: { layout: kvmiGetPageWriteBitmap, tail: u64Tail("gpa", (KVMI_V7_MSG_SIZE - 8) / 8) },
    reply: { layout: null, tail: { name: "bitmap", element: "u32" } },
  }),
  command({
    op: "SET_PAGE_WRITE_BITMAP",
    id: 26,
    name: "KVMI_SET_PAGE_WRITE_BITMAP",
    scope: "vm",
    request: {
      layout: kvmiSetPageWriteBitmap,
      tail: { name: "entries", element: kvmiPageWriteBitmapEntry, countField: "count", maxCount: MAX_PAGE_ACCESS_ENTRIES },
    },
  }),
  /** The reply switch (docs/protocol/kvmi-v7.md): `{enable = 0, now = 1}` is itself not answered. */
  command({ op: "CONTROL_CMD_RESPONSE", id: 27, name: "KVMI_CONTROL_CMD_RESPONSE", scope: "vm", request: body(kvmiControlCmdResponse) }),
  command({ op: "SET_VE_INFO_PAGE", id: 28, name: "KVMI_SET_VE_INFO_PAGE", scope: "vcpu", request: body(kvmiSetVeInfoPage) }),
  command({ op: "GET_MAX_GFN", id: 29, name: "KVMI_GET_MAX_GFN", scope: "vm", reply: body(kvmiVmGetMaxGfnReply) }),
  command({
    op: "GET_NEXT_AVAILABLE_GFN",
    id: 31,
    name: "KVMI_GET_NEXT_AVAILABLE_GFN",
    scope: "vm",
    reply: body(kvmiGetNextAvailableGfnReply),
  }),
  command({ op: "SWITCH_EPT_VIEW", id: 32, name: "KVMI_SWITCH_EPT_VIEW", scope: "vcpu", request: body(kvmiSwitchEptViewReq) }),
  command({ op: "DISABLE_VE", id: 33, name: "KVMI_DISABLE_VE", scope: "vcpu" }),
  command({ op: "GET_EPT_VIEW", id: 34, name: "KVMI_GET_EPT_VIEW", scope: "vcpu", reply: body(kvmiGetEptViewReply) }),
  command({
    op: "TRANSLATE_GVA",
    id: 35,
    name: "KVMI_VCPU_TRANSLATE_GVA",
    scope: "vcpu",
    request: body(kvmiVcpuTranslateGva),
    reply: body(kvmiVcpuTranslateGvaReply),
  }),
  command({ op: "CONTROL_EPT_VIEW", id: 36, name: "KVMI_CONTROL_EPT_VIEW", scope: "vcpu", request: body(kvmiControlEptViewReq) }),
  command({ op: "GET_XCR", id: 37, name: "KVMI_VCPU_GET_XCR", scope: "vcpu", request: body(kvmiVcpuGetXcr), reply: body(kvmiVcpuGetXcrReply) }),
  command({
    op: "SET_XSAVE",
    id: 38,
    name: "KVMI_VCPU_SET_XSAVE",
    scope: "vcpu",
    request: { layout: null, tail: { name: "region", element: "bytes", maxCount: MAX_XSAVE_BYTES } },
    closesOnShortTail: true,
  }),
  command({
    op: "QUERY_PHYSICAL",
    id: 39,
    name: "KVMI_QUERY_PHYSICAL",
    scope: "vm",
    request: body(kvmiQueryPhysical),
    reply: body(kvmiQueryPhysicalReply),
  }),
  /** libkvmi always addresses vCPU 0 for these two. */
  command({ op: "ALLOC_GFN", id: 41, name: "KVMI_VCPU_ALLOC_GFN", scope: "vcpu", request: body(kvmiVcpuAllocGfn) }),
  command({ op: "FREE_GFN", id: 42, name: "KVMI_VCPU_FREE_GFN", scope: "vcpu", request: body(kvmiVcpuFreeGfn) }),
  command({ op: "CREATE_EPT_VIEW", id: 43, name: "KVMI_CREATE_EPT_VIEW", scope: "vm", reply: body(kvmiCreateEptViewReply) }),
  command({ op: "DESTROY_EPT_VIEW", id: 44, name: "KVMI_DESTROY_EPT_VIEW", scope: "vm", request: body(kvmiDestroyEptView) }),
  command({ op: "CHANGE_GFN", id: 60, name: "KVMI_VCPU_CHANGE_GFN", scope: "vcpu", request: body(kvmiVcpuChangeGfn) }),
  command({
    op: "CONTROL_SINGLESTEP",
    id: 63,
    name: "KVMI_VCPU_CONTROL_SINGLESTEP",
    scope: "vcpu",
    request: body(kvmiVcpuControlSinglestep),
  }),
];

const RETRY = { actions: Object.freeze(["CONTINUE", "RETRY", "CRASH"] as const) } as const;

const events = [
  event({ kind: "UNHOOK", id: 0, name: "KVMI_EVENT_UNHOOK", scope: "vm", enable: "vm-control-events", actions: Object.freeze([]) }),
  event({ kind: "CR", id: 1, name: "KVMI_EVENT_CR", payload: kvmiV7EventCr, replyData: kvmiEventCrReply }),
  event({ kind: "MSR", id: 2, name: "KVMI_EVENT_MSR", payload: kvmiEventMsr, replyData: kvmiEventMsrReply }),
  /** No payload in kvmi-v7 (libkvmi expects none). */
  event({ kind: "XSETBV", id: 3, name: "KVMI_EVENT_XSETBV" }),
  event({ kind: "BREAKPOINT", id: 4, name: "KVMI_EVENT_BREAKPOINT", payload: kvmiEventBreakpoint, ...RETRY }),
  event({ kind: "HYPERCALL", id: 5, name: "KVMI_EVENT_HYPERCALL" }),
  /** The reply always carries the 272-byte `kvmi_event_pf_reply` (LibVMI sends it every time). */
  event({ kind: "PF", id: 6, name: "KVMI_EVENT_PF", payload: kvmiV7EventPf, replyData: kvmiEventPfReply, ...RETRY }),
  /** C field names `vector`/`cr2`; ours `nr`/`address` as in v9. */
  event({ kind: "TRAP", id: 7, name: "KVMI_EVENT_TRAP", enable: "implicit", payload: kvmiEventTrap }),
  event({ kind: "DESCRIPTOR", id: 8, name: "KVMI_EVENT_DESCRIPTOR", payload: kvmiEventDescriptor, ...RETRY }),
  event({ kind: "CREATE_VCPU", id: 9, name: "KVMI_EVENT_CREATE_VCPU" }),
  event({ kind: "PAUSE_VCPU", id: 10, name: "KVMI_EVENT_PAUSE_VCPU", enable: "implicit" }),
  event({ kind: "SINGLESTEP", id: 11, name: "KVMI_EVENT_SINGLESTEP", enable: "implicit", payload: kvmiEventSinglestep }),
  /** Id 12 (CMD_ERROR) exists only in a kvmi-rs copy of the header; libkvmi rejects it. */
  event({ kind: "CPUID", id: 13, name: "KVMI_EVENT_CPUID", payload: kvmiEventCpuid, ...RETRY }),
];

/**
 * The kvmi-v7 dialect: KVMI version 1, KVMI_MSG_SIZE 8184, ioctls 0xff (HOOK), 0xfb (UNHOOK),
 * 0xfd (COMMAND), 0xfc (EVENT), 0xfe (PREUNHOOK), KVM_CAP_INTROSPECTION 180 or 999.
 */
export const kvmiV7: Dialect = finishDialect({
  name: "kvmi-v7",
  kvmiVersion: 1,
  maxMessageBytes: KVMI_V7_MSG_SIZE,
  eventFraming: Object.freeze({
    vmEventMessageId: KVMI_V7_EVENT,
    vcpuEventMessageId: KVMI_V7_EVENT,
    replyMessageId: KVMI_V7_EVENT_REPLY,
    vmEventsCarryCommon: true,
  }),
  /** KVM_NUM_MESSAGES = 64 (the last id is 63) and KVMI_NUM_EVENTS = 14. */
  numMessages: 64,
  numEvents: 14,
  layouts: Object.freeze({
    msgHdr: kvmiMsgHdr,
    errorCode: kvmiErrorCode,
    vcpuHdr: kvmiVcpuHdr,
    eventHdr: null,
    event: kvmiV7Event,
    eventReply: kvmiEventReply,
  }),
  limits: Object.freeze({
    maxPhysicalBytes: MAX_PHYSICAL_BYTES,
    maxPageAccessEntries: MAX_PAGE_ACCESS_ENTRIES,
    maxGetRegistersMsrs: MAX_GET_REGISTERS_MSRS,
    maxXsaveBytes: MAX_XSAVE_BYTES,
    /** Not known for kvmi-v7. */
    maxPendingPauses: null,
  }),
  ioctls: Object.freeze({
    hook: 0xff,
    unhook: 0xfb,
    command: 0xfd,
    event: 0xfc,
    preunhook: 0xfe,
    capIntrospection: KVMI_V7_CAPS,
  }),
  replyControlOp: "CONTROL_CMD_RESPONSE",
  commands,
  events,
});
