// SPDX-License-Identifier: Apache-2.0
/**
 * KVMI v9 events <-> kvmi.v1 Event / EventReply / UnhookNotice (kvmi-abi §3.3-§3.5, §5; event.proto).
 *
 * - {@link eventToProto}: a decoded vCPU event (`KvmiEvent` from the channel) -> Event, with the
 *   vCPU state (`kvmi_event_arch`) and the event-specific payload.
 * - {@link eventReplyToWire}: an EventReply -> the action and reply data the channel writes, after
 *   every check whose failure would make the kernel close the socket (kvmi-abi §2.7: an action the
 *   event does not accept, reply data on an event without any). Failures are KvmiArgumentErrors,
 *   which the session answers with ReplyRejected(INVALID_ARGUMENT) while the event stays pending.
 * - {@link unhookNotice}: UNHOOK is the only VM event and has no reply; it reaches clients as an
 *   UnhookNotice, never as an Event.
 */
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { KvmiArgumentError } from "@kvmi/kvm-bridge";
import type { KvmiEvent } from "@kvmi/kvm-bridge";
import { KVMI_V7_LAYOUTS, layouts, V9_EVENTS } from "@kvmi/kvm-bridge/wire";
import type { EventActionName, EventKind, EventPayloads, EventSpec, Layout, LayoutValue, V9EventName } from "@kvmi/kvm-bridge/wire";
import {
  BreakpointEventSchema,
  CpuidEventSchema,
  CreateVcpuEventSchema,
  CrEventSchema,
  DescriptorEventSchema,
  EventAction,
  EventReplySchema,
  EventSchema,
  HypercallEventSchema,
  MsrEventSchema,
  PageFaultEventSchema,
  PauseVcpuEventSchema,
  SingleStepEventSchema,
  TrapEventSchema,
  UnhookNoticeSchema,
  XsetbvEventSchema,
} from "@kvmi/proto";
import type { Event, EventReply, EventType, UnhookNotice, UnhookReason } from "@kvmi/proto";
import { descriptorTypeFromWire, eventActionName, eventActionToWire, eventTypeOfKind } from "./enums.js";
import { eventArchToProto, regsToWire } from "./registers.js";
import type { WireEventArch, WireRegs } from "./registers.js";
import { vcpuName, vmName } from "./resource-names.js";
import { mapFields } from "./wire-coverage.js";
import type { WireFieldMapping } from "./wire-coverage.js";

type Events = typeof V9_EVENTS;
/** The decoded payload of a v9 event (undefined for events without one). */
export type EventPayload<N extends V9EventName> = Events[N]["payload"] extends infer L extends Layout ? LayoutValue<L> : undefined;
/** The reply data of a v9 event (undefined for events without any). */
export type EventReplyData<N extends V9EventName> = Events[N]["replyData"] extends infer L extends Layout
  ? LayoutValue<L>
  : undefined;

/** One v9 event's mapping. */
export interface EventMapping<N extends V9EventName = V9EventName> {
  /** Kernel name, the key of `V9_EVENTS`. */
  readonly event: N;
  /** The proto EventType (v9 id + 1). */
  readonly type: EventType;
  /** Builds the `Event.payload` oneof from the decoded payload. */
  payloadToProto(payload: EventPayload<N>): Event["payload"];
  /**
   * Builds the reply data from EventReply.new_val, defaulting to the event's `new_value` so that an
   * unset `new_val` lets the guest write proceed unchanged (event.proto). Only CR and MSR have one.
   */
  replyData?(newVal: bigint | undefined, payload: EventPayload<N>): EventReplyData<N>;
  /** The wire fields this entry carries (see wire-coverage.ts). */
  readonly wireFields: readonly WireFieldMapping[];
}

function defineEvent<N extends V9EventName>(entry: Omit<EventMapping<N>, "type">): EventMapping<N> {
  return Object.freeze({ ...entry, type: eventTypeOfKind(V9_EVENTS[entry.event].kind) });
}

const EVENT = EventSchema.name;

