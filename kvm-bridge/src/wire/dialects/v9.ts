// SPDX-License-Identifier: Apache-2.0
/**
 * The v9 dialect table (kvmi-abi §1.1, §3-§5, §9): every message id and event id of the upstream
 * "VM introspection" v9 series with its request, reply, payload and reply-data layouts. This is the
 * pinned dialect; later ones (v10-v12, the libkvmi product dialect) are further files of this shape.
 */
import type { BodyInput, BodyValue, CommandSpec, Dialect, EventSpec } from "../dialect.js";
import type { Layout } from "../layout.js";
import {
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
} from "../layouts/commands.js";
import { kvmiErrorCode, kvmiMsgHdr, kvmiVcpuHdr } from "../layouts/common.js";
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
} from "../layouts/events.js";
import { kvmMsrEntry, kvmRegs } from "../layouts/x86.js";

// ---------------------------------------------------------------------------------------------
// Dialect-wide numbers (kvmi-abi §1.2, §3.1, §4, §5)

/** What KVMI_GET_VERSION and KVM_CHECK_EXTENSION(KVM_CAP_INTROSPECTION) report. */
export const KVMI_VERSION = 1;
/** KVMI_MSG_SIZE = 4096 * 2 - 8: largest body after `kvmi_msg_hdr` (kvmi-abi §3.1). */
export const KVMI_MSG_SIZE = 8184;
/** Message id of events and of event replies in v9 (kvmi-abi §3.3, §3.4). */
export const KVMI_EVENT = 0;
/** Bound of the command allow mask: ids 0..25 (kvmi-abi §4, §9). */
export const KVMI_NUM_MESSAGES = 26;
/** Bound of the event allow mask: ids 0..10 (kvmi-abi §5, §9). */
export const KVMI_NUM_EVENTS = 11;

// Command ids (kvmi-abi §4). One flat space in v9; from v10 on they are renumbered.
export const KVMI_GET_VERSION = 1;
export const KVMI_VM_CHECK_COMMAND = 2;
export const KVMI_VM_CHECK_EVENT = 3;
export const KVMI_VM_GET_INFO = 4;
export const KVMI_VM_CONTROL_EVENTS = 5;
export const KVMI_VM_READ_PHYSICAL = 6;
export const KVMI_VM_WRITE_PHYSICAL = 7;
export const KVMI_VCPU_GET_INFO = 8;
export const KVMI_VCPU_PAUSE = 9;
export const KVMI_VCPU_CONTROL_EVENTS = 10;
export const KVMI_VCPU_GET_REGISTERS = 11;
export const KVMI_VCPU_SET_REGISTERS = 12;
export const KVMI_VCPU_GET_CPUID = 13;
export const KVMI_VM_CONTROL_CLEANUP = 14;
export const KVMI_VCPU_CONTROL_CR = 15;
export const KVMI_VCPU_INJECT_EXCEPTION = 16;
export const KVMI_VM_GET_MAX_GFN = 17;
export const KVMI_VCPU_GET_XCR = 18;
export const KVMI_VCPU_GET_XSAVE = 19;
export const KVMI_VCPU_SET_XSAVE = 20;
export const KVMI_VCPU_GET_MTRR_TYPE = 21;
export const KVMI_VCPU_CONTROL_MSR = 22;
export const KVMI_VM_SET_PAGE_ACCESS = 23;
export const KVMI_VCPU_CONTROL_SINGLESTEP = 24;
export const KVMI_VCPU_TRANSLATE_GVA = 25;

// Event ids (kvmi-abi §5).
export const KVMI_EVENT_UNHOOK = 0;
export const KVMI_EVENT_PAUSE_VCPU = 1;
export const KVMI_EVENT_HYPERCALL = 2;
export const KVMI_EVENT_BREAKPOINT = 3;
export const KVMI_EVENT_CR = 4;
export const KVMI_EVENT_TRAP = 5;
export const KVMI_EVENT_XSETBV = 6;
export const KVMI_EVENT_DESCRIPTOR = 7;
export const KVMI_EVENT_MSR = 8;
export const KVMI_EVENT_PF = 9;
export const KVMI_EVENT_SINGLESTEP = 10;

