// SPDX-License-Identifier: Apache-2.0
/**
 * THE coverage test (conventions §4 item 5): every field of every layout the API touches (v9
 * command requests and replies with their tails, event payloads and reply data, `kvmi_event` with
 * `kvmi_event_arch` and its regs/sregs/segments/dtables/MSR block, the framing structs, and the QEMU
 * handshake that makes the VM identity) is either carried, as declared by the mapping tables, or
 * listed in NOT_CARRIED with a reason. Padding is excluded.
 *
 * The field list comes from the layout tables of `@kvmi/kvm-bridge/wire`, never from this file.
 * The declarations are then checked for honesty: every declared proto target exists, and the
 * mapping functions really read (replies, events) or write (requests, reply data) every field
 * they declare, on samples generated from the layouts and passed through the real codec.
 */
import { createRegistry } from "@bufbuild/protobuf";
import type { DescMessage } from "@bufbuild/protobuf";
import {
  decodeEvent,
  decodeReply,
  encodeEvent,
  encodeReply,
  layouts,
  v9,
  V9_COMMANDS,
  V9_EVENTS,
} from "@kvmi/kvm-bridge/wire";
import type { BodySchema, CommandSpec, EventSpec, Field, Layout, V9CommandName } from "@kvmi/kvm-bridge/wire";
import type { KvmiEvent } from "@kvmi/kvm-bridge";
import {
  Command,
  EventAction,
  EventReplySchema,
  EventType,
  file_google_rpc_error_details,
  file_google_rpc_status,
  file_kvmi_v1_command,
  file_kvmi_v1_event,
  file_kvmi_v1_registers,
  file_kvmi_v1_vm,
  RegsSchema,
} from "@kvmi/proto";
import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { COMMAND_MAPPINGS } from "./commands.js";
import type { AnyCommandMapping, LimitsOf } from "./commands.js";
import { NOT_CARRIED, WIRE_FIELD_MAPPINGS } from "./coverage.js";
import { eventReplyToWire, eventToProto } from "./events.js";
import { tailKey, trackBody, UUID, VCPU, VM, writtenKeys } from "./test-support.js";
import { vmToProto } from "./vm.js";
import type { VmRecord } from "./vm.js";

// ---------------------------------------------------------------------------------------------
// The wire side: every field reachable from the roots, by coverage key

interface Root {
  readonly owner: string;
  readonly schema: BodySchema;
}

const COMMAND_SPECS = Object.values<CommandSpec>(V9_COMMANDS);
const EVENT_SPECS = Object.values<EventSpec>(V9_EVENTS);

const ROOTS: readonly Root[] = [
  ...COMMAND_SPECS.flatMap((c) => [
    { owner: `${c.name}.request`, schema: c.request },
    { owner: `${c.name}.reply`, schema: c.reply },
  ]),
  ...EVENT_SPECS.flatMap((e) => [
    ...(e.payload === null ? [] : [{ owner: `${e.name}.payload`, schema: { layout: e.payload } }]),
    ...(e.replyData === null ? [] : [{ owner: `${e.name}.replyData`, schema: { layout: e.replyData } }]),
  ]),
  // Framing: v9's own table of them, so a dialect change is noticed.
  ...Object.entries(v9.layouts).map(([name, layout]) => ({ owner: name, schema: { layout } })),
  // The VM identity: every handshake variant QEMU may send (kvmi-abi §2.3).
  { owner: "handshake.base", schema: { layout: layouts.qemuVmiToIntrospector } },
  { owner: "handshake.max-gpa", schema: { layout: layouts.qemuVmiToIntrospectorMaxGpa } },
  { owner: "handshake.e820", schema: layouts.qemuVmiToIntrospectorE820Body },
];

function layoutKeys(layout: Layout, into: Set<string>): Set<string> {
  for (const [name, field] of Object.entries(layout.fields)) {
    if (field.kind === "pad") continue;
    into.add(`${layout.name}.${name}`);
    if (field.kind === "struct") layoutKeys(field.layout, into);
  }
  return into;
}

function schemaKeys(schema: BodySchema, owner: string, into = new Set<string>()): Set<string> {
  if (schema.layout !== null) layoutKeys(schema.layout, into);
  const key = tailKey(schema, owner);
  if (key !== undefined) {
    into.add(key);
    if (typeof schema.tail!.element === "object") layoutKeys(schema.tail!.element, into);
  }
  return into;
}

