// SPDX-License-Identifier: Apache-2.0
/**
 * The bridge's record of a VM -> kvmi.v1 Vm / VmChange (vm.proto).
 *
 * {@link VmRecord} is what the registry (kvm-bridge side) keeps per VM UUID: the handshake identity
 * (`VmIdentity` of `@kvmi/kvm-bridge/wire`, same field names so a registry can spread it in), what
 * KVMI_GET_VERSION / KVMI_VM_GET_INFO reported, and the lifecycle. It is a plain TS type so the
 * registry does not depend on protobuf.
 */
import { create } from "@bufbuild/protobuf";
import { timestampFromDate, TimestampSchema } from "@bufbuild/protobuf/wkt";
import { layouts } from "@kvmi/kvm-bridge/wire";
import {
  E820EntrySchema,
  FeaturesSchema,
  HandshakeVariant,
  State,
  VmChangeSchema,
  VmChangeType,
  VmOriginSchema,
  VmSchema,
} from "@kvmi/proto";
import type { Vm, VmChange } from "@kvmi/proto";
import { cpuTypeFromWire } from "./enums.js";
import { vmName } from "./resource-names.js";
import { mapFields } from "./wire-coverage.js";
import type { WireFieldMapping } from "./wire-coverage.js";

/** Lifecycle of a VM's KVMI connection (proto `State`). */
export type VmState = "handshaking" | "hooked" | "unhook-pending" | "releasing" | "disconnected" | "awaiting-connection" | "not-connected";

/** Which handshake QEMU sent (`VmIdentity.variant`), or `none` when a socket was handed over directly. */
export type VmHandshakeVariant = "base" | "max-gpa" | "e820" | "none";

/** One e820 entry from the handshake (same shape as the wire `E820Entry`). */
export interface VmE820Entry {
  readonly address: bigint;
  readonly length: bigint;
  readonly type: number;
}

/** What the registry knows about one VM. */
export interface VmRecord {
  /** Lowercase hyphenated UUID from the handshake (`uuid`). */
  readonly uuid: string;
  /** VM name from the handshake (`name`, QEMU `-name`); "" if none. */
  readonly name: string;
  readonly state: VmState;
  /** 1 for the first hook of this UUID by this process, +1 on every re-hook. */
  readonly generation: number;
  /** Online vCPUs from KVMI_VM_GET_INFO; 0 until it succeeded. */
  readonly vcpuCount: number;
  /** Handshake `start_time`, seconds since the epoch; undefined without a handshake. */
  readonly startTime: bigint | undefined;
  /** When the handshake of the current generation completed. */
  readonly hookedAt: Date;
  readonly variant: VmHandshakeVariant;
  /** KVMI dialect name, e.g. `v9`. */
  readonly dialect: string;
  /** KVMI_GET_VERSION `version`; undefined until it succeeded. */
  readonly kvmiVersion?: number;
  /** KVMI_GET_VERSION `features`; undefined until it succeeded. */
  readonly features?: { readonly singlestep: boolean };
  /** Handshake `max_gpa` (max-gpa variant only). */
  readonly maxGpa?: bigint;
  /** Handshake `cpu_type` wire value (e820 variant only): 0 i386, 1 x86_64, 255 unknown. */
  readonly cpuType?: number;
  /** Handshake e820 map (e820 variant only), sorted by address. */
  readonly e820?: readonly VmE820Entry[];
  /** A CONTROLLER session is attached. */
  readonly controllerAttached: boolean;
  /** OBSERVER sessions attached. */
  readonly observerCount: number;
  /** When the bridge closes the socket (unhook-pending, releasing). */
  readonly unhookDeadline?: Date;
  /** The workload (KubeVirt VMI) the VM belongs to, when it came through a forwarder. */
  readonly origin?: { readonly namespace: string; readonly name: string; readonly pod: string };
  /** Why the VM is `not-connected`. */
  readonly problem?: string;
  /** Commands (ops) and events (kinds) the kernel accepted with CHECK_COMMAND / CHECK_EVENT at hook time. */
  readonly commands?: readonly string[];
  readonly events?: readonly string[];
}

const STATES: Readonly<Record<VmState, State>> = {
  handshaking: State.HANDSHAKING,
  hooked: State.HOOKED,
  "unhook-pending": State.UNHOOK_PENDING,
  releasing: State.RELEASING,
  disconnected: State.DISCONNECTED,
  "awaiting-connection": State.AWAITING_CONNECTION,
  "not-connected": State.NOT_CONNECTED,
};