/** Page-access bits of `kvmi_page_access_entry.access` and `kvmi_event_pf.access` (kvmi-abi §4 id 23). */
export const KVMI_PAGE_ACCESS_R = 1 << 0;
export const KVMI_PAGE_ACCESS_W = 1 << 1;
export const KVMI_PAGE_ACCESS_X = 1 << 2;

/** `kvmi_event_descriptor.descriptor` values (kvmi-abi §5 id 7). */
export const KVMI_DESC_IDTR = 1;
export const KVMI_DESC_GDTR = 2;
export const KVMI_DESC_LDTR = 3;
export const KVMI_DESC_TR = 4;

/** READ/WRITE_PHYSICAL stay within one 4 KiB page: `size` is 1..4096 (kvmi-abi §4 ids 6, 7). */
export const V9_MAX_PHYSICAL_BYTES = 4096;
/** GET_REGISTERS: 8 + 472 + 16 * nmsrs must fit in KVMI_MSG_SIZE, so nmsrs <= 481 (kvmi-abi §4 id 11). */
export const V9_MAX_GET_REGISTERS_MSRS = 481;
/** SET_PAGE_ACCESS: 8 + 16 * count <= KVMI_MSG_SIZE, so count <= 511 (kvmi-abi §4 id 23). */
export const V9_MAX_PAGE_ACCESS_ENTRIES = 511;
/** SET_XSAVE accepts at most sizeof(struct kvm_xsave) bytes (kvmi-abi §4 id 20). */
export const V9_MAX_XSAVE_BYTES = 4096;
/** KVMI_VCPU_PAUSE answers EBUSY beyond 1001 pending pauses (kvmi-abi §4 id 9). */
export const V9_MAX_PENDING_PAUSES = 1001;
/** KVM_CAP_INTROSPECTION of v9 (kvmi-abi §2.4). */
export const KVM_CAP_INTROSPECTION = 184;

const NO_BODY = { layout: null } as const;

// ---------------------------------------------------------------------------------------------
// Commands (kvmi-abi §4)

/**
 * The 25 v9 commands by kernel name. Requests exclude `kvmi_msg_hdr` and, for `scope: "vcpu"`,
 * `kvmi_vcpu_hdr`; replies exclude `kvmi_error_code`.
 */
