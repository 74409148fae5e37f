// SPDX-License-Identifier: Apache-2.0
/**
 * Golden bytes of v12 and kvmi-v7 (conventions §7 item 3), like golden-wire.test.ts for v9: every
 * `test/fixtures/wire/{v12,kvmi-v7}/*.hex` was written by hand from docs/protocol/ and the ABI sheet,
 * annotated field by field, never produced by our encoder. Each case holds a hand-written expected
 * value and checks both directions (decode(fixture) equals it; encoding it gives the fixture's
 * bytes), looking commands and events up by their dialect-neutral op and kind.
 */
import { describe, expect, it } from "vitest";
import {
  createFramer,
  decodeCommand,
  decodeEvent,
  decodeEventReply,
  decodeEventReplyData,
  decodeReply,
  encodeCommand,
  encodeEvent,
  encodeEventReply,
  encodeReply,
  isEventMessage,
  kvmiV7,
  readMsgHdr,
  requireCommand,
  requireEvent,
  v12,
} from "@kvmi/kvm-bridge/codec";
import type { Dialect, MsgHdr } from "@kvmi/kvm-bridge/codec";
import { loadFixture, toHexRows } from "../support/hex.js";

type Obj = Record<string, unknown>;

// Hand-written values (every key of the C struct, from the ABI sheet, not from the layout tables).
function kvmRegs(): Obj {
  return { rax: 0n, rbx: 0n, rcx: 0n, rdx: 0n, rsi: 0n, rdi: 0n, rsp: 0n, rbp: 0n, r8: 0n, r9: 0n, r10: 0n, r11: 0n, r12: 0n, r13: 0n, r14: 0n, r15: 0n, rip: 0n, rflags: 0n };
}
function kvmSegment(): Obj {
  return { base: 0n, limit: 0, selector: 0, type: 0, present: 0, dpl: 0, db: 0, s: 0, l: 0, g: 0, avl: 0, unusable: 0 };
}
function kvmSregs(): Obj {
  const dt = (): Obj => ({ base: 0n, limit: 0 });
  return {
    cs: kvmSegment(), ds: kvmSegment(), es: kvmSegment(), fs: kvmSegment(), gs: kvmSegment(), ss: kvmSegment(), tr: kvmSegment(), ldt: kvmSegment(),
    gdt: dt(), idt: dt(), cr0: 0n, cr2: 0n, cr3: 0n, cr4: 0n, cr8: 0n, efer: 0n, apic_base: 0n, interrupt_bitmap: [0n, 0n, 0n, 0n],
  };
}
function arch(o: Obj = {}): Obj {
  const msrs = { sysenter_cs: 0n, sysenter_esp: 0n, sysenter_eip: 0n, efer: 0n, star: 0n, lstar: 0n, cstar: 0n, pat: 0n, shadow_gs: 0n };
  return { mode: 8, regs: kvmRegs(), sregs: kvmSregs(), msrs, ...o };
}
const noExtras = { nonZeroPadding: undefined, extraBytes: 0, vcpuHdrPadding: false };

interface Case {
  readonly dialect: Dialect;
  readonly file: string;
  readonly hdr: MsgHdr;
  readonly decode: (body: Uint8Array) => unknown;
  readonly expected: unknown;
  readonly encode: () => Uint8Array;
}

const PF_REPLY = { ctx_addr: 0n, ctx_size: 0, singlestep: 1, rep_complete: 0, ctx_data: new Uint8Array(256) };

