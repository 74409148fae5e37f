// SPDX-License-Identifier: Apache-2.0
/**
 * Proto enums <-> kernel numbers. Several proto enums are NOT the kernel value (read the enum
 * comments in the .proto files): EventType is v9's event id + 1 (then the events v9 lacks) and
 * EventAction is kernel + 1, because the kernel uses 0 for a real value (KVMI_EVENT_UNHOOK,
 * KVMI_EVENT_ACTION_CONTINUE); MtrrType is kernel + 1 because
 * UC is 0; CpuType is a remapping; Command, CpuMode and DescriptorType are the identity.
 *
 * Proto3 enums are open: a client may send a number the enum does not list. "To wire" functions
 * therefore validate and throw {@link KvmiArgumentError} (INVALID_ARGUMENT); "from wire" functions
 * never throw and map a value the enum cannot express to `*_UNSPECIFIED`.
 */
import { KvmiArgumentError } from "@kvmi/kvm-bridge";
import { EVENT_ACTION_VALUES, eventByKind, KNOWN_DIALECTS, layouts, V9_EVENTS, v9Ids } from "@kvmi/kvm-bridge/wire";
import type { EventActionName, EventKind, EventSpec } from "@kvmi/kvm-bridge/wire";
import { Command, CpuMode, CpuType, DescriptorType, EventAction, EventType, MtrrType } from "@kvmi/proto";

const U16_MAX = 0xffff;

// ---------------------------------------------------------------------------------------------
// EventType <-> event kind (event.proto: v9's events are their v9 id + 1, then the events v9 lacks)

/**
 * An event as kvmi.v1 names it: its dialect-neutral kind and its kvmi.v1 id (`EventType - 1`, which
 * is the v9 id for v9's events). Bodies the mapping builds carry this id; `vm/dialect-translation.ts` turns
 * it into the VM's dialect by kind.
 */
export interface ApiEvent {
  readonly kind: EventKind;
  /** `EventType - 1`: the v9 id of v9's events, 11 for CREATE_VCPU, 12 for CPUID. */
  readonly id: number;
  /** VM events (UNHOOK) are enabled with ControlVmEvents, the others with ControlVcpuEvents. */
  readonly scope: "vm" | "vcpu";
  /** Kernel name in the first dialect that has the event (`KVMI_EVENT_CR`, `KVMI_EVENT_CPUID`). */
  readonly name: string;
}

/** The EventType of every kind: v9's events by their id, kvmi-v7's extra events by event.proto's values. */
const EVENT_TYPE_BY_KIND: ReadonlyMap<EventKind, EventType> = new Map<EventKind, EventType>([
  ...Object.values<EventSpec>(V9_EVENTS).map((s): [EventKind, EventType] => [s.kind, (s.id + 1) as EventType]),
  ["CREATE_VCPU", EventType.CREATE_VCPU],
  ["CPUID", EventType.CPUID],
]);

/** Every EventType the bridge knows, with its kind and scope (from the first dialect that has it). */
const API_EVENTS: ReadonlyMap<EventType, ApiEvent> = new Map(
  [...EVENT_TYPE_BY_KIND].map(([kind, type]) => {
    const spec = KNOWN_DIALECTS.map((d) => eventByKind(d, kind)).find((s) => s !== undefined);
    if (spec === undefined) throw new Error(`EventType ${type} names ${kind}, which no dialect table has`);
    return [type, Object.freeze({ kind, id: type - 1, scope: spec.scope, name: spec.name })];
  }),
);

/** The proto EventType of an event kind; EVENT_TYPE_UNSPECIFIED for a kind kvmi.v1 does not list. */
export function eventTypeOfKind(kind: EventKind): EventType {
  return EVENT_TYPE_BY_KIND.get(kind) ?? EventType.UNSPECIFIED;
}

/** The event kind of a kvmi.v1 event id (`EventType - 1`, see {@link ApiEvent}); undefined when unknown. */
export function eventKindOfApiId(id: number): EventKind | undefined {
  return API_EVENTS.get((id + 1) as EventType)?.kind;
}

/**
 * The event an EventType names, for the commands that need a known event (Control{Vm,Vcpu}Events).
 * @throws KvmiArgumentError for UNSPECIFIED or a value the bridge does not know.
 */
export function eventSpecFromProto(type: EventType, field: string): ApiEvent {
  if (type === EventType.UNSPECIFIED) throw new KvmiArgumentError(field, `${field} is required: name an EVENT_TYPE_*`);
  const event = API_EVENTS.get(type);
  if (event === undefined) throw new KvmiArgumentError(field, `${field} ${type} is not an event type this bridge knows`);
  return event;
}

/**
 * The wire event id to ask KVMI_VM_CHECK_EVENT about. Values unknown to this bridge are passed
 * through (kernel + 1 convention) so that the kernel, which is the authority, answers NOT_FOUND.
 * @throws KvmiArgumentError for UNSPECIFIED or a value outside the u16 wire field.
 */
