// SPDX-License-Identifier: Apache-2.0
/**
 * The v12 dialect table (docs/protocol/v12.md; kvmi-abi §1.2, §1.3, §4.1 b): the last upstream
 * "VM introspection" series, carried by the KVM-VMI `kvmi-v12` kernel and QEMU branches. Compared
 * with v9: VM message ids are even (2n) and vCPU ids odd (2n+1); events start with `kvmi_event_hdr`,
 * VM events arrive on id 0 and vCPU events (and their replies) on id 1; pausing is the VM command
 * VM_PAUSE_VCPU; GET_VERSION reports `max_msg_size`; there is no VM_GET_MAX_GFN.
 */
import type { Dialect } from "../dialect.js";
import {
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
} from "../layouts/commands.js";
import { kvmiErrorCode, kvmiMsgHdr, kvmiVcpuHdr } from "../layouts/common.js";
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
} from "../layouts/events.js";
import {
  kvmiEventHdr,
  kvmiV12GetVersionReply,
  kvmiV12PageAccessEntry,
  kvmiV12VmControlCleanup,
  kvmiVcpuEvent,
  kvmiVmPauseVcpu,
} from "../layouts/v12.js";
import { kvmMsrEntry, kvmRegs, kvmXsave } from "../layouts/x86.js";
import { body, command, event, finishDialect } from "./build.js";

/** `KVMI_VM_MESSAGE_ID(n) = n << 1` (kvmi-abi §1.3 item 1). */
const vm = (n: number): number => n << 1;
/** `KVMI_VCPU_MESSAGE_ID(n) = (n << 1) | 1` (kvmi-abi §1.3 item 1). */
const vcpu = (n: number): number => (n << 1) | 1;

/** KVMI_MSG_SIZE, unchanged from v9; v12 also reports it in GET_VERSION's `max_msg_size`. */
export const V12_KVMI_MSG_SIZE = 8184;
/** KVM_CAP_INTROSPECTION in the KVM-VMI/qemu kvmi-v12 headers (kvmi-abi §1.2). */
export const V12_KVM_CAP_INTROSPECTION = 206;
/** 8 + 16 * count <= KVMI_MSG_SIZE (the entry keeps 16 bytes without `visible`). */
const MAX_PAGE_ACCESS_ENTRIES = 511;
/** 8 + 472 + 16 * nmsrs <= KVMI_MSG_SIZE. */
const MAX_GET_REGISTERS_MSRS = 481;

const ALWAYS = { alwaysAllowed: true } as const;

