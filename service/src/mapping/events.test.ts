// SPDX-License-Identifier: Apache-2.0
/**
 * Events: all 11 v9 events through the real codec into Event (payload and arch), EventReply
 * validation (kvmi-abi §2.7: what would make the kernel close the socket), reply data defaults,
 * UnhookNotice.
 */
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { KvmiArgumentError } from "@kvmi/kvm-bridge";
import type { KvmiEvent } from "@kvmi/kvm-bridge";
import {
  decodeEvent,
  decodeEventReply,
  decodeEventReplyData,
  encodeEvent,
  encodeEventReply,
  kvmiV7,
  requireEvent,
  v9,
  V9_EVENTS,
} from "@kvmi/kvm-bridge/wire";
import type { V9EventName } from "@kvmi/kvm-bridge/wire";
import {
  DescriptorType,
  EventAction,
  EventReplySchema,
  EventSchema,
  EventType,
  RegsSchema,
  UnhookReason,
} from "@kvmi/proto";
import type { Event } from "@kvmi/proto";
import { describe, expect, it } from "vitest";
import { continueReply, DIALECT_EVENT_MAPPINGS, EVENT_MAPPINGS, eventReplyToWire, eventToProto, hasEventMapping, isVmEvent, unhookNotice } from "./events.js";
import { eventArchToProto } from "./registers.js";
import { sampleArch, UUID, VM } from "./test-support.js";

/** Hand-written payloads and the Event.payload each must become. */
const PAYLOADS: { readonly [N in V9EventName]: { wire?: Record<string, unknown>; proto: Event["payload"]; type: EventType } } = {
  KVMI_EVENT_UNHOOK: { proto: { case: undefined }, type: EventType.UNHOOK },
  KVMI_EVENT_PAUSE_VCPU: { proto: { case: "pauseVcpu", value: {} as never }, type: EventType.PAUSE_VCPU },
  KVMI_EVENT_HYPERCALL: { proto: { case: "hypercall", value: {} as never }, type: EventType.HYPERCALL },
  KVMI_EVENT_BREAKPOINT: {
    wire: { gpa: 0x10_2345n, insn_len: 1 },
    proto: { case: "breakpoint", value: { gpa: 0x10_2345n, insnLen: 1 } as never },
    type: EventType.BREAKPOINT,
  },
  KVMI_EVENT_CR: {
    wire: { cr: 4, old_value: 0x3706f0n, new_value: 0x3706f0n | (1n << 18n) },
    proto: { case: "cr", value: { cr: 4, oldValue: 0x3706f0n, newValue: 0x3706f0n | (1n << 18n) } as never },
    type: EventType.CR,
  },
  KVMI_EVENT_TRAP: {
    wire: { nr: 14, error_code: 6, address: 0x7fff_1000n },
    proto: { case: "trap", value: { vector: 14, errorCode: 6, address: 0x7fff_1000n } as never },
    type: EventType.TRAP,
  },
  KVMI_EVENT_XSETBV: {
    wire: { xcr: 0, old_value: 3n, new_value: 7n },
    proto: { case: "xsetbv", value: { xcr: 0, oldValue: 3n, newValue: 7n } as never },
    type: EventType.XSETBV,
  },
  KVMI_EVENT_DESCRIPTOR: {
    wire: { descriptor: 2, write: 1 },
    proto: { case: "descriptor", value: { descriptor: DescriptorType.GDTR, write: true } as never },
    type: EventType.DESCRIPTOR,
  },
  KVMI_EVENT_MSR: {
    wire: { msr: 0x140, old_value: 0n, new_value: 1n },
    proto: { case: "msr", value: { msr: 0x140, oldValue: 0n, newValue: 1n } as never },
    type: EventType.MSR,
  },
  KVMI_EVENT_PF: {
    wire: { gva: 0x40_1000n, gpa: 0x12_3000n, access: 2 },
    proto: { case: "pageFault", value: { gva: 0x40_1000n, gpa: 0x12_3000n, access: 2 } as never },
    type: EventType.PF,
  },
  KVMI_EVENT_SINGLESTEP: {
    wire: { failed: 1 },
    proto: { case: "singleStep", value: { failed: true } as never },
    type: EventType.SINGLESTEP,
  },
};

