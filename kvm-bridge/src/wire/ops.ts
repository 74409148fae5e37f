// SPDX-License-Identifier: Apache-2.0
/**
 * The dialect-neutral vocabulary (docs/decisions/0010-dialect-model.md): every command has an `op`
 * and every event a `kind` that means the same thing in v9, v12 and kvmi-v7, whatever its wire id
 * and kernel name there. Code outside the dialect tables looks commands and events up by these keys
 * (`commandByOp`, `eventByKind`) and never by a dialect's name or id.
 *
 * The value types below are the shapes consumers read and write. Every dialect's layouts use these
 * field names (a C field that means the same thing under another name is renamed in our layout, with
 * the C name in a comment), so a decoded body has the same keys whatever the dialect; fields only
 * some dialects carry are optional here.
 */
import type { LayoutValue } from "./layout.js";
import type {
  kvmiVcpuControlEvents,
  kvmiVcpuGetCpuid,
  kvmiVcpuGetCpuidReply,
  kvmiVcpuGetRegistersReply,
  kvmiVcpuInjectException,
  kvmiVmCheckCommand,
  kvmiVmControlEvents,
} from "./layouts/commands.js";
import type {
  kvmiEventBreakpoint,
  kvmiEventDescriptor,
  kvmiEventMsr,
  kvmiEventSinglestep,
  kvmiEventTrap,
  kvmiEventXsetbv,
} from "./layouts/events.js";
import type { kvmMsrEntry, kvmRegs, kvmiEventArch } from "./layouts/x86.js";

/** Commands every dialect of the bridge knows (some dialects lack a few, e.g. v12 GET_MAX_GFN). */
export const COMMON_COMMAND_OPS = [
  "GET_VERSION",
  "CHECK_COMMAND",
  "CHECK_EVENT",
  "GET_VM_INFO",
  "CONTROL_VM_EVENTS",
  "READ_PHYSICAL",
  "WRITE_PHYSICAL",
  "GET_VCPU_INFO",
  "PAUSE_VCPU",
  "CONTROL_VCPU_EVENTS",
  "GET_REGISTERS",
  "SET_REGISTERS",
  "GET_CPUID",
  "CONTROL_CLEANUP",
  "CONTROL_CR",
  "INJECT_EXCEPTION",
  "GET_MAX_GFN",
  "GET_XCR",
  "GET_XSAVE",
  "SET_XSAVE",
  "GET_MTRR_TYPE",
  "CONTROL_MSR",
  "SET_PAGE_ACCESS",
  "CONTROL_SINGLESTEP",
  "TRANSLATE_GVA",
] as const;

/** Commands only the libkvmi product dialect (kvmi-v7) has (docs/protocol/kvmi-v7.md). */
export const KVMI_V7_ONLY_OPS = [
  "CONTROL_CMD_RESPONSE",
  "GET_PAGE_ACCESS",
  "GET_MAP_TOKEN",
  "CONTROL_SPP",
  "GET_PAGE_WRITE_BITMAP",
  "SET_PAGE_WRITE_BITMAP",
  "SET_VE_INFO_PAGE",
  "GET_NEXT_AVAILABLE_GFN",
  "SWITCH_EPT_VIEW",
  "DISABLE_VE",
  "GET_EPT_VIEW",
  "CONTROL_EPT_VIEW",
  "QUERY_PHYSICAL",
  "ALLOC_GFN",
  "FREE_GFN",
  "CREATE_EPT_VIEW",
  "DESTROY_EPT_VIEW",
  "CHANGE_GFN",
] as const;

/** The dialect-neutral key of a command. */
export type CommandOp = (typeof COMMON_COMMAND_OPS)[number] | (typeof KVMI_V7_ONLY_OPS)[number];

/** Every event kind any dialect has. CREATE_VCPU and CPUID exist only in kvmi-v7. */
export const EVENT_KINDS = [
  "UNHOOK",
  "PAUSE_VCPU",
  "HYPERCALL",
  "BREAKPOINT",
  "CR",
  "TRAP",
  "XSETBV",
  "DESCRIPTOR",
  "MSR",
  "PF",
  "SINGLESTEP",
  "CREATE_VCPU",
  "CPUID",
] as const;