const WIRE_KEYS = new Set(ROOTS.flatMap((r) => [...schemaKeys(r.schema, r.owner)]));
const MAPPED = new Set(WIRE_FIELD_MAPPINGS.map((m) => m.wire));
const IGNORED = new Set(NOT_CARRIED.map((n) => n.wire));

// ---------------------------------------------------------------------------------------------
// The proto side

const REGISTRY = createRegistry(
  file_kvmi_v1_command,
  file_kvmi_v1_event,
  file_kvmi_v1_registers,
  file_kvmi_v1_vm,
  file_google_rpc_status,
  file_google_rpc_error_details,
);

function resolveProto(path: string): string | undefined {
  const parts = path.split(".");
  const [typeName, field] = path.startsWith("google.") ? [parts.slice(0, 3).join("."), parts[3]] : [`kvmi.v1.${parts[0]}`, parts[1]];
  const message: DescMessage | undefined = REGISTRY.getMessage(typeName);
  if (message === undefined) return `no message ${typeName}`;
  if (parts.length !== (path.startsWith("google.") ? 4 : 2)) return `expected <message>.<field>, got ${path}`;
  if (message.fields.find((f) => f.name === field) === undefined) return `${typeName} has no field ${field}`;
  return undefined;
}

describe("wire-field coverage (static)", () => {
  it("walks a non-trivial field set", () => {
    // Sanity: the walk found the structs the brief names (guards against an empty walk passing).
    for (const key of ["kvm_regs.rip", "kvm_sregs.interrupt_bitmap", "kvm_segment.unusable", "kvm_dtable.limit", "kvm_msr_entry.data", "kvmi_event_arch_msrs.shadow_gs", "kvmi_msg_hdr.seq", "qemu_vmi_e820_entry.type"]) {
      expect(WIRE_KEYS.has(key), key).toBe(true);
    }
    expect(WIRE_KEYS.size).toBeGreaterThan(150);
  });

  it("every wire field is mapped or listed in NOT_CARRIED", () => {
    const neither = [...WIRE_KEYS].filter((k) => !MAPPED.has(k) && !IGNORED.has(k)).sort();
    expect(neither, "wire fields neither mapped nor listed in NOT_CARRIED").toEqual([]);
  });

  it("every declared wire field exists (no stale declarations)", () => {
    expect([...MAPPED].filter((k) => !WIRE_KEYS.has(k)).sort(), "mapped fields that do not exist").toEqual([]);
    expect([...IGNORED].filter((k) => !WIRE_KEYS.has(k)).sort(), "NOT_CARRIED fields that do not exist").toEqual([]);
  });

  it("no field is both mapped and NOT_CARRIED, NOT_CARRIED has one reason per field", () => {
    expect([...IGNORED].filter((k) => MAPPED.has(k)).sort()).toEqual([]);
    expect(IGNORED.size).toBe(NOT_CARRIED.length);
    for (const n of NOT_CARRIED) expect(n.reason.trim().length, n.wire).toBeGreaterThan(10);
  });

  it("every declared proto target exists", () => {
    const broken = WIRE_FIELD_MAPPINGS.map((m) => [m.wire, m.proto, resolveProto(m.proto)] as const).filter(([, , problem]) => problem);
    expect(broken).toEqual([]);
  });
});

// ---------------------------------------------------------------------------------------------
// Honesty: the functions touch what they declare

let counter = 0;
/** A value for every field of `layout`, distinct per field and within range. */
function sampleLayout(layout: Layout): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [name, field] of Object.entries(layout.fields)) {
    const value = sampleField(field);
    if (value !== undefined) out[name] = value;
  }
  return out;
}
function sampleScalar(type: string): number | bigint {
  counter++;
  switch (type) {
    case "u8":
      return (counter % 250) + 1;
    case "u16":
    case "u32":
    case "s32":
      return counter + 0x100;
    default:
      return BigInt(counter) * 0x1_0001n;
  }
}
function sampleField(field: Field): unknown {
  switch (field.kind) {
    case "scalar":
      return sampleScalar(field.type);
    case "bytes":
      return new Uint8Array(field.length).fill(++counter % 256);
    case "array":
      return Array.from({ length: field.count }, () => sampleScalar(field.type));
    case "struct":
      return sampleLayout(field.layout);
    case "pad":
      return undefined;
  }
}
function sampleBody(schema: BodySchema): Record<string, unknown> {
  const out = schema.layout === null ? {} : sampleLayout(schema.layout);
  const tail = schema.tail;
  if (tail === undefined) return out;
  if (tail.element === "bytes") out[tail.name] = new Uint8Array(16).fill(7);
  else if (typeof tail.element === "string") out[tail.name] = [sampleScalar(tail.element), sampleScalar(tail.element)];
  else out[tail.name] = [sampleLayout(tail.element), sampleLayout(tail.element)];
  return out;
}

