// SPDX-License-Identifier: Apache-2.0
/**
 * Resource names of kvmi.v1 (AIP-122): `vms/{uuid}` and `vms/{uuid}/vcpus/{index}`, and the event
 * names the SDK uses in place of the proto enum values.
 */
import { EventType } from "@kvmi/proto";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** True for a lowercase hyphenated UUID (the form the bridge uses). */
export function isUuid(text: string): boolean {
  return UUID.test(text);
}

/** `vms/{uuid}`. */
export function vmName(uuid: string): string {
  return `vms/${uuid}`;
}

/** `vms/{uuid}/vcpus/{vcpu}`. */
export function vcpuName(uuid: string, vcpu: number): string {
  return `vms/${uuid}/vcpus/${vcpu}`;
}

/**
 * The UUID in a VM reference (`5b8a…`, `vms/5b8a…`, upper or lower case), or `undefined` when the
 * reference is not one (it may be a display name: see `BridgeClient.resolveVm`).
 */
export function uuidOf(ref: string): string | undefined {
  const text = ref.trim().toLowerCase();
  const uuid = text.startsWith("vms/") ? text.slice(4) : text;
  return isUuid(uuid) ? uuid : undefined;
}

/** The events by the SDK's names (the `payload` case names of `kvmi.v1.Event`): v9's, then kvmi-v7's CPUID. */
export type EventName =
  | "unhook"
  | "pauseVcpu"
  | "hypercall"
  | "breakpoint"
  | "cr"
  | "trap"
  | "xsetbv"
  | "descriptor"
  | "msr"
  | "pageFault"
  | "singleStep"
  /** kvmi-v7 only: enabling it on another dialect fails with NOT_IN_DIALECT. */
  | "cpuid";

/** The vCPU events (every event except `unhook`). */
export type VcpuEventName = Exclude<EventName, "unhook">;

/** Event name → `kvmi.v1.EventType`. */
export const EVENT_TYPES: Readonly<Record<EventName, EventType>> = Object.freeze({
  unhook: EventType.UNHOOK,
  pauseVcpu: EventType.PAUSE_VCPU,
  hypercall: EventType.HYPERCALL,
  breakpoint: EventType.BREAKPOINT,
  cr: EventType.CR,
  trap: EventType.TRAP,
  xsetbv: EventType.XSETBV,
  descriptor: EventType.DESCRIPTOR,
  msr: EventType.MSR,
  pageFault: EventType.PF,
  singleStep: EventType.SINGLESTEP,
  cpuid: EventType.CPUID,
});

/** Every event name, in EventType order. */
export const EVENT_NAMES: readonly EventName[] = Object.freeze(Object.keys(EVENT_TYPES) as EventName[]);

/** `kvmi.v1.EventType` → event name; `undefined` for values this SDK does not know. */
export function eventNameOf(type: EventType): EventName | undefined {
  return EVENT_NAMES.find((name) => EVENT_TYPES[name] === type);
}

/** Accepts an event name or a raw `EventType` value. */
export function eventTypeOf(event: EventName | EventType): EventType {
  return typeof event === "number" ? event : EVENT_TYPES[event];
}