export function eventIdForCheck(type: EventType, field: string): number {
  if (type === EventType.UNSPECIFIED) throw new KvmiArgumentError(field, `${field} is required: name an EVENT_TYPE_*`);
  const id = type - 1;
  if (!Number.isInteger(id) || id < 0 || id > U16_MAX) {
    throw new KvmiArgumentError(field, `${field} ${type} is not an event type`);
  }
  return id;
}

// ---------------------------------------------------------------------------------------------
// Command <-> v9 message id (identity)

/**
 * The wire command id to ask KVMI_VM_CHECK_COMMAND about (proto values equal v9 ids). Values unknown
 * to this bridge are passed through so that the kernel answers NOT_FOUND itself.
 * @throws KvmiArgumentError for COMMAND_UNSPECIFIED or a value outside the u16 wire field.
 */
export function commandIdForCheck(command: Command, field: string): number {
  if (command === Command.UNSPECIFIED) throw new KvmiArgumentError(field, `${field} is required: name a COMMAND_*`);
  if (!Number.isInteger(command) || command < 0 || command > U16_MAX) {
    throw new KvmiArgumentError(field, `${field} ${command} is not a command`);
  }
  return command;
}

// ---------------------------------------------------------------------------------------------
// EventAction <-> kvmi_event_reply.action (proto = kernel + 1)

const ACTION_NAMES: Readonly<Partial<Record<EventAction, EventActionName>>> = {
  [EventAction.CONTINUE]: "CONTINUE",
  [EventAction.RETRY]: "RETRY",
  [EventAction.CRASH]: "CRASH",
};

/** The kernel action name of a proto EventAction, or undefined for UNSPECIFIED/unknown values. */
export function eventActionName(action: EventAction): EventActionName | undefined {
  return ACTION_NAMES[action];
}

/** The proto EventAction of a wire action value (`KVMI_EVENT_ACTION_*`; proto = kernel + 1). */
export function eventActionFromWire(action: number): EventAction {
  return (action + 1) as EventAction;
}

/** The wire value (`KVMI_EVENT_ACTION_*`) of a kernel action name. */
export function eventActionToWire(name: EventActionName): number {
  return EVENT_ACTION_VALUES[name];
}

// ---------------------------------------------------------------------------------------------
// Reply-side enums (from wire only)

const MTRR_TYPES: ReadonlyMap<number, MtrrType> = new Map([
  [0, MtrrType.UNCACHEABLE],
  [1, MtrrType.WRITE_COMBINING],
  [4, MtrrType.WRITE_THROUGH],
  [5, MtrrType.WRITE_PROTECTED],
  [6, MtrrType.WRITE_BACK],
]);

/** `kvmi_vcpu_get_mtrr_type_reply.type` (UC 0, WC 1, WT 4, WP 5, WB 6) -> MtrrType (kernel + 1). */
export function mtrrTypeFromWire(type: number): MtrrType {
  return MTRR_TYPES.get(type) ?? MtrrType.UNSPECIFIED;
}

/** `mode` of kvmi_event_arch / get_registers_reply (2, 4, 8) -> CpuMode (identity). */
export function cpuModeFromWire(mode: number): CpuMode {
  return mode === CpuMode.BITS_16 || mode === CpuMode.BITS_32 || mode === CpuMode.BITS_64 ? mode : CpuMode.UNSPECIFIED;
}

/** `kvmi_event_descriptor.descriptor` (KVMI_DESC_IDTR 1 .. KVMI_DESC_TR 4) -> DescriptorType (identity). */
export function descriptorTypeFromWire(descriptor: number): DescriptorType {
  switch (descriptor) {
    case v9Ids.KVMI_DESC_IDTR:
      return DescriptorType.IDTR;
    case v9Ids.KVMI_DESC_GDTR:
      return DescriptorType.GDTR;
    case v9Ids.KVMI_DESC_LDTR:
      return DescriptorType.LDTR;
    case v9Ids.KVMI_DESC_TR:
      return DescriptorType.TR;
    default:
      return DescriptorType.UNSPECIFIED;
  }
}

/**
 * Handshake `cpu_type` (e820 variant: 0 i386, 1 x86_64, 255 unknown) -> CpuType. Any other wire
 * value is CPU_TYPE_UNKNOWN; no value at all (other variants) is CPU_TYPE_UNSPECIFIED.
 */
export function cpuTypeFromWire(cpuType: number | undefined): CpuType {
  if (cpuType === undefined) return CpuType.UNSPECIFIED;
  if (cpuType === layouts.QEMU_VMI_CPU_TYPE_I386) return CpuType.I386;
  if (cpuType === layouts.QEMU_VMI_CPU_TYPE_X86_64) return CpuType.X86_64;
  return CpuType.UNKNOWN;
}