/** Declared keys reachable from a schema: what a function handling it must touch. */
const declaredIn = (schema: BodySchema, owner: string): string[] => [...schemaKeys(schema, owner)].filter((k) => MAPPED.has(k)).sort();

/** Valid requests with every field set (defaults would hide a field the mapping drops). */
const FULL_REQUESTS: { readonly [N in V9CommandName]: Record<string, unknown> } = {
  KVMI_GET_VERSION: { vm: VM },
  KVMI_VM_CHECK_COMMAND: { vm: VM, command: Command.VM_GET_INFO },
  KVMI_VM_CHECK_EVENT: { vm: VM, event: EventType.CR },
  KVMI_VM_GET_INFO: { vm: VM },
  KVMI_VM_CONTROL_EVENTS: { vm: VM, event: EventType.UNHOOK, enable: true },
  KVMI_VM_READ_PHYSICAL: { vm: VM, gpa: 0x1000n, size: 8 },
  KVMI_VM_WRITE_PHYSICAL: { vm: VM, gpa: 0x1000n, data: new Uint8Array([1, 2]) },
  KVMI_VCPU_GET_INFO: { name: VCPU },
  KVMI_VCPU_PAUSE: { name: VCPU, wait: true },
  KVMI_VCPU_CONTROL_EVENTS: { name: VCPU, event: EventType.PF, enable: true },
  KVMI_VCPU_GET_REGISTERS: { name: VCPU, msrIndices: [0x174] },
  KVMI_VCPU_SET_REGISTERS: { name: VCPU, regs: create(RegsSchema, { rip: 1n }) },
  KVMI_VCPU_GET_CPUID: { name: VCPU, function: 1, index: 2 },
  KVMI_VM_CONTROL_CLEANUP: { vm: VM, enable: true },
  KVMI_VCPU_CONTROL_CR: { name: VCPU, cr: 4, enable: true },
  KVMI_VCPU_INJECT_EXCEPTION: { name: VCPU, vector: 6, errorCode: 1, address: 2n },
  KVMI_VM_GET_MAX_GFN: { vm: VM },
  KVMI_VCPU_GET_XCR: { name: VCPU, xcr: 0 },
  KVMI_VCPU_GET_XSAVE: { name: VCPU },
  KVMI_VCPU_SET_XSAVE: { name: VCPU, region: new Uint8Array(8) },
  KVMI_VCPU_GET_MTRR_TYPE: { name: VCPU, gpa: 0x1000n },
  KVMI_VCPU_CONTROL_MSR: { name: VCPU, msr: 0x140, enable: true },
  KVMI_VM_SET_PAGE_ACCESS: { vm: VM, entries: [{ gpa: 0x1000n, access: 3, visible: true }] },
  KVMI_VCPU_CONTROL_SINGLESTEP: { name: VCPU, enable: true },
  KVMI_VCPU_TRANSLATE_GVA: { name: VCPU, gva: 0x1000n },
};