/** Encodes an event with the real codec and decodes it the way the channel does. */
function wireEvent(name: V9EventName, vcpu = 3, seq = 41): KvmiEvent {
  const spec = V9_EVENTS[name];
  const bytes = encodeEvent(v9, spec, seq, vcpu, sampleArch(), PAYLOADS[name].wire);
  const decoded = decodeEvent(v9, bytes.subarray(8));
  return { seq, vcpu: decoded.vcpu, kind: spec.kind, spec: decoded.spec!, arch: decoded.arch, payload: decoded.payload, receivedAt: 0n, receivedAtMs: 0 };
}

const DEADLINE = new Date("2025-01-02T03:04:05.678Z");
const RECEIVED = new Date("2025-01-02T03:04:05.000Z");
const VCPU_EVENTS = (Object.keys(V9_EVENTS) as V9EventName[]).filter((n) => V9_EVENTS[n].scope === "vcpu");

describe("EVENT_MAPPINGS", () => {
  it("has one entry per v9 event with EventType = v9 id + 1", () => {
    expect(Object.keys(EVENT_MAPPINGS).sort()).toEqual(Object.keys(V9_EVENTS).sort());
    for (const name of Object.keys(V9_EVENTS) as V9EventName[]) {
      expect(EVENT_MAPPINGS[name].type).toBe(PAYLOADS[name].type);
      expect(EVENT_MAPPINGS[name].type).toBe(V9_EVENTS[name].id + 1);
    }
  });
});

describe.each(VCPU_EVENTS)("eventToProto(%s)", (name) => {
  it("maps name, vm, vcpu, seq, type, arch, payload and times", () => {
    const event = eventToProto(UUID, wireEvent(name), DEADLINE, RECEIVED);
    expect(event.name).toBe(`${VM}/vcpus/3`);
    expect(event.vm).toBe(VM);
    expect(event.vcpu).toBe(3);
    expect(event.seq).toBe(41);
    expect(event.type).toBe(PAYLOADS[name].type);
    expect(event.arch).toEqual(eventArchToProto(sampleArch()));
    expect(event.payload.case).toBe(PAYLOADS[name].proto.case);
    expect(event.payload.value).toEqual(expect.objectContaining(PAYLOADS[name].proto.value ?? {}));
    expect(timestampDate(event.replyDeadline!)).toEqual(DEADLINE);
    expect(timestampDate(event.receiveTime!)).toEqual(RECEIVED);
  });

  it("survives a proto binary round trip", () => {
    const event = eventToProto(UUID, wireEvent(name), DEADLINE, RECEIVED);
    expect(fromBinary(EventSchema, toBinary(EventSchema, event))).toEqual(event);
  });
});

describe("eventToProto edge cases", () => {
  it("leaves reply_deadline unset when there is none", () => {
    expect(eventToProto(UUID, wireEvent("KVMI_EVENT_PAUSE_VCPU"), undefined, RECEIVED).replyDeadline).toBeUndefined();
  });

  it("refuses UNHOOK, which is delivered as an UnhookNotice", () => {
    const unhook = wireEvent("KVMI_EVENT_UNHOOK", 0);
    expect(isVmEvent(unhook)).toBe(true);
    expect(() => eventToProto(UUID, unhook, DEADLINE)).toThrow(/unhookNotice/);
  });

  it("maps an unknown descriptor value to DESCRIPTOR_TYPE_UNSPECIFIED", () => {
    const event = { ...wireEvent("KVMI_EVENT_DESCRIPTOR"), payload: { descriptor: 9, write: 0 } };
    expect(eventToProto(UUID, event, DEADLINE).payload).toEqual({
      case: "descriptor",
      value: expect.objectContaining({ descriptor: DescriptorType.UNSPECIFIED, write: false }),
    });
  });
});