/** The dialect-neutral key of an event. */
export type EventKind = (typeof EVENT_KINDS)[number];

type Empty = Record<never, never>;
type CheckId = LayoutValue<typeof kvmiVmCheckCommand>;
type ControlEvents = LayoutValue<typeof kvmiVcpuControlEvents>;

/** `kvmi_features` of GET_VERSION: v9/v12 report `singlestep`, kvmi-v7 `spp`, `vmfunc`, `eptp`, `ve`. */
export interface KvmiFeatures {
  readonly singlestep?: number;
  readonly spp?: number;
  readonly vmfunc?: number;
  readonly eptp?: number;
  readonly ve?: number;
}

/** One `kvmi_page_access_entry`; `visible` exists only in v9. */
export interface PageAccessEntry {
  gpa: bigint;
  access: number;
  visible?: number;
}

/**
 * Request and reply data of each op as consumers see them (request after `kvmi_vcpu_hdr`, reply
 * after `kvmi_error_code`). vCPU-addressed ops take the vCPU index as the `vcpu` argument of the
 * channel, never in the body, whichever place the dialect's wire format puts it.
 */
export interface OpShapes {
  GET_VERSION: { request: Empty; reply: { version: number; max_msg_size?: number; features: KvmiFeatures } };
  CHECK_COMMAND: { request: CheckId; reply: Empty };
  CHECK_EVENT: { request: CheckId; reply: Empty };
  GET_VM_INFO: { request: Empty; reply: { vcpu_count: number } };
  CONTROL_VM_EVENTS: { request: LayoutValue<typeof kvmiVmControlEvents>; reply: Empty };
  READ_PHYSICAL: { request: { gpa: bigint; size: number }; reply: { data: Uint8Array } };
  WRITE_PHYSICAL: { request: { gpa: bigint; size?: number; data: Uint8Array }; reply: Empty };
  GET_VCPU_INFO: { request: Empty; reply: { tsc_speed: bigint } };
  PAUSE_VCPU: { request: { wait: number }; reply: Empty };
  CONTROL_VCPU_EVENTS: { request: ControlEvents; reply: Empty };
  GET_REGISTERS: {
    request: { nmsrs?: number; msrs_idx: number[] };
    reply: LayoutValue<typeof kvmiVcpuGetRegistersReply> & { entries: LayoutValue<typeof kvmMsrEntry>[] };
  };
  SET_REGISTERS: { request: LayoutValue<typeof kvmRegs>; reply: Empty };
  GET_CPUID: { request: LayoutValue<typeof kvmiVcpuGetCpuid>; reply: LayoutValue<typeof kvmiVcpuGetCpuidReply> };
  CONTROL_CLEANUP: { request: { enable: number }; reply: Empty };
  CONTROL_CR: { request: { cr: number; enable: number }; reply: Empty };
  INJECT_EXCEPTION: { request: LayoutValue<typeof kvmiVcpuInjectException>; reply: Empty };
  GET_MAX_GFN: { request: Empty; reply: { gfn: bigint } };
  GET_XCR: { request: { xcr: number }; reply: { value: bigint } };
  GET_XSAVE: { request: Empty; reply: { region: Uint8Array } };
  SET_XSAVE: { request: { region: Uint8Array }; reply: Empty };
  GET_MTRR_TYPE: { request: { gpa: bigint }; reply: { type: number } };
  CONTROL_MSR: { request: { enable: number; msr: number }; reply: Empty };
  /** `view` exists only in kvmi-v7 (EPT view, 0 = the default view). */
  SET_PAGE_ACCESS: { request: { view?: number; count?: number; entries: PageAccessEntry[] }; reply: Empty };
  CONTROL_SINGLESTEP: { request: { enable: number }; reply: Empty };
  TRANSLATE_GVA: { request: { gva: bigint }; reply: { gpa: bigint } };
  // kvmi-v7 only (docs/protocol/kvmi-v7.md)
  CONTROL_CMD_RESPONSE: { request: { enable: number; now: number }; reply: Empty };
  GET_PAGE_ACCESS: { request: { view: number; count?: number; gpa: bigint[] }; reply: { access: Uint8Array } };
  GET_MAP_TOKEN: { request: Empty; reply: { token: bigint[] } };
  CONTROL_SPP: { request: { enable: number }; reply: Empty };
  GET_PAGE_WRITE_BITMAP: { request: { view: number; count?: number; gpa: bigint[] }; reply: { bitmap: number[] } };
  SET_PAGE_WRITE_BITMAP: {
    request: { view: number; count?: number; entries: { gpa: bigint; bitmap: number }[] };
    reply: Empty;
  };
  SET_VE_INFO_PAGE: { request: { gpa: bigint; trigger_vmexit: number }; reply: Empty };
  GET_NEXT_AVAILABLE_GFN: { request: Empty; reply: { gfn: bigint } };
  SWITCH_EPT_VIEW: { request: { view: number }; reply: Empty };
  DISABLE_VE: { request: Empty; reply: Empty };
  GET_EPT_VIEW: { request: Empty; reply: { view: number } };
  CONTROL_EPT_VIEW: { request: { view: number; visible: number }; reply: Empty };
  QUERY_PHYSICAL: { request: { gfn: bigint }; reply: { gfn: bigint; size: bigint } };
  ALLOC_GFN: { request: { gfn: bigint }; reply: Empty };
  FREE_GFN: { request: { gfn: bigint }; reply: Empty };
  CREATE_EPT_VIEW: { request: Empty; reply: { view: number } };
  DESTROY_EPT_VIEW: { request: { view: number }; reply: Empty };
  CHANGE_GFN: { request: { view: number; old_gfn: bigint; new_gfn: bigint }; reply: Empty };
}