/** Every v9 event by kernel name (kvmi-abi §5). */
export const EVENT_MAPPINGS = {
  KVMI_EVENT_UNHOOK: defineEvent({
    event: "KVMI_EVENT_UNHOOK",
    // Never an Event: eventToProto refuses it, see unhookNotice().
    payloadToProto: () => ({ case: undefined }),
    wireFields: [],
  }),
  KVMI_EVENT_PAUSE_VCPU: defineEvent({
    event: "KVMI_EVENT_PAUSE_VCPU",
    payloadToProto: () => ({ case: "pauseVcpu", value: create(PauseVcpuEventSchema) }),
    wireFields: [],
  }),
  KVMI_EVENT_HYPERCALL: defineEvent({
    event: "KVMI_EVENT_HYPERCALL",
    payloadToProto: () => ({ case: "hypercall", value: create(HypercallEventSchema) }),
    wireFields: [],
  }),
  KVMI_EVENT_BREAKPOINT: defineEvent({
    event: "KVMI_EVENT_BREAKPOINT",
    payloadToProto: (p) => ({ case: "breakpoint", value: create(BreakpointEventSchema, { gpa: p.gpa, insnLen: p.insn_len }) }),
    wireFields: [
      ...mapFields(layouts.kvmiEventBreakpoint.name, BreakpointEventSchema.name, { gpa: "gpa", insn_len: "insn_len" }),
    ],
  }),
  KVMI_EVENT_CR: defineEvent({
    event: "KVMI_EVENT_CR",
    payloadToProto: (p) => ({
      case: "cr",
      value: create(CrEventSchema, { cr: p.cr, oldValue: p.old_value, newValue: p.new_value }),
    }),
    replyData: (newVal, p) => ({ new_val: newVal ?? p.new_value }),
    wireFields: [
      ...mapFields(layouts.kvmiEventCr.name, CrEventSchema.name, { cr: "cr", old_value: "old_value", new_value: "new_value" }),
      ...mapFields(layouts.kvmiEventCrReply.name, EventReplySchema.name, { new_val: "new_val" }),
    ],
  }),
  KVMI_EVENT_TRAP: defineEvent({
    event: "KVMI_EVENT_TRAP",
    payloadToProto: (p) => ({
      case: "trap",
      value: create(TrapEventSchema, { vector: p.nr, errorCode: p.error_code, address: p.address }),
    }),
    wireFields: [
      ...mapFields(layouts.kvmiEventTrap.name, TrapEventSchema.name, { nr: "vector", error_code: "error_code", address: "address" }),
    ],
  }),
  KVMI_EVENT_XSETBV: defineEvent({
    event: "KVMI_EVENT_XSETBV",
    // kvmi-v7's XSETBV carries no payload (docs/protocol/kvmi-v7.md): the fields stay 0 there.
    payloadToProto: (p: EventPayload<"KVMI_EVENT_XSETBV"> | undefined) => ({
      case: "xsetbv",
      value:
        p === undefined ? create(XsetbvEventSchema) : create(XsetbvEventSchema, { xcr: p.xcr, oldValue: p.old_value, newValue: p.new_value }),
    }),
    wireFields: [
      ...mapFields(layouts.kvmiEventXsetbv.name, XsetbvEventSchema.name, { xcr: "xcr", old_value: "old_value", new_value: "new_value" }),
    ],
  }),
  KVMI_EVENT_DESCRIPTOR: defineEvent({
    event: "KVMI_EVENT_DESCRIPTOR",
    payloadToProto: (p) => ({
      case: "descriptor",
      value: create(DescriptorEventSchema, { descriptor: descriptorTypeFromWire(p.descriptor), write: p.write !== 0 }),
    }),
    wireFields: [
      ...mapFields(layouts.kvmiEventDescriptor.name, DescriptorEventSchema.name, { descriptor: "descriptor", write: "write" }),
    ],
  }),
  KVMI_EVENT_MSR: defineEvent({
    event: "KVMI_EVENT_MSR",
    payloadToProto: (p) => ({
      case: "msr",
      value: create(MsrEventSchema, { msr: p.msr, oldValue: p.old_value, newValue: p.new_value }),
    }),
    replyData: (newVal, p) => ({ new_val: newVal ?? p.new_value }),
    wireFields: [
      ...mapFields(layouts.kvmiEventMsr.name, MsrEventSchema.name, { msr: "msr", old_value: "old_value", new_value: "new_value" }),
      ...mapFields(layouts.kvmiEventMsrReply.name, EventReplySchema.name, { new_val: "new_val" }),
    ],
  }),
  KVMI_EVENT_PF: defineEvent({
    event: "KVMI_EVENT_PF",
    payloadToProto: (p) => ({
      case: "pageFault",
      value: create(PageFaultEventSchema, { gva: p.gva, gpa: p.gpa, access: p.access }),
    }),
    wireFields: [
      ...mapFields(layouts.kvmiEventPf.name, PageFaultEventSchema.name, { gva: "gva", gpa: "gpa", access: "access" }),
    ],
  }),
  KVMI_EVENT_SINGLESTEP: defineEvent({
    event: "KVMI_EVENT_SINGLESTEP",
    payloadToProto: (p) => ({ case: "singleStep", value: create(SingleStepEventSchema, { failed: p.failed !== 0 }) }),
    wireFields: [
      ...mapFields(layouts.kvmiEventSinglestep.name, SingleStepEventSchema.name, { failed: "failed" }),
    ],
  }),
} as const satisfies { readonly [N in V9EventName]: EventMapping<N> };