const CASES: readonly Case[] = [
  {
    dialect: v12,
    file: "v12/get-version.reply.hex",
    hdr: { id: 2, size: 24, seq: 1 },
    decode: (body) => decodeReply(v12, requireCommand(v12, "GET_VERSION"), body),
    expected: { err: 0, value: { version: 1, max_msg_size: 8184, features: { singlestep: 1 } } },
    encode: () => encodeReply(v12, requireCommand(v12, "GET_VERSION"), 1, 0, { version: 1, max_msg_size: 8184, features: { singlestep: 1 } }),
  },
  {
    dialect: v12,
    file: "v12/pause-vcpu.request.hex",
    hdr: { id: 16, size: 8, seq: 3 },
    decode: (body) => decodeCommand(v12, requireCommand(v12, "PAUSE_VCPU"), body),
    expected: { value: { vcpu: 5, wait: 1 }, vcpu: 5, ...noExtras },
    encode: () => encodeCommand(v12, requireCommand(v12, "PAUSE_VCPU"), 3, { wait: 1 }, 5),
  },
  {
    dialect: v12,
    file: "v12/set-page-access.request.hex",
    hdr: { id: 20, size: 24, seq: 4 },
    decode: (body) => decodeCommand(v12, requireCommand(v12, "SET_PAGE_ACCESS"), body),
    expected: { value: { count: 1, entries: [{ gpa: 0x2000n, access: 3 }] }, vcpu: undefined, ...noExtras },
    encode: () => encodeCommand(v12, requireCommand(v12, "SET_PAGE_ACCESS"), 4, { entries: [{ gpa: 0x2000n, access: 3 }] }),
  },
  {
    dialect: v12,
    file: "v12/unhook.event.hex",
    hdr: { id: 0, size: 8, seq: 1 },
    decode: (body) => decodeEvent(v12, body, 0),
    expected: { spec: requireEvent(v12, "UNHOOK"), eventId: 0, vcpu: 0, arch: arch({ mode: 0 }), payload: undefined },
    encode: () => encodeEvent(v12, requireEvent(v12, "UNHOOK"), 1, 0, {}),
  },
  {
    dialect: v12,
    file: "v12/cr.event.hex",
    hdr: { id: 1, size: 576, seq: 7 },
    decode: (body) => decodeEvent(v12, body, 1),
    expected: { spec: requireEvent(v12, "CR"), eventId: 7, vcpu: 2, arch: arch(), payload: { cr: 4, old_value: 0x34_06f0n, new_value: 0x35_06f0n } },
    encode: () => encodeEvent(v12, requireEvent(v12, "CR"), 7, 2, arch(), { cr: 4, old_value: 0x34_06f0n, new_value: 0x35_06f0n }),
  },
  {
    dialect: v12,
    file: "v12/cr.event-reply.hex",
    hdr: { id: 1, size: 24, seq: 7 },
    decode: (body) => {
      const reply = decodeEventReply(v12, body);
      return { ...reply, data: decodeEventReplyData(requireEvent(v12, "CR"), reply.data) };
    },
    expected: { vcpu: 2, vcpuHdrPadding: false, action: 0, event: 7, replyPadding: false, data: { new_val: 0x34_06f0n } },
    encode: () => encodeEventReply(v12, requireEvent(v12, "CR"), 7, 2, 0, { new_val: 0x34_06f0n }),
  },
  {
    dialect: kvmiV7,
    file: "kvmi-v7/get-version.request.hex",
    hdr: { id: 2, size: 0, seq: 1 },
    decode: (body) => decodeCommand(kvmiV7, requireCommand(kvmiV7, "GET_VERSION"), body),
    expected: { value: {}, vcpu: undefined, ...noExtras },
    encode: () => encodeCommand(kvmiV7, requireCommand(kvmiV7, "GET_VERSION"), 1, {}),
  },
  {
    dialect: kvmiV7,
    file: "kvmi-v7/get-version.reply.hex",
    hdr: { id: 2, size: 24, seq: 1 },
    decode: (body) => decodeReply(kvmiV7, requireCommand(kvmiV7, "GET_VERSION"), body),
    expected: { err: 0, value: { version: 1, features: { spp: 0, vmfunc: 1, eptp: 1, ve: 0 } } },
    encode: () =>
      encodeReply(kvmiV7, requireCommand(kvmiV7, "GET_VERSION"), 1, 0, { version: 1, features: { spp: 0, vmfunc: 1, eptp: 1, ve: 0 } }),
  },
  {
    dialect: kvmiV7,
    file: "kvmi-v7/read-physical.request.hex",
    hdr: { id: 17, size: 16, seq: 2 },
    decode: (body) => decodeCommand(kvmiV7, requireCommand(kvmiV7, "READ_PHYSICAL"), body),
    // The u64 size reads back as a number (docs/decisions/0010-dialect-model.md).
    expected: { value: { gpa: 0x1000n, size: 4096 }, vcpu: undefined, ...noExtras },
    encode: () => encodeCommand(kvmiV7, requireCommand(kvmiV7, "READ_PHYSICAL"), 2, { gpa: 0x1000n, size: 4096 }),
  },
  {
    dialect: kvmiV7,
    file: "kvmi-v7/control-cmd-response.request.hex",
    hdr: { id: 27, size: 8, seq: 5 },
    decode: (body) => decodeCommand(kvmiV7, requireCommand(kvmiV7, "CONTROL_CMD_RESPONSE"), body),
    expected: { value: { enable: 0, now: 1 }, vcpu: undefined, ...noExtras },
    encode: () => encodeCommand(kvmiV7, requireCommand(kvmiV7, "CONTROL_CMD_RESPONSE"), 5, { enable: 0, now: 1 }),
  },
  {
    dialect: kvmiV7,
    file: "kvmi-v7/pause-vcpu.request.hex",
    hdr: { id: 7, size: 16, seq: 6 },
    decode: (body) => decodeCommand(kvmiV7, requireCommand(kvmiV7, "PAUSE_VCPU"), body),
    expected: { value: { wait: 1 }, vcpu: 1, ...noExtras },
    encode: () => encodeCommand(kvmiV7, requireCommand(kvmiV7, "PAUSE_VCPU"), 6, { wait: 1 }, 1),
  },
  {
    dialect: kvmiV7,
    file: "kvmi-v7/set-page-access.request.hex",
    hdr: { id: 21, size: 24, seq: 8 },
    decode: (body) => decodeCommand(kvmiV7, requireCommand(kvmiV7, "SET_PAGE_ACCESS"), body),
    expected: { value: { view: 0, count: 1, entries: [{ gpa: 0x3000n, access: 5 }] }, vcpu: undefined, ...noExtras },
    encode: () => encodeCommand(kvmiV7, requireCommand(kvmiV7, "SET_PAGE_ACCESS"), 8, { view: 0, entries: [{ gpa: 0x3000n, access: 5 }] }),
  },
  {
    dialect: kvmiV7,
    file: "kvmi-v7/control-cr.request.hex",
    hdr: { id: 10, size: 16, seq: 9 },
    decode: (body) => decodeCommand(kvmiV7, requireCommand(kvmiV7, "CONTROL_CR"), body),
    expected: { value: { enable: 1, cr: 3 }, vcpu: 0, ...noExtras },
    encode: () => encodeCommand(kvmiV7, requireCommand(kvmiV7, "CONTROL_CR"), 9, { cr: 3, enable: 1 }, 0),
  },
  {
    dialect: kvmiV7,
    file: "kvmi-v7/pf.event.hex",
    hdr: { id: 1, size: 568, seq: 11 },
    decode: (body) => decodeEvent(kvmiV7, body, 1),
    expected: {
      spec: requireEvent(kvmiV7, "PF"),
      eventId: 6,
      vcpu: 1,
      arch: arch({ view: 2 }),
      payload: { gva: 0xffff_8800_0040_5000n, gpa: 0x40_5000n, access: 2, view: 2 },
    },
    encode: () =>
      encodeEvent(kvmiV7, requireEvent(kvmiV7, "PF"), 11, 1, arch({ view: 2 }), { gva: 0xffff_8800_0040_5000n, gpa: 0x40_5000n, access: 2, view: 2 }),
  },
  {
    dialect: kvmiV7,
    file: "kvmi-v7/pf.event-reply.hex",
    hdr: { id: 0, size: 288, seq: 11 },
    decode: (body) => {
      const reply = decodeEventReply(kvmiV7, body);
      return { ...reply, data: decodeEventReplyData(requireEvent(kvmiV7, "PF"), reply.data) };
    },
    expected: { vcpu: 1, vcpuHdrPadding: false, action: 1, event: 6, replyPadding: false, data: PF_REPLY },
    encode: () => encodeEventReply(kvmiV7, requireEvent(kvmiV7, "PF"), 11, 1, 1, PF_REPLY),
  },
  {
    dialect: kvmiV7,
    file: "kvmi-v7/cpuid.event.hex",
    hdr: { id: 1, size: 560, seq: 12 },
    decode: (body) => decodeEvent(kvmiV7, body, 1),
    expected: {
      spec: requireEvent(kvmiV7, "CPUID"),
      eventId: 13,
      vcpu: 0,
      arch: arch({ view: 0 }),
      payload: { function: 0x4000_0000, index: 1, insn_length: 2 },
    },
    encode: () => encodeEvent(kvmiV7, requireEvent(kvmiV7, "CPUID"), 12, 0, arch({ view: 0 }), { function: 0x4000_0000, index: 1, insn_length: 2 }),
  },
  {
    dialect: kvmiV7,
    file: "kvmi-v7/cpuid.event-reply.hex",
    hdr: { id: 0, size: 16, seq: 12 },
    decode: (body) => {
      const reply = decodeEventReply(kvmiV7, body);
      return { ...reply, data: decodeEventReplyData(requireEvent(kvmiV7, "CPUID"), reply.data) };
    },
    // No reply data: what the tool wants the guest to see goes in with SET_REGISTERS before it.
    expected: { vcpu: 0, vcpuHdrPadding: false, action: 1, event: 13, replyPadding: false, data: undefined },
    encode: () => encodeEventReply(kvmiV7, requireEvent(kvmiV7, "CPUID"), 12, 0, 1, undefined),
  },
];