export const V9_COMMANDS = {
  KVMI_GET_VERSION: {
    op: "GET_VERSION",
    id: KVMI_GET_VERSION,
    name: "KVMI_GET_VERSION",
    scope: "vm",
    dispatch: "receive-thread",
    request: NO_BODY,
    reply: { layout: kvmiGetVersionReply },
    alwaysAllowed: true,
    closesOnShortTail: false,
  },
  KVMI_VM_CHECK_COMMAND: {
    op: "CHECK_COMMAND",
    id: KVMI_VM_CHECK_COMMAND,
    name: "KVMI_VM_CHECK_COMMAND",
    scope: "vm",
    dispatch: "receive-thread",
    request: { layout: kvmiVmCheckCommand },
    reply: NO_BODY,
    alwaysAllowed: true,
    closesOnShortTail: false,
  },
  KVMI_VM_CHECK_EVENT: {
    op: "CHECK_EVENT",
    id: KVMI_VM_CHECK_EVENT,
    name: "KVMI_VM_CHECK_EVENT",
    scope: "vm",
    dispatch: "receive-thread",
    request: { layout: kvmiVmCheckEvent },
    reply: NO_BODY,
    alwaysAllowed: true,
    closesOnShortTail: false,
  },
  KVMI_VM_GET_INFO: {
    op: "GET_VM_INFO",
    id: KVMI_VM_GET_INFO,
    name: "KVMI_VM_GET_INFO",
    scope: "vm",
    dispatch: "receive-thread",
    request: NO_BODY,
    reply: { layout: kvmiVmGetInfoReply },
    alwaysAllowed: false,
    closesOnShortTail: false,
  },
  KVMI_VM_CONTROL_EVENTS: {
    op: "CONTROL_VM_EVENTS",
    id: KVMI_VM_CONTROL_EVENTS,
    name: "KVMI_VM_CONTROL_EVENTS",
    scope: "vm",
    dispatch: "receive-thread",
    request: { layout: kvmiVmControlEvents },
    reply: NO_BODY,
    alwaysAllowed: false,
    closesOnShortTail: false,
  },
  KVMI_VM_READ_PHYSICAL: {
    op: "READ_PHYSICAL",
    id: KVMI_VM_READ_PHYSICAL,
    name: "KVMI_VM_READ_PHYSICAL",
    scope: "vm",
    dispatch: "receive-thread",
    request: { layout: kvmiVmReadPhysical },
    /** Exactly `size` bytes of guest memory; the length comes from `hdr.size`. */
    reply: { layout: null, tail: { name: "data", element: "bytes" } },
    alwaysAllowed: false,
    closesOnShortTail: false,
  },
  KVMI_VM_WRITE_PHYSICAL: {
    op: "WRITE_PHYSICAL",
    id: KVMI_VM_WRITE_PHYSICAL,
    name: "KVMI_VM_WRITE_PHYSICAL",
    scope: "vm",
    dispatch: "receive-thread",
    request: {
      layout: kvmiVmWritePhysical,
      tail: { name: "data", element: "bytes", countField: "size", maxCount: V9_MAX_PHYSICAL_BYTES },
    },
    reply: NO_BODY,
    alwaysAllowed: false,
    closesOnShortTail: true,
  },
  KVMI_VCPU_GET_INFO: {
    op: "GET_VCPU_INFO",
    id: KVMI_VCPU_GET_INFO,
    name: "KVMI_VCPU_GET_INFO",
    scope: "vcpu",
    dispatch: "vcpu-job",
    request: NO_BODY,
    reply: { layout: kvmiVcpuGetInfoReply },
    alwaysAllowed: false,
    closesOnShortTail: false,
  },
  /** Carries `kvmi_vcpu_hdr` but runs on the receive thread (kvmi-abi §2.5, §4 id 9). */
  KVMI_VCPU_PAUSE: {
    op: "PAUSE_VCPU",
    id: KVMI_VCPU_PAUSE,
    name: "KVMI_VCPU_PAUSE",
    scope: "vcpu",
    dispatch: "receive-thread",
    request: { layout: kvmiVcpuPause },
    reply: NO_BODY,
    alwaysAllowed: false,
    closesOnShortTail: false,
  },
  KVMI_VCPU_CONTROL_EVENTS: {
    op: "CONTROL_VCPU_EVENTS",
    id: KVMI_VCPU_CONTROL_EVENTS,
    name: "KVMI_VCPU_CONTROL_EVENTS",
    scope: "vcpu",
    dispatch: "vcpu-job",
    request: { layout: kvmiVcpuControlEvents },
    reply: NO_BODY,
    alwaysAllowed: false,
    closesOnShortTail: false,
  },
  KVMI_VCPU_GET_REGISTERS: {
    op: "GET_REGISTERS",
    id: KVMI_VCPU_GET_REGISTERS,
    name: "KVMI_VCPU_GET_REGISTERS",
    scope: "vcpu",
    dispatch: "vcpu-job",
    /** More than 481 MSRs is -KVM_EINVAL (the reply would not fit), so the encoder refuses it. */
    request: {
      layout: kvmiVcpuGetRegisters,
      tail: { name: "msrs_idx", element: "u32", countField: "nmsrs", maxCount: V9_MAX_GET_REGISTERS_MSRS },
    },
    reply: {
      layout: kvmiVcpuGetRegistersReply,
      tail: { name: "entries", element: kvmMsrEntry, countField: "msrs.nmsrs", maxCount: V9_MAX_GET_REGISTERS_MSRS },
    },
    alwaysAllowed: false,
    closesOnShortTail: true,
  },
  KVMI_VCPU_SET_REGISTERS: {
    op: "SET_REGISTERS",
    id: KVMI_VCPU_SET_REGISTERS,
    name: "KVMI_VCPU_SET_REGISTERS",
    scope: "vcpu",
    dispatch: "vcpu-job",
    request: { layout: kvmRegs },
    reply: NO_BODY,
    alwaysAllowed: false,
    closesOnShortTail: false,
  },
  KVMI_VCPU_GET_CPUID: {
    op: "GET_CPUID",
    id: KVMI_VCPU_GET_CPUID,
    name: "KVMI_VCPU_GET_CPUID",
    scope: "vcpu",
    dispatch: "vcpu-job",
    request: { layout: kvmiVcpuGetCpuid },
    reply: { layout: kvmiVcpuGetCpuidReply },
    alwaysAllowed: false,
    closesOnShortTail: false,
  },
  KVMI_VM_CONTROL_CLEANUP: {
    op: "CONTROL_CLEANUP",
    id: KVMI_VM_CONTROL_CLEANUP,
    name: "KVMI_VM_CONTROL_CLEANUP",
    scope: "vm",
    dispatch: "receive-thread",
    request: { layout: kvmiVmControlCleanup },
    reply: NO_BODY,
    alwaysAllowed: false,
    closesOnShortTail: false,
  },
  KVMI_VCPU_CONTROL_CR: {
    op: "CONTROL_CR",
    id: KVMI_VCPU_CONTROL_CR,
    name: "KVMI_VCPU_CONTROL_CR",
    scope: "vcpu",
    dispatch: "vcpu-job",
    request: { layout: kvmiVcpuControlCr },
    reply: NO_BODY,
    alwaysAllowed: false,
    closesOnShortTail: false,
  },
  KVMI_VCPU_INJECT_EXCEPTION: {
    op: "INJECT_EXCEPTION",
    id: KVMI_VCPU_INJECT_EXCEPTION,
    name: "KVMI_VCPU_INJECT_EXCEPTION",
    scope: "vcpu",
    dispatch: "vcpu-job",
    request: { layout: kvmiVcpuInjectException },
    reply: NO_BODY,
    alwaysAllowed: false,
    closesOnShortTail: false,
  },
  KVMI_VM_GET_MAX_GFN: {
    op: "GET_MAX_GFN",
    id: KVMI_VM_GET_MAX_GFN,
    name: "KVMI_VM_GET_MAX_GFN",
    scope: "vm",
    dispatch: "receive-thread",
    request: NO_BODY,
    reply: { layout: kvmiVmGetMaxGfnReply },
    alwaysAllowed: false,
    closesOnShortTail: false,
  },
  KVMI_VCPU_GET_XCR: {
    op: "GET_XCR",
    id: KVMI_VCPU_GET_XCR,
    name: "KVMI_VCPU_GET_XCR",
    scope: "vcpu",
    dispatch: "vcpu-job",
    request: { layout: kvmiVcpuGetXcr },
    reply: { layout: kvmiVcpuGetXcrReply },
    alwaysAllowed: false,
    closesOnShortTail: false,
  },
  KVMI_VCPU_GET_XSAVE: {
    op: "GET_XSAVE",
    id: KVMI_VCPU_GET_XSAVE,
    name: "KVMI_VCPU_GET_XSAVE",
    scope: "vcpu",
    dispatch: "vcpu-job",
    request: NO_BODY,
    /** C `u32 region[]` = a `struct kvm_xsave` (4096 bytes); the length comes from `hdr.size`. */
    reply: { layout: null, tail: { name: "region", element: "bytes" } },
    alwaysAllowed: false,
    closesOnShortTail: false,
  },
  KVMI_VCPU_SET_XSAVE: {
    op: "SET_XSAVE",
    id: KVMI_VCPU_SET_XSAVE,
    name: "KVMI_VCPU_SET_XSAVE",
    scope: "vcpu",
    dispatch: "vcpu-job",
    /** C `u32 region[]`, at most 4096 bytes; shorter is zero-extended by the kernel. */
    request: { layout: null, tail: { name: "region", element: "bytes", maxCount: V9_MAX_XSAVE_BYTES } },
    reply: NO_BODY,
    alwaysAllowed: false,
    closesOnShortTail: true,
  },
  KVMI_VCPU_GET_MTRR_TYPE: {
    op: "GET_MTRR_TYPE",
    id: KVMI_VCPU_GET_MTRR_TYPE,
    name: "KVMI_VCPU_GET_MTRR_TYPE",
    scope: "vcpu",
    dispatch: "vcpu-job",
    request: { layout: kvmiVcpuGetMtrrType },
    reply: { layout: kvmiVcpuGetMtrrTypeReply },
    alwaysAllowed: false,
    closesOnShortTail: false,
  },
  KVMI_VCPU_CONTROL_MSR: {
    op: "CONTROL_MSR",
    id: KVMI_VCPU_CONTROL_MSR,
    name: "KVMI_VCPU_CONTROL_MSR",
    scope: "vcpu",
    dispatch: "vcpu-job",
    request: { layout: kvmiVcpuControlMsr },
    reply: NO_BODY,
    alwaysAllowed: false,
    closesOnShortTail: false,
  },
  KVMI_VM_SET_PAGE_ACCESS: {
    op: "SET_PAGE_ACCESS",
    id: KVMI_VM_SET_PAGE_ACCESS,
    name: "KVMI_VM_SET_PAGE_ACCESS",
    scope: "vm",
    dispatch: "receive-thread",
    /** A message shorter than 8 + 16 * count is -KVM_EINVAL here, not a close (kvmi-abi §4 id 23). */
    request: {
      layout: kvmiVmSetPageAccess,
      tail: {
        name: "entries",
        element: kvmiPageAccessEntry,
        countField: "count",
        maxCount: V9_MAX_PAGE_ACCESS_ENTRIES,
      },
    },
    reply: NO_BODY,
    alwaysAllowed: false,
    closesOnShortTail: false,
  },
  KVMI_VCPU_CONTROL_SINGLESTEP: {
    op: "CONTROL_SINGLESTEP",
    id: KVMI_VCPU_CONTROL_SINGLESTEP,
    name: "KVMI_VCPU_CONTROL_SINGLESTEP",
    scope: "vcpu",
    dispatch: "vcpu-job",
    request: { layout: kvmiVcpuControlSinglestep },
    reply: NO_BODY,
    alwaysAllowed: false,
    closesOnShortTail: false,
  },
  KVMI_VCPU_TRANSLATE_GVA: {
    op: "TRANSLATE_GVA",
    id: KVMI_VCPU_TRANSLATE_GVA,
    name: "KVMI_VCPU_TRANSLATE_GVA",
    scope: "vcpu",
    dispatch: "vcpu-job",
    request: { layout: kvmiVcpuTranslateGva },
    reply: { layout: kvmiVcpuTranslateGvaReply },
    alwaysAllowed: false,
    closesOnShortTail: false,
  },
} as const satisfies Record<string, CommandSpec>;

