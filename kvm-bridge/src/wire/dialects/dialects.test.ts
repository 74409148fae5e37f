// SPDX-License-Identifier: Apache-2.0
/**
 * The three dialect tables against the facts of docs/protocol/ (ids written here from the ABI
 * sheet's lists, not derived from the tables), and the dialect-neutral paths of the message codec:
 * lookups by op and kind, event framing per dialect, the vCPU moved into v12's VM_PAUSE_VCPU body,
 * kvmi-v7's u64 sizes read back as numbers.
 */
import { describe, expect, it } from "vitest";
import { KvmiNotInDialectError, KvmiUnsupportedError } from "../../errors.js";
import { decode } from "../codec.js";
import { commandByOp, eventByKind, requireCommand, requireEvent } from "../dialect.js";
import type { Dialect } from "../dialect.js";
import {
  decodeCommand,
  decodeEvent,
  decodeEventReply,
  encodeCommand,
  encodeEvent,
  encodeEventReply,
  isEventMessage,
  isEventReplyError,
  readMsgHdr,
} from "../message.js";
import { COMMON_COMMAND_OPS, KVMI_V7_ONLY_OPS } from "../ops.js";
import type { CommandOp, EventKind } from "../ops.js";
import { kvmiV7 } from "./kvmi-v7.js";
import { v12 } from "./v12.js";
import { v9 } from "./v9.js";

const DIALECTS: readonly Dialect[] = [v9, v12, kvmiV7];

/** v12 wire ids (kvmi-abi §1.3 items 1-2). */
const V12_COMMAND_IDS: Partial<Record<CommandOp, number>> = {
  GET_VERSION: 2,
  CHECK_COMMAND: 4,
  CHECK_EVENT: 6,
  GET_VM_INFO: 8,
  CONTROL_VM_EVENTS: 10,
  READ_PHYSICAL: 12,
  WRITE_PHYSICAL: 14,
  PAUSE_VCPU: 16,
  CONTROL_CLEANUP: 18,
  SET_PAGE_ACCESS: 20,
  GET_VCPU_INFO: 3,
  CONTROL_VCPU_EVENTS: 5,
  GET_REGISTERS: 7,
  SET_REGISTERS: 9,
  GET_CPUID: 11,
  CONTROL_CR: 13,
  INJECT_EXCEPTION: 15,
  GET_XCR: 17,
  GET_XSAVE: 19,
  SET_XSAVE: 21,
  GET_MTRR_TYPE: 23,
  CONTROL_MSR: 25,
  CONTROL_SINGLESTEP: 27,
  TRANSLATE_GVA: 29,
};
const V12_EVENT_IDS: Partial<Record<EventKind, number>> = {
  UNHOOK: 0,
  PAUSE_VCPU: 1,
  HYPERCALL: 3,
  BREAKPOINT: 5,
  CR: 7,
  TRAP: 9,
  XSETBV: 11,
  DESCRIPTOR: 13,
  MSR: 15,
  PF: 17,
  SINGLESTEP: 19,
};

/** kvmi-v7 wire ids (kvmi-abi §1.4, libkvmi HEAD). */
const V7_COMMAND_IDS: Partial<Record<CommandOp, number>> = {
  GET_VERSION: 2,
  CHECK_COMMAND: 3,
  CHECK_EVENT: 4,
  GET_VM_INFO: 5,
  GET_VCPU_INFO: 6,
  PAUSE_VCPU: 7,
  CONTROL_VM_EVENTS: 8,
  CONTROL_VCPU_EVENTS: 9,
  CONTROL_CR: 10,
  CONTROL_MSR: 11,
  GET_REGISTERS: 13,
  SET_REGISTERS: 14,
  GET_CPUID: 15,
  GET_XSAVE: 16,
  READ_PHYSICAL: 17,
  WRITE_PHYSICAL: 18,
  INJECT_EXCEPTION: 19,
  GET_PAGE_ACCESS: 20,
  SET_PAGE_ACCESS: 21,
  GET_MAP_TOKEN: 22,
  GET_MTRR_TYPE: 23,
  CONTROL_SPP: 24,
  GET_PAGE_WRITE_BITMAP: 25,
  SET_PAGE_WRITE_BITMAP: 26,
  CONTROL_CMD_RESPONSE: 27,
  SET_VE_INFO_PAGE: 28,
  GET_MAX_GFN: 29,
  GET_NEXT_AVAILABLE_GFN: 31,
  SWITCH_EPT_VIEW: 32,
  DISABLE_VE: 33,
  GET_EPT_VIEW: 34,
  TRANSLATE_GVA: 35,
  CONTROL_EPT_VIEW: 36,
  GET_XCR: 37,
  SET_XSAVE: 38,
  QUERY_PHYSICAL: 39,
  ALLOC_GFN: 41,
  FREE_GFN: 42,
  CREATE_EPT_VIEW: 43,
  DESTROY_EPT_VIEW: 44,
  CHANGE_GFN: 60,
  CONTROL_SINGLESTEP: 63,
};
const V7_EVENT_IDS: Partial<Record<EventKind, number>> = {
  UNHOOK: 0,
  CR: 1,
  MSR: 2,
  XSETBV: 3,
  BREAKPOINT: 4,
  HYPERCALL: 5,
  PF: 6,
  TRAP: 7,
  DESCRIPTOR: 8,
  CREATE_VCPU: 9,
  PAUSE_VCPU: 10,
  SINGLESTEP: 11,
  CPUID: 13,
};