describe.each(CASES.map((c) => [c.file, c] as const))("%s", (_file, c) => {
  const fixture = loadFixture(c.file);

  it("carries the kvmi_msg_hdr written in it", () => {
    expect(readMsgHdr(fixture)).toStrictEqual(c.hdr);
    expect(fixture.length).toBe(8 + c.hdr.size);
  });

  it("decodes to the hand-written value", () => {
    expect(c.decode(fixture.subarray(8))).toStrictEqual(c.expected);
  });

  it("is what the encoder writes for that value", () => {
    const encoded = c.encode();
    expect(toHexRows(encoded)).toBe(toHexRows(fixture));
  });
});

describe("framing by dialect", () => {
  it("v12: VM events on id 0, vCPU events on id 1, and the error reply to an event reply on id 1 is not an event", () => {
    expect(isEventMessage(v12, readMsgHdr(loadFixture("v12/unhook.event.hex")))).toBe(true);
    expect(isEventMessage(v12, readMsgHdr(loadFixture("v12/cr.event.hex")))).toBe(true);
    expect(isEventMessage(v12, { id: 1, size: 8, seq: 7 })).toBe(false);
    expect(isEventMessage(v12, readMsgHdr(loadFixture("v12/get-version.reply.hex")))).toBe(false);
  });

  it("kvmi-v7: events on id 1, and id 0 (event replies) is never an event", () => {
    expect(isEventMessage(kvmiV7, readMsgHdr(loadFixture("kvmi-v7/pf.event.hex")))).toBe(true);
    expect(isEventMessage(kvmiV7, readMsgHdr(loadFixture("kvmi-v7/pf.event-reply.hex")))).toBe(false);
    expect(isEventMessage(kvmiV7, readMsgHdr(loadFixture("kvmi-v7/get-version.reply.hex")))).toBe(false);
  });

  it.each([
    ["v12", v12],
    ["kvmi-v7", kvmiV7],
  ] as const)("%s: the framer splits the concatenated fixtures the same way at every offset", (name, dialect) => {
    const fixtures = CASES.filter((c) => c.dialect === dialect).map((c) => loadFixture(c.file));
    const stream = new Uint8Array(fixtures.reduce((n, f) => n + f.length, 0));
    let at = 0;
    for (const f of fixtures) {
      stream.set(f, at);
      at += f.length;
    }
    const expected = fixtures.map((f) => ({ hdr: readMsgHdr(f), body: toHexRows(f.subarray(8)) }));
    for (let split = 0; split <= stream.length; split += 7) {
      const framer = createFramer(dialect);
      const got: Array<{ hdr: MsgHdr; body: string }> = [];
      const onFrame = (hdr: MsgHdr, body: Uint8Array): void => void got.push({ hdr, body: toHexRows(body) });
      framer.push(stream.subarray(0, split), onFrame);
      framer.push(stream.subarray(split), onFrame);
      expect(got, `${name} split at ${split}`).toStrictEqual(expected);
    }
  });
});