/** Kernel name of a v9 command. */
export type V9CommandName = keyof typeof V9_COMMANDS;
/** The request body of a v9 command by kernel name, with its tail's count field optional. */
export type V9CommandRequest<N extends V9CommandName> = BodyInput<(typeof V9_COMMANDS)[N]["request"]>;
/** The decoded reply data of a v9 command by kernel name. */
export type V9CommandReply<N extends V9CommandName> = BodyValue<(typeof V9_COMMANDS)[N]["reply"]>;

// ---------------------------------------------------------------------------------------------
// Events (kvmi-abi §5)

/** The 11 v9 events by kernel name. */
export const V9_EVENTS = {
  /** The only VM event: zeroed `arch`, vcpu 0, and no reply at all (kvmi-abi §2.6). */
  KVMI_EVENT_UNHOOK: {
    kind: "UNHOOK",
    id: KVMI_EVENT_UNHOOK,
    name: "KVMI_EVENT_UNHOOK",
    scope: "vm",
    enable: "vm-control-events",
    payload: null,
    replyData: null,
    actions: [],
  },
  KVMI_EVENT_PAUSE_VCPU: {
    kind: "PAUSE_VCPU",
    id: KVMI_EVENT_PAUSE_VCPU,
    name: "KVMI_EVENT_PAUSE_VCPU",
    scope: "vcpu",
    enable: "implicit",
    payload: null,
    replyData: null,
    actions: ["CONTINUE", "CRASH"],
  },
  KVMI_EVENT_HYPERCALL: {
    kind: "HYPERCALL",
    id: KVMI_EVENT_HYPERCALL,
    name: "KVMI_EVENT_HYPERCALL",
    scope: "vcpu",
    enable: "vcpu-control-events",
    payload: null,
    replyData: null,
    actions: ["CONTINUE", "CRASH"],
  },
  KVMI_EVENT_BREAKPOINT: {
    kind: "BREAKPOINT",
    id: KVMI_EVENT_BREAKPOINT,
    name: "KVMI_EVENT_BREAKPOINT",
    scope: "vcpu",
    enable: "vcpu-control-events",
    payload: kvmiEventBreakpoint,
    replyData: null,
    actions: ["CONTINUE", "RETRY", "CRASH"],
  },
  /** Also needs the CR selected with KVMI_VCPU_CONTROL_CR. */
  KVMI_EVENT_CR: {
    kind: "CR",
    id: KVMI_EVENT_CR,
    name: "KVMI_EVENT_CR",
    scope: "vcpu",
    enable: "vcpu-control-events",
    payload: kvmiEventCr,
    replyData: kvmiEventCrReply,
    actions: ["CONTINUE", "CRASH"],
  },
  KVMI_EVENT_TRAP: {
    kind: "TRAP",
    id: KVMI_EVENT_TRAP,
    name: "KVMI_EVENT_TRAP",
    scope: "vcpu",
    enable: "implicit",
    payload: kvmiEventTrap,
    replyData: null,
    actions: ["CONTINUE", "CRASH"],
  },
  KVMI_EVENT_XSETBV: {
    kind: "XSETBV",
    id: KVMI_EVENT_XSETBV,
    name: "KVMI_EVENT_XSETBV",
    scope: "vcpu",
    enable: "vcpu-control-events",
    payload: kvmiEventXsetbv,
    replyData: null,
    actions: ["CONTINUE", "CRASH"],
  },
  KVMI_EVENT_DESCRIPTOR: {
    kind: "DESCRIPTOR",
    id: KVMI_EVENT_DESCRIPTOR,
    name: "KVMI_EVENT_DESCRIPTOR",
    scope: "vcpu",
    enable: "vcpu-control-events",
    payload: kvmiEventDescriptor,
    replyData: null,
    actions: ["CONTINUE", "RETRY", "CRASH"],
  },
  /** Also needs the MSR selected with KVMI_VCPU_CONTROL_MSR. */
  KVMI_EVENT_MSR: {
    kind: "MSR",
    id: KVMI_EVENT_MSR,
    name: "KVMI_EVENT_MSR",
    scope: "vcpu",
    enable: "vcpu-control-events",
    payload: kvmiEventMsr,
    replyData: kvmiEventMsrReply,
    actions: ["CONTINUE", "CRASH"],
  },
  /** Also needs a restriction set with KVMI_VM_SET_PAGE_ACCESS. */
  KVMI_EVENT_PF: {
    kind: "PF",
    id: KVMI_EVENT_PF,
    name: "KVMI_EVENT_PF",
    scope: "vcpu",
    enable: "vcpu-control-events",
    payload: kvmiEventPf,
    replyData: null,
    actions: ["CONTINUE", "RETRY", "CRASH"],
  },
  /** Requested by KVMI_VCPU_CONTROL_SINGLESTEP; `kvmi_event_singlestep` is payload, not reply data. */
  KVMI_EVENT_SINGLESTEP: {
    kind: "SINGLESTEP",
    id: KVMI_EVENT_SINGLESTEP,
    name: "KVMI_EVENT_SINGLESTEP",
    scope: "vcpu",
    enable: "implicit",
    payload: kvmiEventSinglestep,
    replyData: null,
    actions: ["CONTINUE", "CRASH"],
  },
} as const satisfies Record<string, EventSpec>;