describe.each(DIALECTS.map((d) => [d.name, d] as const))("the %s table", (_name, dialect) => {
  it("has unique ids, ops and kinds inside the allow-mask bounds", () => {
    const ids = dialect.commands.map((c) => c.id);
    expect(new Set(ids).size).toBe(ids.length);
    expect(new Set(dialect.commands.map((c) => c.op)).size).toBe(ids.length);
    expect(dialect.commands.every((c) => c.id < dialect.numMessages)).toBe(true);
    const eventIds = dialect.events.map((e) => e.id);
    expect(new Set(eventIds).size).toBe(eventIds.length);
    expect(new Set(dialect.events.map((e) => e.kind)).size).toBe(eventIds.length);
    expect(dialect.events.every((e) => e.id < dialect.numEvents)).toBe(true);
  });

  it("never gives a command the id of events or event replies", () => {
    const { vmEventMessageId, vcpuEventMessageId, replyMessageId } = dialect.eventFraming;
    for (const id of [vmEventMessageId, vcpuEventMessageId, replyMessageId]) expect(commandByOp(dialect, "GET_VERSION")!.id).not.toBe(id);
    expect(dialect.commands.filter((c) => [vmEventMessageId, vcpuEventMessageId, replyMessageId].includes(c.id))).toEqual([]);
  });

  it("always allows exactly GET_VERSION, CHECK_COMMAND and CHECK_EVENT", () => {
    expect(dialect.commands.filter((c) => c.alwaysAllowed).map((c) => c.op).sort()).toEqual(["CHECK_COMMAND", "CHECK_EVENT", "GET_VERSION"]);
  });

  it("round-trips every event through its framing, with the kind and the vCPU", () => {
    const archField = dialect.layouts.event.fields["arch"];
    if (archField?.kind !== "struct") throw new Error("no arch");
    const arch = decode(archField.layout, new Uint8Array(archField.layout.size).fill(0x11));
    for (const spec of dialect.events) {
      const payload = spec.payload === null ? undefined : decode(spec.payload, new Uint8Array(spec.payload.size));
      const vcpu = spec.scope === "vm" ? 0 : 3;
      const message = encodeEvent(dialect, spec, 42, vcpu, arch, payload);
      const hdr = readMsgHdr(message);
      expect(isEventMessage(dialect, hdr), spec.name).toBe(true);
      const decoded = decodeEvent(dialect, message.subarray(8), hdr.id);
      expect(decoded.spec?.kind, spec.name).toBe(spec.kind);
      expect(decoded.vcpu).toBe(vcpu);
      expect(decoded.payload).toStrictEqual(payload);
    }
  });

  it("answers events with the dialect's reply id and reads the kernel's error reply as one", () => {
    const pf = requireEvent(dialect, "PF");
    const reply = encodeEventReply(dialect, pf, 9, 1, 1);
    const hdr = readMsgHdr(reply);
    expect(hdr.id).toBe(dialect.eventFraming.replyMessageId);
    expect(decodeEventReply(dialect, reply.subarray(8))).toMatchObject({ vcpu: 1, action: 1, event: pf.id });
    expect(isEventReplyError(dialect, { id: hdr.id, size: 8, seq: 9 })).toBe(true);
    expect(isEventMessage(dialect, { id: hdr.id, size: 8, seq: 9 })).toBe(false);
  });
});