/** What every event mapping offers, v9's (keyed by v9 name) and the others' (keyed by kind). */
interface AnyEventMapping {
  /** Kernel name: v9's, or that of the dialect that has the event (`KVMI_EVENT_CPUID`). */
  readonly event: string;
  readonly type: EventType;
  payloadToProto(payload: never): Event["payload"];
  replyData?(newVal: bigint | undefined, payload: never): Record<string, unknown> | undefined;
  readonly wireFields: readonly WireFieldMapping[];
}

/** The mapping of an event v9 does not have: payload by the kind's dialect-neutral shape. */
interface DialectEventMapping<K extends EventKind> extends AnyEventMapping {
  payloadToProto(payload: EventPayloads[K]): Event["payload"];
}

const kvmiV7Layout = (name: string): string => KVMI_V7_LAYOUTS[name]!.name;

/**
 * Events only some dialects send (docs/protocol/kvmi-v7.md), by kind. Their kernel reply carries
 * no data: CPUID's values reach the guest as EventReply.registers with RETRY (event.proto).
 */
export const DIALECT_EVENT_MAPPINGS: { readonly CPUID: DialectEventMapping<"CPUID">; readonly CREATE_VCPU: DialectEventMapping<"CREATE_VCPU"> } = {
  CPUID: Object.freeze({
    event: "KVMI_EVENT_CPUID",
    type: eventTypeOfKind("CPUID"),
    payloadToProto: (p: EventPayloads["CPUID"]) => ({
      case: "cpuid" as const,
      value: create(CpuidEventSchema, { function: p.function, index: p.index, insnLength: p.insn_length }),
    }),
    wireFields: mapFields(kvmiV7Layout("kvmi_event_cpuid"), CpuidEventSchema.name, {
      function: "function",
      index: "index",
      insn_length: "insn_length",
    }),
  }),
  CREATE_VCPU: Object.freeze({
    event: "KVMI_EVENT_CREATE_VCPU",
    type: eventTypeOfKind("CREATE_VCPU"),
    payloadToProto: () => ({ case: "createVcpu" as const, value: create(CreateVcpuEventSchema) }),
    wireFields: [],
  }),
};