describe("eventReplyToWire", () => {
  const reply = (init: Record<string, unknown>) => create(EventReplySchema, { vcpu: 3, seq: 41, ...init });

  function rejected(name: V9EventName, init: Record<string, unknown>, field: string, message: RegExp): void {
    let thrown: unknown;
    try {
      eventReplyToWire(wireEvent(name), reply(init));
    } catch (err) {
      thrown = err;
    }
    expect(thrown).toBeInstanceOf(KvmiArgumentError);
    expect((thrown as KvmiArgumentError).field).toBe(field);
    expect((thrown as KvmiArgumentError).message).toMatch(message);
  }

  it("maps actions to kernel values (proto = kernel + 1)", () => {
    const pf = wireEvent("KVMI_EVENT_PF");
    expect(eventReplyToWire(pf, reply({ action: EventAction.CONTINUE })).action).toBe(0);
    expect(eventReplyToWire(pf, reply({ action: EventAction.RETRY })).action).toBe(1);
    expect(eventReplyToWire(pf, reply({ action: EventAction.CRASH })).action).toBe(2);
  });

  it("accepts exactly the actions each event accepts (kvmi-abi §5)", () => {
    const all = [EventAction.CONTINUE, EventAction.RETRY, EventAction.CRASH];
    for (const name of VCPU_EVENTS) {
      const accepted = all.filter((action) => {
        try {
          eventReplyToWire(wireEvent(name), reply({ action }));
          return true;
        } catch {
          return false;
        }
      });
      const retry = name === "KVMI_EVENT_BREAKPOINT" || name === "KVMI_EVENT_DESCRIPTOR" || name === "KVMI_EVENT_PF";
      expect(accepted, name).toEqual(retry ? all : [EventAction.CONTINUE, EventAction.CRASH]);
    }
  });

  it("rejects RETRY to a CR event with a clear message (the kernel would close the socket)", () => {
    rejected("KVMI_EVENT_CR", { action: EventAction.RETRY }, "action", /EVENT_ACTION_RETRY is not accepted by CR events: use one of EVENT_ACTION_CONTINUE, EVENT_ACTION_CRASH/);
  });

  it("rejects UNSPECIFIED and unknown actions", () => {
    rejected("KVMI_EVENT_PF", { action: EventAction.UNSPECIFIED }, "action", /action is required/);
    rejected("KVMI_EVENT_PF", { action: 9 }, "action", /action 9 is not an EventAction/);
  });

  it("rejects new_val on events without reply data, and any reply to UNHOOK", () => {
    rejected("KVMI_EVENT_PF", { action: EventAction.CONTINUE, newVal: 1n }, "new_val", /only for CR and MSR events/);
    rejected("KVMI_EVENT_UNHOOK", { action: EventAction.CONTINUE }, "seq", /take no reply/);
  });

  it("sends the event's new_value when new_val is unset, and new_val when set (CR and MSR)", () => {
    for (const name of ["KVMI_EVENT_CR", "KVMI_EVENT_MSR"] as const) {
      const event = wireEvent(name);
      const newValue = (PAYLOADS[name].wire as { new_value: bigint }).new_value;
      const oldValue = (PAYLOADS[name].wire as { old_value: bigint }).old_value;
      expect(eventReplyToWire(event, reply({ action: EventAction.CONTINUE })).replyData).toEqual({ new_val: newValue });
      expect(eventReplyToWire(event, reply({ action: EventAction.CONTINUE, newVal: oldValue })).replyData).toEqual({ new_val: oldValue });
    }
    expect(eventReplyToWire(wireEvent("KVMI_EVENT_PF"), reply({ action: EventAction.RETRY })).replyData).toBeUndefined();
  });

  it("produces a reply the codec encodes as the kernel expects (kvmi-abi §3.4)", () => {
    const event = wireEvent("KVMI_EVENT_CR");
    const wire = eventReplyToWire(event, reply({ action: EventAction.CONTINUE, newVal: 0x3706f0n }));
    const bytes = encodeEventReply(v9, event.spec, event.seq, event.vcpu, wire.action, wire.replyData);
    expect(bytes.length).toBe(32);
    const decoded = decodeEventReply(v9, bytes.subarray(8));
    expect(decoded).toEqual(expect.objectContaining({ vcpu: 3, action: 0, event: 4, replyPadding: false, vcpuHdrPadding: false }));
    expect(decodeEventReplyData(event.spec, decoded.data)).toEqual({ new_val: 0x3706f0n });
  });

  it("passes registers through for SET_REGISTERS before the reply", () => {
    const wire = eventReplyToWire(
      wireEvent("KVMI_EVENT_BREAKPOINT"),
      reply({ action: EventAction.RETRY, registers: create(RegsSchema, { rip: 0x1001n }) }),
    );
    expect(wire.registers).toEqual(expect.objectContaining({ rip: 0x1001n, rax: 0n }));
    expect(wire.actionName).toBe("RETRY");
    expect(eventReplyToWire(wireEvent("KVMI_EVENT_BREAKPOINT"), reply({ action: EventAction.RETRY })).registers).toBeUndefined();
  });

  it("builds the CONTINUE reply the bridge sends at the deadline", () => {
    const event = wireEvent("KVMI_EVENT_MSR");
    const auto = continueReply(event);
    expect(auto).toEqual(expect.objectContaining({ vcpu: 3, seq: 41, action: EventAction.CONTINUE }));
    expect(auto.newVal).toBeUndefined();
    expect(eventReplyToWire(event, auto)).toEqual(
      expect.objectContaining({ action: 0, replyData: { new_val: 1n }, registers: undefined }),
    );
  });
});