/** Makes every integer accept `number` or `bigint`: the encoder range-checks and converts. */
export type LooseIntegers<T> = T extends bigint | number
  ? number | bigint
  : T extends Uint8Array
    ? Uint8Array
    : T extends readonly (infer E)[]
      ? LooseIntegers<E>[]
      : T extends object
        ? { [K in keyof T]: LooseIntegers<T[K]> }
        : T;

/** What `KvmiChannel.command(op, …)` takes for `op`: integers as number or bigint. */
export type OpRequest<O extends CommandOp> = LooseIntegers<OpShapes[O]["request"]>;
/** What `KvmiChannel.command(op, …)` resolves with for `op`. */
export type OpReply<O extends CommandOp> = OpShapes[O]["reply"];

/** `kvmi_event_arch` as every dialect decodes it; `view` is kvmi-v7's EPT view. */
export type EventArch = LayoutValue<typeof kvmiEventArch> & { view?: number };

/** Event-specific data of each kind (after the common part), with the same names in every dialect. */
export interface EventPayloads {
  UNHOOK: undefined;
  PAUSE_VCPU: undefined;
  HYPERCALL: undefined;
  BREAKPOINT: LayoutValue<typeof kvmiEventBreakpoint>;
  /** `cr` is u8 in v9/v12 and u16 in kvmi-v7: a number either way. */
  CR: { cr: number; old_value: bigint; new_value: bigint };
  /** kvmi-v7's C names are `vector` and `cr2`; our layout calls them `nr` and `address` as v9 does. */
  TRAP: LayoutValue<typeof kvmiEventTrap>;
  /** kvmi-v7 sends no payload for XSETBV. */
  XSETBV: LayoutValue<typeof kvmiEventXsetbv> | undefined;
  DESCRIPTOR: LayoutValue<typeof kvmiEventDescriptor>;
  MSR: LayoutValue<typeof kvmiEventMsr>;
  /** `view` exists only in kvmi-v7. */
  PF: { gva: bigint; gpa: bigint; access: number; view?: number };
  SINGLESTEP: LayoutValue<typeof kvmiEventSinglestep>;
  CREATE_VCPU: undefined;
  CPUID: { function: number; index: number; insn_length: number };
}

/** Reply data of each kind (after `kvmi_event_reply`); undefined where the event takes none. */
export interface EventReplyShapes {
  CR: { new_val: bigint };
  MSR: { new_val: bigint };
  /** kvmi-v7 only: the 272-byte `kvmi_event_pf_reply`; other dialects take no PF reply data. */
  PF: { ctx_addr: bigint; ctx_size: number; singlestep: number; rep_complete: number; ctx_data: Uint8Array } | undefined;
}