/** The framing fields events and event replies carry, whatever the event. */
const FRAMING_WIRE_FIELDS: readonly WireFieldMapping[] = [
  ...mapFields(layouts.kvmiMsgHdr.name, EVENT, { seq: "seq" }),
  ...mapFields(layouts.kvmiMsgHdr.name, EventReplySchema.name, { seq: "seq" }),
  ...mapFields(layouts.kvmiEvent.name, EVENT, { vcpu: "vcpu", event: "type", arch: "arch" }),
  ...mapFields(layouts.kvmiEvent.name, EVENT, { vcpu: "name" }),
  ...mapFields(layouts.kvmiVcpuHdr.name, EventReplySchema.name, { vcpu: "vcpu" }),
  ...mapFields(layouts.kvmiEventReply.name, EventReplySchema.name, { action: "action" }),
];

/**
 * The wire fields the v9 event mappings carry (see wire-coverage.ts, whose coverage test walks v9's
 * layouts); DIALECT_EVENT_MAPPINGS declare theirs for events.test.ts.
 */
export const EVENT_WIRE_FIELDS: readonly WireFieldMapping[] = [
  ...FRAMING_WIRE_FIELDS,
  ...Object.values<EventMapping>(EVENT_MAPPINGS as unknown as Record<string, EventMapping>).flatMap((m) => m.wireFields),
];

/**
 * The mappings by dialect-neutral kind: an event of any dialect (v12's KVMI_VCPU_EVENT_CR, kvmi-v7's
 * KVMI_EVENT_CR) maps as the v9 event of the same kind, whose ids kvmi.v1's EventType follows.
 */
const MAPPINGS_BY_KIND: ReadonlyMap<string, AnyEventMapping> = new Map<string, AnyEventMapping>([
  ...Object.values<EventMapping>(EVENT_MAPPINGS as unknown as Record<string, EventMapping>).map(
    (m): [string, AnyEventMapping] => [V9_EVENTS[m.event].kind, m as unknown as AnyEventMapping],
  ),
  ...Object.entries(DIALECT_EVENT_MAPPINGS),
]);

/** True when kvmi.v1 can carry events of `kind` (every kind of every dialect table today). */
export function hasEventMapping(kind: string): boolean {
  return MAPPINGS_BY_KIND.has(kind);
}

/** The v9 kernel name of an event kind, for metric labels and config keys that predate dialects. */
export function v9EventName(kind: string): string {
  return MAPPINGS_BY_KIND.get(kind)?.event ?? kind;
}

function mappingOf(spec: EventSpec): AnyEventMapping {
  const mapping = MAPPINGS_BY_KIND.get(spec.kind);
  // A kind kvmi.v1 has no message for: the VM host answers such events itself (hasEventMapping).
  if (mapping === undefined) throw new Error(`no kvmi.v1 mapping for event ${spec.name}`);
  return mapping;
}

/** True for the VM event (UNHOOK), which is delivered as an UnhookNotice and never answered. */
export function isVmEvent(event: Pick<KvmiEvent, "spec">): boolean {
  return event.spec.scope === "vm";
}

/**
 * Maps a decoded vCPU event to an Event.
 * @param vm VM UUID.
 * @param replyDeadline when the bridge answers CONTINUE by itself; undefined leaves it unset.
 * @param receiveTime wall-clock time the event was read (`KvmiEvent.receivedAt` is a monotonic
 *   clock, useless to clients); default now.
 * @throws Error for UNHOOK (use {@link unhookNotice}) or a spec this table does not know: both are
 *   wiring bugs, reported as INTERNAL by `status.ts`.
 */
export function eventToProto(vm: string, event: KvmiEvent, replyDeadline: Date | undefined, receiveTime: Date = new Date()): Event {
  if (isVmEvent(event)) throw new Error(`${event.spec.name} is a VM event: deliver it with unhookNotice()`);
  const mapping = mappingOf(event.spec);
  // A message literal, as for the registers (registers.ts): complete by type, cheaper than create().
  return {
    $typeName: "kvmi.v1.Event",
    name: vcpuName(vm, event.vcpu),
    vm: vmName(vm),
    vcpu: event.vcpu,
    seq: event.seq,
    type: mapping.type,
    arch: eventArchToProto(event.arch as WireEventArch),
    replyDeadline: replyDeadline === undefined ? undefined : timestampFromDate(replyDeadline),
    payload: mapping.payloadToProto(event.payload as never),
    receiveTime: timestampFromDate(receiveTime),
  };
}