/** Kernel name of a v9 event. */
export type V9EventName = keyof typeof V9_EVENTS;

// ---------------------------------------------------------------------------------------------
// The dialect

function isLayout(value: object): value is Layout {
  return "fields" in value && "size" in value && "name" in value;
}

/** Freezes the spec tables (layouts are frozen by defineLayout and are left alone). */
function deepFreeze<T>(value: T): T {
  if (typeof value === "object" && value !== null && !isLayout(value) && !Object.isFrozen(value)) {
    for (const inner of Object.values(value)) deepFreeze(inner);
    Object.freeze(value);
  }
  return value;
}

deepFreeze(V9_COMMANDS);
deepFreeze(V9_EVENTS);

/**
 * The v9 dialect (kvmi-abi §1.1): KVMI version 1, KVMI_MSG_SIZE 8184, events and event replies on
 * message id 0, 26 message ids and 11 event ids. `commands` and `events` are sorted by id; look them
 * up with `commandByOp`/`eventByKind` (or by wire id) from `../dialect.js`.
 */
export const v9: Dialect = Object.freeze({
  name: "v9",
  kvmiVersion: KVMI_VERSION,
  maxMessageBytes: KVMI_MSG_SIZE,
  eventFraming: Object.freeze({
    vmEventMessageId: KVMI_EVENT,
    vcpuEventMessageId: KVMI_EVENT,
    replyMessageId: KVMI_EVENT,
    vmEventsCarryCommon: true,
  }),
  numMessages: KVMI_NUM_MESSAGES,
  numEvents: KVMI_NUM_EVENTS,
  layouts: Object.freeze({
    msgHdr: kvmiMsgHdr,
    errorCode: kvmiErrorCode,
    vcpuHdr: kvmiVcpuHdr,
    eventHdr: null,
    event: kvmiEvent,
    eventReply: kvmiEventReply,
  }),
  limits: Object.freeze({
    maxPhysicalBytes: V9_MAX_PHYSICAL_BYTES,
    maxPageAccessEntries: V9_MAX_PAGE_ACCESS_ENTRIES,
    maxGetRegistersMsrs: V9_MAX_GET_REGISTERS_MSRS,
    maxXsaveBytes: V9_MAX_XSAVE_BYTES,
    maxPendingPauses: V9_MAX_PENDING_PAUSES,
  }),
  ioctls: Object.freeze({
    hook: 0xc3,
    unhook: 0xc4,
    command: 0xc5,
    event: 0xc6,
    preunhook: 0xc7,
    capIntrospection: Object.freeze([KVM_CAP_INTROSPECTION]),
  }),
  replyControlOp: null,
  commands: Object.freeze(Object.values<CommandSpec>(V9_COMMANDS).sort((a, b) => a.id - b.id)),
  events: Object.freeze(Object.values<EventSpec>(V9_EVENTS).sort((a, b) => a.id - b.id)),
});