describe.each(Object.keys(V9_COMMANDS) as V9CommandName[])("%s carries what it declares", (name) => {
  const m: AnyCommandMapping = COMMAND_MAPPINGS[name];
  const spec: CommandSpec = V9_COMMANDS[name];

  it("toWire writes every declared request field and nothing the layout lacks", () => {
    const request = create(m.requestSchema as DescMessage, FULL_REQUESTS[name] as never);
    const wire = (m.toWire as (r: unknown, limitsOf: LimitsOf) => { vcpu?: number; body: Record<string, unknown> })(request, () => v9.limits);
    const { present, unknown } = writtenKeys(wire.body, spec.request, `${name}.request`);
    expect(unknown).toEqual([]);
    const declared = declaredIn(spec.request, `${name}.request`);
    expect(declared.filter((k) => !present.has(k))).toEqual([]);
    // kvmi_vcpu_hdr.vcpu is declared for vCPU commands: toWire must produce it.
    expect(wire.vcpu !== undefined).toBe(spec.scope === "vcpu");
    expect(m.wireFields.some((f) => f.wire === "kvmi_vcpu_hdr.vcpu")).toBe(spec.scope === "vcpu");
  });

  it("fromWire reads every declared reply field", () => {
    const bytes = encodeReply(v9, spec, 1, 0, sampleBody(spec.reply));
    const reply = decodeReply(v9, spec, bytes.subarray(8)).value!;
    const reads = new Set<string>();
    (m.fromWire as (r: unknown) => unknown)(trackBody(reply, spec.reply, `${name}.reply`, reads));
    const declared = declaredIn(spec.reply, `${name}.reply`);
    expect(declared.filter((k) => !reads.has(k))).toEqual([]);
  });
});

describe.each(EVENT_SPECS.filter((e) => e.scope === "vcpu").map((e) => e.name))("%s carries what it declares", (name) => {
  const spec = EVENT_SPECS.find((e) => e.name === name)!;

  function sampleEvent(reads: Set<string>): KvmiEvent {
    const bytes = encodeEvent(v9, spec, 5, 1, sampleLayout(layouts.kvmiEventArch), spec.payload ? sampleLayout(spec.payload) : undefined);
    const decoded = decodeEvent(v9, bytes.subarray(8));
    return {
      seq: 5,
      vcpu: decoded.vcpu,
      kind: spec.kind,
      spec,
      arch: trackBody(decoded.arch, { layout: layouts.kvmiEventArch }, "arch", reads),
      payload: decoded.payload && spec.payload ? trackBody(decoded.payload, { layout: spec.payload }, "payload", reads) : undefined,
      receivedAt: 0n,
      receivedAtMs: 0,
    };
  }

  it("eventToProto reads every declared payload and arch field", () => {
    const reads = new Set<string>();
    eventToProto(UUID, sampleEvent(reads), undefined, new Date(0));
    const declared = [
      ...declaredIn({ layout: layouts.kvmiEventArch }, "arch"),
      ...(spec.payload ? declaredIn({ layout: spec.payload }, "payload") : []),
    ];
    expect(declared.filter((k) => !reads.has(k))).toEqual([]);
  });

  it("eventReplyToWire writes every declared reply-data field", () => {
    const reply = create(EventReplySchema, { vcpu: 1, seq: 5, action: EventAction.CONTINUE });
    const wire = eventReplyToWire(sampleEvent(new Set()), reply);
    if (spec.replyData === null) {
      expect(wire.replyData).toBeUndefined();
      return;
    }
    const { present, unknown } = writtenKeys(wire.replyData!, { layout: spec.replyData }, "replyData");
    expect(unknown).toEqual([]);
    expect(declaredIn({ layout: spec.replyData }, "replyData").filter((k) => !present.has(k))).toEqual([]);
  });
});

describe("VM identity carries what it declares", () => {
  it("vmToProto reads every field of a full VmRecord (the handshake identity included)", () => {
    const record: Required<VmRecord> = {
      uuid: UUID,
      name: "n",
      state: "hooked",
      generation: 1,
      vcpuCount: 1,
      startTime: 1n,
      hookedAt: new Date(0),
      variant: "e820",
      dialect: "v9",
      kvmiVersion: 1,
      features: { singlestep: true },
      maxGpa: 1n,
      cpuType: 1,
      e820: [{ address: 0n, length: 1n, type: 1 }],
      controllerAttached: false,
      observerCount: 0,
      unhookDeadline: new Date(0),
      origin: { namespace: "ns", name: "vmi", pod: "virt-launcher-vmi-x" },
      problem: "p",
      commands: ["READ_PHYSICAL"],
      events: ["CR"],
    };
    const reads = new Set<string>();
    const tracked = new Proxy(record, {
      get(target, prop, receiver) {
        if (typeof prop === "string") reads.add(prop);
        return Reflect.get(target, prop, receiver) as unknown;
      },
    });
    vmToProto(tracked);
    expect(Object.keys(record).filter((k) => !reads.has(k))).toEqual([]);
  });
});