const commands = [
  command({ op: "GET_VERSION", id: vm(1), name: "KVMI_GET_VERSION", scope: "vm", reply: body(kvmiV12GetVersionReply), ...ALWAYS }),
  command({ op: "CHECK_COMMAND", id: vm(2), name: "KVMI_VM_CHECK_COMMAND", scope: "vm", request: body(kvmiVmCheckCommand), ...ALWAYS }),
  command({ op: "CHECK_EVENT", id: vm(3), name: "KVMI_VM_CHECK_EVENT", scope: "vm", request: body(kvmiVmCheckEvent), ...ALWAYS }),
  command({ op: "GET_VM_INFO", id: vm(4), name: "KVMI_VM_GET_INFO", scope: "vm", reply: body(kvmiVmGetInfoReply) }),
  command({ op: "CONTROL_VM_EVENTS", id: vm(5), name: "KVMI_VM_CONTROL_EVENTS", scope: "vm", request: body(kvmiVmControlEvents) }),
  command({
    op: "READ_PHYSICAL",
    id: vm(6),
    name: "KVMI_VM_READ_PHYSICAL",
    scope: "vm",
    request: body(kvmiVmReadPhysical),
    reply: { layout: null, tail: { name: "data", element: "bytes" } },
  }),
  command({
    op: "WRITE_PHYSICAL",
    id: vm(7),
    name: "KVMI_VM_WRITE_PHYSICAL",
    scope: "vm",
    request: { layout: kvmiVmWritePhysical, tail: { name: "data", element: "bytes", countField: "size", maxCount: 4096 } },
    closesOnShortTail: true,
  }),
  /** A VM command that names its vCPU in the body; answered by the receive thread. */
  command({ op: "PAUSE_VCPU", id: vm(8), name: "KVMI_VM_PAUSE_VCPU", scope: "vm", vcpuField: "vcpu", request: body(kvmiVmPauseVcpu) }),
  command({ op: "CONTROL_CLEANUP", id: vm(9), name: "KVMI_VM_CONTROL_CLEANUP", scope: "vm", request: body(kvmiV12VmControlCleanup) }),
  command({
    op: "SET_PAGE_ACCESS",
    id: vm(10),
    name: "KVMI_VM_SET_PAGE_ACCESS",
    scope: "vm",
    request: {
      layout: kvmiVmSetPageAccess,
      tail: { name: "entries", element: kvmiV12PageAccessEntry, countField: "count", maxCount: MAX_PAGE_ACCESS_ENTRIES },
    },
  }),
  command({ op: "GET_VCPU_INFO", id: vcpu(1), name: "KVMI_VCPU_GET_INFO", scope: "vcpu", reply: body(kvmiVcpuGetInfoReply) }),
  command({ op: "CONTROL_VCPU_EVENTS", id: vcpu(2), name: "KVMI_VCPU_CONTROL_EVENTS", scope: "vcpu", request: body(kvmiVcpuControlEvents) }),
  command({
    op: "GET_REGISTERS",
    id: vcpu(3),
    name: "KVMI_VCPU_GET_REGISTERS",
    scope: "vcpu",
    request: {
      layout: kvmiVcpuGetRegisters,
      tail: { name: "msrs_idx", element: "u32", countField: "nmsrs", maxCount: MAX_GET_REGISTERS_MSRS },
    },
    reply: {
      layout: kvmiVcpuGetRegistersReply,
      tail: { name: "entries", element: kvmMsrEntry, countField: "msrs.nmsrs", maxCount: MAX_GET_REGISTERS_MSRS },
    },
    closesOnShortTail: true,
  }),
  command({ op: "SET_REGISTERS", id: vcpu(4), name: "KVMI_VCPU_SET_REGISTERS", scope: "vcpu", request: body(kvmRegs) }),
  command({
    op: "GET_CPUID",
    id: vcpu(5),
    name: "KVMI_VCPU_GET_CPUID",
    scope: "vcpu",
    request: body(kvmiVcpuGetCpuid),
    reply: body(kvmiVcpuGetCpuidReply),
  }),
  command({ op: "CONTROL_CR", id: vcpu(6), name: "KVMI_VCPU_CONTROL_CR", scope: "vcpu", request: body(kvmiVcpuControlCr) }),
  command({ op: "INJECT_EXCEPTION", id: vcpu(7), name: "KVMI_VCPU_INJECT_EXCEPTION", scope: "vcpu", request: body(kvmiVcpuInjectException) }),
  command({ op: "GET_XCR", id: vcpu(8), name: "KVMI_VCPU_GET_XCR", scope: "vcpu", request: body(kvmiVcpuGetXcr), reply: body(kvmiVcpuGetXcrReply) }),
  /** Reply and request are a whole `struct kvm_xsave` in v12 (kvmi-abi §1.3 item 9). */
  command({ op: "GET_XSAVE", id: vcpu(9), name: "KVMI_VCPU_GET_XSAVE", scope: "vcpu", reply: body(kvmXsave) }),
  command({ op: "SET_XSAVE", id: vcpu(10), name: "KVMI_VCPU_SET_XSAVE", scope: "vcpu", request: body(kvmXsave) }),
  command({
    op: "GET_MTRR_TYPE",
    id: vcpu(11),
    name: "KVMI_VCPU_GET_MTRR_TYPE",
    scope: "vcpu",
    request: body(kvmiVcpuGetMtrrType),
    reply: body(kvmiVcpuGetMtrrTypeReply),
  }),
  command({ op: "CONTROL_MSR", id: vcpu(12), name: "KVMI_VCPU_CONTROL_MSR", scope: "vcpu", request: body(kvmiVcpuControlMsr) }),
  command({
    op: "CONTROL_SINGLESTEP",
    id: vcpu(13),
    name: "KVMI_VCPU_CONTROL_SINGLESTEP",
    scope: "vcpu",
    request: body(kvmiVcpuControlSinglestep),
  }),
  command({
    op: "TRANSLATE_GVA",
    id: vcpu(14),
    name: "KVMI_VCPU_TRANSLATE_GVA",
    scope: "vcpu",
    request: body(kvmiVcpuTranslateGva),
    reply: body(kvmiVcpuTranslateGvaReply),
  }),
];