describe("lookups by op and kind", () => {
  it("finds every common op in v9 and all but GET_MAX_GFN in v12", () => {
    for (const op of COMMON_COMMAND_OPS) expect(commandByOp(v9, op)?.op, op).toBe(op);
    expect(COMMON_COMMAND_OPS.filter((op) => commandByOp(v12, op) === undefined)).toEqual(["GET_MAX_GFN"]);
    expect(COMMON_COMMAND_OPS.filter((op) => commandByOp(kvmiV7, op) === undefined)).toEqual(["CONTROL_CLEANUP"]);
    expect(KVMI_V7_ONLY_OPS.filter((op) => commandByOp(kvmiV7, op) === undefined)).toEqual([]);
    for (const op of KVMI_V7_ONLY_OPS) expect(commandByOp(v9, op)).toBeUndefined();
  });

  it("names the dialect when it lacks an op or kind", () => {
    expect(() => requireCommand(v12, "GET_MAX_GFN")).toThrow(KvmiNotInDialectError);
    try {
      requireCommand(v12, "GET_MAX_GFN");
    } catch (err) {
      expect(err).toBeInstanceOf(KvmiUnsupportedError);
      expect(err).toMatchObject({ code: "KVMI_NOT_IN_DIALECT", dialect: "v12", op: "GET_MAX_GFN" });
      expect((err as Error).message).toMatch(/v12/);
    }
    expect(() => requireEvent(v9, "CPUID")).toThrow(/v9 dialect has no CPUID event/);
    expect(eventByKind(kvmiV7, "CPUID")?.id).toBe(13);
  });

  it("matches v12's ids (kvmi-abi §1.3)", () => {
    expect(Object.fromEntries(v12.commands.map((c) => [c.op, c.id]))).toEqual(V12_COMMAND_IDS);
    expect(Object.fromEntries(v12.events.map((e) => [e.kind, e.id]))).toEqual(V12_EVENT_IDS);
    expect(v12.eventFraming).toEqual({ vmEventMessageId: 0, vcpuEventMessageId: 1, replyMessageId: 1, vmEventsCarryCommon: false });
  });

  it("matches kvmi-v7's ids (kvmi-abi §1.4)", () => {
    expect(Object.fromEntries(kvmiV7.commands.map((c) => [c.op, c.id]))).toEqual(V7_COMMAND_IDS);
    expect(Object.fromEntries(kvmiV7.events.map((e) => [e.kind, e.id]))).toEqual(V7_EVENT_IDS);
    expect(kvmiV7.eventFraming).toEqual({ vmEventMessageId: 1, vcpuEventMessageId: 1, replyMessageId: 0, vmEventsCarryCommon: true });
    expect(kvmiV7.replyControlOp).toBe("CONTROL_CMD_RESPONSE");
  });

  it("carries the ioctl numbers and capabilities of kvmi-abi §1.2", () => {
    expect(v9.ioctls).toEqual({ hook: 0xc3, unhook: 0xc4, command: 0xc5, event: 0xc6, preunhook: 0xc7, capIntrospection: [184] });
    expect(v12.ioctls).toEqual({ hook: 0xc8, unhook: 0xc9, command: 0xca, event: 0xcb, preunhook: 0xcc, capIntrospection: [206] });
    expect(kvmiV7.ioctls).toEqual({ hook: 0xff, unhook: 0xfb, command: 0xfd, event: 0xfc, preunhook: 0xfe, capIntrospection: [180, 999] });
  });
});