/** What the channel needs to answer an event: `KvmiChannel.replyEvent(event, action, replyData)`. */
export interface WireEventReply {
  /** `kvmi_event_reply.action` (KVMI_EVENT_ACTION_*). */
  readonly action: number;
  /** The kernel name of the action, for logs. */
  readonly actionName: EventActionName;
  /** Reply data (`{ new_val }` for CR and MSR), undefined for events without any. */
  readonly replyData: Record<string, unknown> | undefined;
  /** Registers to set with KVMI_VCPU_SET_REGISTERS before the reply, when the reply carries them. */
  readonly registers: WireRegs | undefined;
}

/**
 * Validates an EventReply against the pending event and shapes it for the wire.
 * @param event the pending event the reply answers (its spec, and its payload for the `new_val`
 *   default). The caller has matched `reply.vcpu`/`reply.seq` to it.
 * @throws KvmiArgumentError (ReplyRejected INVALID_ARGUMENT) when the event takes no reply, the
 *   action is unset, unknown or not accepted by the event (e.g. RETRY to a CR event), or `new_val`
 *   is set on an event without reply data. The event stays pending.
 */
export function eventReplyToWire(event: Pick<KvmiEvent, "spec" | "payload">, reply: EventReply): WireEventReply {
  const violation = replyViolation(event.spec, reply.action, reply.newVal !== undefined);
  if (violation !== undefined) throw new KvmiArgumentError(violation.field, violation.message);
  const actionName = eventActionName(reply.action)!;
  return {
    action: eventActionToWire(actionName),
    actionName,
    replyData: mappingOf(event.spec).replyData?.(reply.newVal, event.payload as never) as Record<string, unknown> | undefined,
    registers: reply.registers === undefined ? undefined : regsToWire(reply.registers),
  };
}

/**
 * Why a reply with `action` (and a `new_val` when `hasNewVal`) cannot answer an event of `spec`, or
 * undefined when it can: the checks of {@link eventReplyToWire}, shared with the replies of event
 * filter rules (event-filter.ts), so both are refused for the same reasons.
 */
export function replyViolation(
  spec: EventSpec,
  action: EventAction,
  hasNewVal: boolean,
): { readonly field: "seq" | "action" | "new_val"; readonly message: string } | undefined {
  if (spec.actions.length === 0) return { field: "seq", message: `${spec.name} events take no reply` };
  const allowed = spec.actions.map((a) => `EVENT_ACTION_${a}`).join(", ");
  const actionName = eventActionName(action);
  if (actionName === undefined) {
    const what = action === EventAction.UNSPECIFIED ? "action is required" : `action ${action} is not an EventAction`;
    return { field: "action", message: `${what}: use one of ${allowed}` };
  }
  if (!spec.actions.includes(actionName)) {
    return {
      field: "action",
      message: `EVENT_ACTION_${actionName} is not accepted by ${spec.name.replace("KVMI_EVENT_", "")} events: use one of ${allowed}`,
    };
  }
  if (hasNewVal && mappingOf(spec).replyData === undefined) {
    return { field: "new_val", message: `new_val is allowed only for CR and MSR events, not ${spec.name.replace("KVMI_EVENT_", "")}` };
  }
  return undefined;
}

/** Builds the EventReply that answers an event with CONTINUE (what the bridge sends at the deadline). */
export function continueReply(event: Pick<KvmiEvent, "vcpu" | "seq">): EventReply {
  return create(EventReplySchema, { vcpu: event.vcpu, seq: event.seq, action: EventAction.CONTINUE });
}

/**
 * Builds the UnhookNotice every session of a VM gets before the bridge closes its socket.
 * @param vm VM UUID.
 * @param deadline when the bridge closes the socket.
 */
export function unhookNotice(vm: string, deadline: Date, reason: UnhookReason): UnhookNotice {
  return create(UnhookNoticeSchema, { vm: vmName(vm), deadline: timestampFromDate(deadline), reason });
}