const VARIANTS: Readonly<Record<VmHandshakeVariant, HandshakeVariant>> = {
  base: HandshakeVariant.BASE,
  "max-gpa": HandshakeVariant.MAX_GPA,
  e820: HandshakeVariant.E820,
  none: HandshakeVariant.NONE,
};

/** The proto State of a registry state. */
export function vmStateToProto(state: VmState): State {
  return STATES[state];
}

/** Maps a registry record to a Vm snapshot. */
export function vmToProto(record: VmRecord): Vm {
  return create(VmSchema, {
    name: vmName(record.uuid),
    uuid: record.uuid,
    displayName: record.name,
    state: vmStateToProto(record.state),
    generation: BigInt(record.generation),
    vcpuCount: record.vcpuCount,
    ...(record.startTime !== undefined && { startTime: create(TimestampSchema, { seconds: record.startTime, nanos: 0 }) }),
    hookTime: timestampFromDate(record.hookedAt),
    handshakeVariant: VARIANTS[record.variant],
    dialect: record.dialect,
    kvmiVersion: record.kvmiVersion ?? 0,
    ...(record.features !== undefined && { features: create(FeaturesSchema, { singlestep: record.features.singlestep }) }),
    ...(record.maxGpa !== undefined && { maxGpa: record.maxGpa }),
    cpuType: cpuTypeFromWire(record.cpuType),
    e820Entries: (record.e820 ?? []).map((e) => create(E820EntrySchema, { address: e.address, length: e.length, type: e.type })),
    controllerAttached: record.controllerAttached,
    observerCount: record.observerCount,
    ...(record.unhookDeadline !== undefined && { unhookDeadline: timestampFromDate(record.unhookDeadline) }),
    ...(record.origin !== undefined && { origin: create(VmOriginSchema, record.origin) }),
    ...(record.problem !== undefined && { problem: record.problem }),
    commands: [...(record.commands ?? [])],
    events: [...(record.events ?? [])],
  });
}

/** Kinds of registry change (proto VmChangeType). */
export type VmChangeKind = "existing" | "hooked" | "rehooked" | "state-changed" | "unhook-pending" | "unhooked";

const CHANGE_TYPES: Readonly<Record<VmChangeKind, VmChangeType>> = {
  existing: VmChangeType.EXISTING,
  hooked: VmChangeType.HOOKED,
  rehooked: VmChangeType.REHOOKED,
  "state-changed": VmChangeType.STATE_CHANGED,
  "unhook-pending": VmChangeType.UNHOOK_PENDING,
  unhooked: VmChangeType.UNHOOKED,
};

/**
 * Maps one registry change to a VmChange. `unhook_deadline` is set only for `unhook-pending`
 * (vm.proto), from the record.
 */
export function vmChangeToProto(kind: VmChangeKind, record: VmRecord, changeTime: Date): VmChange {
  return create(VmChangeSchema, {
    type: CHANGE_TYPES[kind],
    vm: vmToProto(record),
    ...(kind === "unhook-pending" &&
      record.unhookDeadline !== undefined && { unhookDeadline: timestampFromDate(record.unhookDeadline) }),
    changeTime: timestampFromDate(changeTime),
  });
}

// ---------------------------------------------------------------------------------------------
// Coverage (see wire-coverage.ts): the handshake fields reach Vm through VmIdentity/VmRecord.

const VM = VmSchema.name;
const IDENTITY = { uuid: "uuid", start_time: "start_time", name: "display_name" } as const;

/** The wire fields the VM mapping carries (handshake, GET_VERSION and GET_INFO into Vm). */
export const VM_WIRE_FIELDS: readonly WireFieldMapping[] = [
  ...mapFields(layouts.qemuVmiToIntrospector.name, VM, IDENTITY),
  ...mapFields(layouts.qemuVmiToIntrospector.name, VM, { uuid: "name" }),
  ...mapFields(layouts.qemuVmiToIntrospectorMaxGpa.name, VM, { ...IDENTITY, max_gpa: "max_gpa" }),
  ...mapFields(layouts.qemuVmiToIntrospectorE820.name, VM, {
    ...IDENTITY,
    cpu_type: "cpu_type",
    e820_entries: "e820_entries",
  }),
  ...mapFields(layouts.qemuVmiE820Entry.name, E820EntrySchema.name, { address: "address", length: "length", type: "type" }),
  ...mapFields(layouts.kvmiGetVersionReply.name, VM, { version: "kvmi_version", features: "features" }),
  ...mapFields(layouts.kvmiVmGetInfoReply.name, VM, { vcpu_count: "vcpu_count" }),
];