describe("unhookNotice", () => {
  it("names the VM, the deadline and the reason", () => {
    const notice = unhookNotice(UUID, DEADLINE, UnhookReason.DEVICE_MANAGER);
    expect(notice.vm).toBe(VM);
    expect(notice.deadline).toEqual(timestampFromDate(DEADLINE));
    expect(notice.reason).toBe(UnhookReason.DEVICE_MANAGER);
  });
});

describe("events v9 lacks (kvmi-v7's CPUID and CREATE_VCPU; docs/protocol/kvmi-v7.md)", () => {
  const cpuid = (): KvmiEvent => {
    const spec = requireEvent(kvmiV7, "CPUID");
    const bytes = encodeEvent(kvmiV7, spec, 7, 1, { ...sampleArch(), view: 0 }, { function: 0x4000_0000, index: 2, insn_length: 2 });
    const decoded = decodeEvent(kvmiV7, bytes.subarray(8), 1);
    return { seq: 7, vcpu: decoded.vcpu, kind: spec.kind, spec: decoded.spec!, arch: decoded.arch, payload: decoded.payload, receivedAt: 0n, receivedAtMs: 0 };
  };

  it("have EventType values after v9's (CREATE_VCPU 12, CPUID 13), each matching its payload case", () => {
    expect(DIALECT_EVENT_MAPPINGS.CPUID.type).toBe(EventType.CPUID);
    expect(DIALECT_EVENT_MAPPINGS.CREATE_VCPU.type).toBe(EventType.CREATE_VCPU);
    expect([EventType.CREATE_VCPU, EventType.CPUID]).toEqual([12, 13]);
    expect(hasEventMapping("CPUID")).toBe(true);
    expect(hasEventMapping("CREATE_VCPU")).toBe(true);
  });

  it("map a kvmi-v7 CPUID event read through the real codec, payload and arch", () => {
    const event = eventToProto(UUID, cpuid(), DEADLINE, RECEIVED);
    expect(event).toMatchObject({ vcpu: 1, seq: 7, type: EventType.CPUID });
    expect(event.payload).toMatchObject({ case: "cpuid", value: { function: 0x4000_0000, index: 2, insnLength: 2 } });
    expect(event.arch).toEqual(eventArchToProto(sampleArch()));
    expect(fromBinary(EventSchema, toBinary(EventSchema, event))).toEqual(event);
  });

  it("declare the kvmi_event_cpuid fields they carry", () => {
    expect(DIALECT_EVENT_MAPPINGS.CPUID.wireFields.map((f) => f.wire).sort()).toEqual(
      Object.keys(requireEvent(kvmiV7, "CPUID").payload!.fields).filter((k) => !k.startsWith("padding")).map((k) => `kvmi_event_cpuid.${k}`).sort(),
    );
  });

  it("answer CPUID with its actions and no reply data (the kernel reads none): new_val is refused", () => {
    const event = cpuid();
    expect(eventReplyToWire(event, create(EventReplySchema, { vcpu: 1, seq: 7, action: EventAction.RETRY }))).toMatchObject({
      action: 1,
      actionName: "RETRY",
      replyData: undefined,
    });
    expect(() => eventReplyToWire(event, create(EventReplySchema, { vcpu: 1, seq: 7, action: EventAction.CONTINUE, newVal: 5n }))).toThrow(
      expect.objectContaining({ field: "new_val" }),
    );
  });
});