describe("framing that differs by dialect", () => {
  it("v12 UNHOOK is kvmi_event_hdr alone: 8 + 8 bytes on id 0, with a zero arch for consumers", () => {
    const message = encodeEvent(v12, requireEvent(v12, "UNHOOK"), 1, 0, {});
    expect(Array.from(message)).toEqual([0, 0, 8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    const decoded = decodeEvent(v12, message.subarray(8), 0);
    expect(decoded).toMatchObject({ eventId: 0, vcpu: 0, payload: undefined });
    expect((decoded.arch as { regs: { rip: bigint } }).regs.rip).toBe(0n);
  });

  it("v12: an event id that does not fit its message id is malformed (a short vCPU message is not UNHOOK)", () => {
    // Message id 1 (vCPU events) whose kvmi_event_hdr reads 0 (VM_EVENT_UNHOOK): 10 bytes, no kvmi_vcpu_event.
    expect(() => decodeEvent(v12, new Uint8Array(10), 1)).toThrow(/KVMI_VM_EVENT_UNHOOK arrived in message id 1; VM events use 0/);
    // And a vCPU event (CR, 7) on the VM event message id 0.
    const onVmId = new Uint8Array(8 + 544 + 24);
    onVmId[0] = 7;
    expect(() => decodeEvent(v12, onVmId, 0)).toThrow(/KVMI_VCPU_EVENT_CR arrived in message id 0; vCPU events use 1/);
  });

  it("v12 vCPU events are hdr + kvmi_vcpu_event + payload on id 1", () => {
    const cr = requireEvent(v12, "CR");
    const archField = v12.layouts.event.fields["arch"];
    if (archField?.kind !== "struct") throw new Error("no arch");
    const arch = decode(archField.layout, new Uint8Array(archField.layout.size));
    const message = encodeEvent(v12, cr, 5, 2, arch, { cr: 4, old_value: 1n, new_value: 2n });
    expect(readMsgHdr(message)).toEqual({ id: 1, size: 8 + 544 + 24, seq: 5 });
    expect(message[8]).toBe(7); // kvmi_event_hdr.event = KVMI_VCPU_EVENT_CR
    expect(message[16]).toBe(0x20); // kvmi_vcpu_event.size = 544 (0x220)
    expect(message[17]).toBe(0x02);
    expect(message[18]).toBe(2); // kvmi_vcpu_event.vcpu
  });

  it("kvmi-v7 events arrive on id 1 and replies leave on id 0", () => {
    const bp = requireEvent(kvmiV7, "BREAKPOINT");
    const archField = kvmiV7.layouts.event.fields["arch"];
    if (archField?.kind !== "struct") throw new Error("no arch");
    const arch = { ...decode(archField.layout, new Uint8Array(archField.layout.size)), view: 3 };
    const message = encodeEvent(kvmiV7, bp, 7, 1, arch, { gpa: 0x1000n, insn_len: 1 });
    expect(readMsgHdr(message).id).toBe(1);
    expect(message[8 + 4]).toBe(4); // kvmi_event.event = KVMI_EVENT_BREAKPOINT
    expect(message[8 + 8 + 2]).toBe(3); // kvmi_event_arch.view
    expect((decodeEvent(kvmiV7, message.subarray(8)).arch as { view: number }).view).toBe(3);
    expect(readMsgHdr(encodeEventReply(kvmiV7, bp, 7, 1, 0)).id).toBe(0);
  });

  it("puts v12 VM_PAUSE_VCPU's vCPU in the body and reads it back as `vcpu`", () => {
    const pause = requireCommand(v12, "PAUSE_VCPU");
    const message = encodeCommand(v12, pause, 3, { wait: 1 }, 5);
    expect(Array.from(message)).toEqual([16, 0, 8, 0, 3, 0, 0, 0, 5, 0, 1, 0, 0, 0, 0, 0]);
    expect(decodeCommand(v12, pause, message.subarray(8))).toMatchObject({ vcpu: 5, value: { vcpu: 5, wait: 1 } });
    expect(() => encodeCommand(v12, pause, 3, { wait: 1 })).toThrow(/needs its index/);
  });

  it("writes kvmi-v7's u64 READ_PHYSICAL size from a number or a bigint and reads it back as a number", () => {
    const read = requireCommand(kvmiV7, "READ_PHYSICAL");
    const fromNumber = encodeCommand(kvmiV7, read, 1, { gpa: 0x2000n, size: 4096 });
    const fromBigint = encodeCommand(kvmiV7, read, 1, { gpa: 0x2000, size: 4096n });
    expect(fromNumber).toEqual(fromBigint);
    expect(Array.from(fromNumber.subarray(16, 24))).toEqual([0, 0x10, 0, 0, 0, 0, 0, 0]);
    expect(decodeCommand(kvmiV7, read, fromNumber.subarray(8)).value).toStrictEqual({ gpa: 0x2000n, size: 4096 });
  });
});