const RETRY = { actions: Object.freeze(["CONTINUE", "RETRY", "CRASH"] as const) } as const;

const events = [
  event({
    kind: "UNHOOK",
    id: vm(0),
    name: "KVMI_VM_EVENT_UNHOOK",
    scope: "vm",
    enable: "vm-control-events",
    actions: Object.freeze([]),
  }),
  event({ kind: "PAUSE_VCPU", id: vcpu(0), name: "KVMI_VCPU_EVENT_PAUSE", enable: "implicit" }),
  event({ kind: "HYPERCALL", id: vcpu(1), name: "KVMI_VCPU_EVENT_HYPERCALL" }),
  event({ kind: "BREAKPOINT", id: vcpu(2), name: "KVMI_VCPU_EVENT_BREAKPOINT", payload: kvmiEventBreakpoint, ...RETRY }),
  event({ kind: "CR", id: vcpu(3), name: "KVMI_VCPU_EVENT_CR", payload: kvmiEventCr, replyData: kvmiEventCrReply }),
  event({ kind: "TRAP", id: vcpu(4), name: "KVMI_VCPU_EVENT_TRAP", enable: "implicit", payload: kvmiEventTrap }),
  event({ kind: "XSETBV", id: vcpu(5), name: "KVMI_VCPU_EVENT_XSETBV", payload: kvmiEventXsetbv }),
  event({ kind: "DESCRIPTOR", id: vcpu(6), name: "KVMI_VCPU_EVENT_DESCRIPTOR", payload: kvmiEventDescriptor, ...RETRY }),
  event({ kind: "MSR", id: vcpu(7), name: "KVMI_VCPU_EVENT_MSR", payload: kvmiEventMsr, replyData: kvmiEventMsrReply }),
  event({ kind: "PF", id: vcpu(8), name: "KVMI_VCPU_EVENT_PF", payload: kvmiEventPf, ...RETRY }),
  event({ kind: "SINGLESTEP", id: vcpu(9), name: "KVMI_VCPU_EVENT_SINGLESTEP", enable: "implicit", payload: kvmiEventSinglestep }),
];

/**
 * The v12 dialect: KVMI version 1, KVMI_MSG_SIZE 8184, ioctls 0xc8..0xcc, KVM_CAP_INTROSPECTION 206.
 * The allow masks span the highest id + 1 of each space as one range (ids 0..29, events 0..19).
 */
export const v12: Dialect = finishDialect({
  name: "v12",
  kvmiVersion: 1,
  maxMessageBytes: V12_KVMI_MSG_SIZE,
  eventFraming: Object.freeze({
    vmEventMessageId: vm(0),
    vcpuEventMessageId: vcpu(0),
    replyMessageId: vcpu(0),
    vmEventsCarryCommon: false,
  }),
  numMessages: vcpu(14) + 1,
  numEvents: vcpu(9) + 1,
  layouts: Object.freeze({
    msgHdr: kvmiMsgHdr,
    errorCode: kvmiErrorCode,
    vcpuHdr: kvmiVcpuHdr,
    eventHdr: kvmiEventHdr,
    event: kvmiVcpuEvent,
    eventReply: kvmiEventReply,
  }),
  limits: Object.freeze({
    maxPhysicalBytes: 4096,
    maxPageAccessEntries: MAX_PAGE_ACCESS_ENTRIES,
    maxGetRegistersMsrs: MAX_GET_REGISTERS_MSRS,
    maxXsaveBytes: kvmXsave.size,
    /** Not stated for v12 in our sources (v9 answers EBUSY beyond 1001). */
    maxPendingPauses: null,
  }),
  ioctls: Object.freeze({
    hook: 0xc8,
    unhook: 0xc9,
    command: 0xca,
    event: 0xcb,
    preunhook: 0xcc,
    capIntrospection: Object.freeze([V12_KVM_CAP_INTROSPECTION]),
  }),
  replyControlOp: null,
  commands,
  events,
});
