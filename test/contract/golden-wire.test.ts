// SPDX-License-Identifier: Apache-2.0
/**
 * Golden bytes (conventions §7 item 3): every `test/fixtures/wire/*.hex` file was written by hand
 * from the offsets of kvmi-abi §2.3-§6 and annotated field by field; none was produced by our encoder.
 * For each fixture this test holds a hand-written expected value (literal objects below, never
 * computed by the code under test) and asserts both directions:
 *   decode(fixture) deep-equals the expected value, and
 *   encode(expected value) is byte-identical to the fixture.
 * It also feeds the concatenation of every message fixture to the framer, split at every offset.
 */
import { describe, expect, it } from "vitest";
import {
  checkHandshakeReply,
  createFramer,
  decode,
  decodeBody,
  decodeCommand,
  decodeEvent,
  decodeEventReply,
  decodeEventReplyData,
  decodeReply,
  encode,
  encodeBodyInto,
  encodeCommand,
  encodeEvent,
  encodeEventReply,
  encodeHandshake,
  encodeHandshakeReply,
  encodeReply,
  isEventReplyError,
  layouts,
  parseHandshake,
  readMsgHdr,
  v9,
  V9_COMMANDS,
  V9_EVENTS,
  viewOf,
} from "@kvmi/kvm-bridge/wire";
import type { MsgHdr } from "@kvmi/kvm-bridge/wire";
import { loadFixture, parseHexFixture, toHexRows } from "../support/hex.js";

const {
  qemuVmiE820Entry,
  qemuVmiFromIntrospector,
  qemuVmiToIntrospector,
  qemuVmiToIntrospectorE820,
  qemuVmiToIntrospectorE820Body,
  qemuVmiToIntrospectorMaxGpa,
} = layouts;

// ---------------------------------------------------------------------------------------------
// Hand-written value builders: every key of the C struct, zero unless overridden. Written from
// kvmi-abi §6, not derived from the layout tables, so a missing or extra field in a table shows up.

type Obj = Record<string, unknown>;

function kvmRegs(o: Obj = {}): Obj {
  return {
    rax: 0n, rbx: 0n, rcx: 0n, rdx: 0n, rsi: 0n, rdi: 0n, rsp: 0n, rbp: 0n,
    r8: 0n, r9: 0n, r10: 0n, r11: 0n, r12: 0n, r13: 0n, r14: 0n, r15: 0n,
    rip: 0n, rflags: 0n,
    ...o,
  };
}

function kvmSegment(o: Obj = {}): Obj {
  return {
    base: 0n, limit: 0, selector: 0, type: 0, present: 0, dpl: 0, db: 0, s: 0, l: 0, g: 0, avl: 0, unusable: 0,
    ...o,
  };
}

function kvmDtable(o: Obj = {}): Obj {
  return { base: 0n, limit: 0, ...o };
}

function kvmSregs(o: Obj = {}): Obj {
  return {
    cs: kvmSegment(), ds: kvmSegment(), es: kvmSegment(), fs: kvmSegment(),
    gs: kvmSegment(), ss: kvmSegment(), tr: kvmSegment(), ldt: kvmSegment(),
    gdt: kvmDtable(), idt: kvmDtable(),
    cr0: 0n, cr2: 0n, cr3: 0n, cr4: 0n, cr8: 0n, efer: 0n, apic_base: 0n,
    interrupt_bitmap: [0n, 0n, 0n, 0n],
    ...o,
  };
}

function archMsrs(o: Obj = {}): Obj {
  return {
    sysenter_cs: 0n, sysenter_esp: 0n, sysenter_eip: 0n, efer: 0n, star: 0n, lstar: 0n, cstar: 0n, pat: 0n,
    shadow_gs: 0n,
    ...o,
  };
}

function eventArch(o: Obj = {}): Obj {
  return { mode: 0, regs: kvmRegs(), sregs: kvmSregs(), msrs: archMsrs(), ...o };
}

/** The bytes of an ASCII string, NUL-padded to `length`. */
function ascii(text: string, length = text.length): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
  return out;
}

function bytes(...values: number[]): Uint8Array {
  return Uint8Array.from(values);
}

// Shared by the three handshake fixtures.
const UUID = bytes(0x5f, 0x3c, 0x8a, 0x2e, 0x1b, 0x4d, 0x4c, 0x6e, 0x9a, 0x7f, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab);
const UUID_TEXT = "5f3c8a2e-1b4d-4c6e-9a7f-0123456789ab";
const START_TIME = 1_700_000_000n;
const NAME = ascii("vm-golden", 64);
/** printf %s kvmi-golden-secret | sha1sum -> ab7f52aa640d7d8d3955429fa93dd8f431b8f0b4 */
const SECRET = ascii("kvmi-golden-secret");
const SECRET_SHA1 = bytes(
  0xab, 0x7f, 0x52, 0xaa, 0x64, 0x0d, 0x7d, 0x8d, 0x39, 0x55, 0x42, 0x9f, 0xa9, 0x3d, 0xd8, 0xf4, 0x31, 0xb8, 0xf0, 0xb4,
);

// The common vCPU state of breakpoint.event.hex.
const CS_64 = kvmSegment({ limit: 0xffff_ffff, selector: 0x10, type: 11, present: 1, s: 1, l: 1, g: 1 });
const BREAKPOINT_ARCH = eventArch({
  mode: 8,
  regs: kvmRegs({ rax: 0x1122_3344_5566_7788n, rsp: 0xffff_c900_0001_3f58n, rip: 0xffff_ffff_8100_0010n, rflags: 0x246n }),
  sregs: kvmSregs({
    cs: CS_64,
    gdt: kvmDtable({ base: 0xffff_fe00_0000_1000n, limit: 0x7f }),
    cr0: 0x8005_0033n,
    cr3: 0x1a_a000n,
    cr4: 0x34_06f0n,
    efer: 0xd01n,
    apic_base: 0xfee0_0900n,
    interrupt_bitmap: [0n, 1n, 0n, 0x8000_0000_0000_0000n],
  }),
  msrs: archMsrs({
    efer: 0xd01n,
    lstar: 0xffff_ffff_81a0_0080n,
    pat: 0x0007_0406_0007_0406n,
    shadow_gs: 0xffff_8882_37c0_0000n,
  }),
});

// ---------------------------------------------------------------------------------------------
// One golden case per message fixture.

interface MessageCase {
  readonly file: string;
  /** kvmi_msg_hdr as written in the fixture. */
  readonly hdr: MsgHdr;
  /** Decodes the body (after kvmi_msg_hdr) with the code under test. */
  readonly decode: (body: Uint8Array) => unknown;
  /** The hand-written decoded value. */
  readonly expected: unknown;
  /** Encodes the hand-written value with the code under test. */
  readonly encode: () => Uint8Array;
}

const C = V9_COMMANDS;
const E = V9_EVENTS;
const EVENT_REPLY_ERROR_SPEC = { id: 0, reply: { layout: null } } as const;

const MESSAGE_CASES: readonly MessageCase[] = [
  {
    file: "get-version.request.hex",
    hdr: { id: 1, size: 0, seq: 1 },
    decode: (body) => decodeCommand(v9, C.KVMI_GET_VERSION, body),
    expected: { value: {}, nonZeroPadding: undefined, extraBytes: 0, vcpu: undefined, vcpuHdrPadding: false },
    encode: () => encodeCommand(v9, C.KVMI_GET_VERSION, 1, {}),
  },
  {
    file: "get-version.reply.hex",
    hdr: { id: 1, size: 24, seq: 1 },
    decode: (body) => decodeReply(v9, C.KVMI_GET_VERSION, body),
    expected: { err: 0, value: { version: 1, features: { singlestep: 1 } } },
    encode: () => encodeReply(v9, C.KVMI_GET_VERSION, 1, 0, { version: 1, features: { singlestep: 1 } }),
  },
  {
    file: "read-physical.request.hex",
    hdr: { id: 6, size: 16, seq: 2 },
    decode: (body) => decodeCommand(v9, C.KVMI_VM_READ_PHYSICAL, body),
    expected: { value: { gpa: 0x1000n, size: 16 }, nonZeroPadding: undefined, extraBytes: 0, vcpu: undefined, vcpuHdrPadding: false },
    encode: () => encodeCommand(v9, C.KVMI_VM_READ_PHYSICAL, 2, { gpa: 0x1000n, size: 16 }),
  },
  {
    file: "read-physical.reply.hex",
    hdr: { id: 6, size: 24, seq: 2 },
    decode: (body) => decodeReply(v9, C.KVMI_VM_READ_PHYSICAL, body),
    expected: {
      err: 0,
      value: { data: bytes(0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x21, 0x0a, 0xff) },
    },
    encode: () =>
      encodeReply(v9, C.KVMI_VM_READ_PHYSICAL, 2, 0, {
        data: bytes(0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x21, 0x0a, 0xff),
      }),
  },
  {
    file: "rejected-command.reply.hex",
    hdr: { id: 6, size: 8, seq: 3 },
    decode: (body) => decodeReply(v9, C.KVMI_VM_READ_PHYSICAL, body),
    expected: { err: -1 },
    encode: () => encodeReply(v9, C.KVMI_VM_READ_PHYSICAL, 3, -1),
  },
  {
    file: "write-physical.request.hex",
    hdr: { id: 7, size: 20, seq: 4 },
    decode: (body) => decodeCommand(v9, C.KVMI_VM_WRITE_PHYSICAL, body),
    expected: {
      value: { gpa: 0x0001_2345_6789_a000n, size: 4, data: ascii("KVMI") },
      nonZeroPadding: undefined,
      extraBytes: 0,
      vcpu: undefined,
      vcpuHdrPadding: false,
    },
    encode: () => encodeCommand(v9, C.KVMI_VM_WRITE_PHYSICAL, 4, { gpa: 0x0001_2345_6789_a000n, data: ascii("KVMI") }),
  },
  {
    file: "pause-vcpu.request.hex",
    hdr: { id: 9, size: 16, seq: 12 },
    decode: (body) => decodeCommand(v9, C.KVMI_VCPU_PAUSE, body),
    expected: { value: { wait: 1 }, nonZeroPadding: undefined, extraBytes: 0, vcpu: 3, vcpuHdrPadding: false },
    encode: () => encodeCommand(v9, C.KVMI_VCPU_PAUSE, 12, { wait: 1 }, 3),
  },
  {
    file: "set-page-access.request.hex",
    hdr: { id: 23, size: 40, seq: 10 },
    decode: (body) => decodeCommand(v9, C.KVMI_VM_SET_PAGE_ACCESS, body),
    expected: {
      value: {
        count: 2,
        entries: [
          { gpa: 0x1000n, access: 1, visible: 0 },
          { gpa: 0x1_ffff_f000n, access: 7, visible: 1 },
        ],
      },
      nonZeroPadding: undefined,
      extraBytes: 0,
      vcpu: undefined,
      vcpuHdrPadding: false,
    },
    encode: () =>
      encodeCommand(v9, C.KVMI_VM_SET_PAGE_ACCESS, 10, {
        entries: [
          { gpa: 0x1000n, access: 1, visible: 0 },
          { gpa: 0x1_ffff_f000n, access: 7, visible: 1 },
        ],
      }),
  },
  {
    file: "get-registers.request.hex",
    hdr: { id: 11, size: 24, seq: 11 },
    decode: (body) => decodeCommand(v9, C.KVMI_VCPU_GET_REGISTERS, body),
    expected: {
      value: { nmsrs: 2, msrs_idx: [0xc000_0080, 0xc000_0082] },
      nonZeroPadding: undefined,
      extraBytes: 0,
      vcpu: 1,
      vcpuHdrPadding: false,
    },
    encode: () => encodeCommand(v9, C.KVMI_VCPU_GET_REGISTERS, 11, { msrs_idx: [0xc000_0080, 0xc000_0082] }, 1),
  },
  {
    file: "get-registers.reply.hex",
    hdr: { id: 11, size: 512, seq: 11 },
    decode: (body) => decodeReply(v9, C.KVMI_VCPU_GET_REGISTERS, body),
    expected: { err: 0, value: getRegistersReply() },
    encode: () => encodeReply(v9, C.KVMI_VCPU_GET_REGISTERS, 11, 0, getRegistersReply()),
  },
  {
    file: "unhook.event.hex",
    hdr: { id: 0, size: 544, seq: 1 },
    decode: (body) => decodeEvent(v9, body),
    expected: { spec: E.KVMI_EVENT_UNHOOK, eventId: 0, vcpu: 0, arch: eventArch(), payload: undefined },
    encode: () => encodeEvent(v9, E.KVMI_EVENT_UNHOOK, 1, 0, eventArch()),
  },
  {
    file: "breakpoint.event.hex",
    hdr: { id: 0, size: 560, seq: 7 },
    decode: (body) => decodeEvent(v9, body),
    expected: {
      spec: E.KVMI_EVENT_BREAKPOINT,
      eventId: 3,
      vcpu: 2,
      arch: BREAKPOINT_ARCH,
      payload: { gpa: 0x100_0010n, insn_len: 1 },
    },
    encode: () => encodeEvent(v9, E.KVMI_EVENT_BREAKPOINT, 7, 2, BREAKPOINT_ARCH, { gpa: 0x100_0010n, insn_len: 1 }),
  },
  {
    file: "cr.event-reply.hex",
    hdr: { id: 0, size: 24, seq: 9 },
    decode: (body) => {
      const reply = decodeEventReply(v9, body);
      return { ...reply, replyData: decodeEventReplyData(E.KVMI_EVENT_CR, reply.data) };
    },
    expected: {
      vcpu: 2,
      vcpuHdrPadding: false,
      action: 0,
      event: 4,
      replyPadding: false,
      data: bytes(0xf0, 0x06, 0x35, 0, 0, 0, 0, 0),
      replyData: { new_val: 0x35_06f0n },
    },
    encode: () => encodeEventReply(v9, E.KVMI_EVENT_CR, 9, 2, 0, { new_val: 0x35_06f0n }),
  },
  {
    file: "event-reply-error.hex",
    hdr: { id: 0, size: 8, seq: 9 },
    decode: (body) => decodeReply(v9, EVENT_REPLY_ERROR_SPEC, body),
    expected: { err: -22 },
    encode: () => encodeReply(v9, EVENT_REPLY_ERROR_SPEC, 9, -22),
  },
];

function getRegistersReply(): Obj {
  return {
    mode: 8,
    regs: kvmRegs({ rax: 0x22n, rdi: 0x18n, r15: 0x0123_4567_89ab_cdefn, rip: 0xffff_ffff_8100_1234n, rflags: 0x202n }),
    sregs: kvmSregs({
      cs: CS_64,
      ss: kvmSegment({ limit: 0xffff_ffff, selector: 0x18, type: 3, present: 1, db: 1, s: 1, g: 1 }),
      idt: kvmDtable({ base: 0xffff_fe00_0000_0000n, limit: 0xfff }),
      cr0: 0x8005_0033n,
      cr3: 0x1a_a000n,
      cr4: 0x34_06f0n,
      efer: 0xd01n,
      apic_base: 0xfee0_0900n,
    }),
    msrs: { nmsrs: 2 },
    entries: [
      { index: 0xc000_0080, data: 0xd01n },
      { index: 0xc000_0082, data: 0xffff_ffff_81a0_0080n },
    ],
  };
}

/** Expects `actual` to be byte-identical to `fixture`, showing both as hex rows when not. */
function expectSameBytes(actual: Uint8Array, fixture: Uint8Array, file: string): void {
  const firstDiff = actual.findIndex((b, i) => b !== fixture[i]);
  const where = actual.length !== fixture.length ? `length ${actual.length} vs ${fixture.length}` : `first difference at byte ${firstDiff}`;
  expect(
    Buffer.from(actual).toString("hex"),
    `encoding differs from ${file} (${where})\nencoded:\n${toHexRows(actual)}\nfixture:\n${toHexRows(fixture)}`,
  ).toBe(Buffer.from(fixture).toString("hex"));
}

describe("hex fixture reader", () => {
  it("strips comments and blank lines and reads byte pairs", () => {
    expect([...parseHexFixture("01 00   # id\n\n  # only a comment\nff\tFe # x\n")]).toEqual([1, 0, 0xff, 0xfe]);
  });

  it("rejects malformed tokens with the line and column", () => {
    expect(() => parseHexFixture("00 01\n02 3 04\n", "x.hex")).toThrow(/^x\.hex:2:4: .*"3".*byte offset 3/);
    expect(() => parseHexFixture("0g", "y.hex")).toThrow(/^y\.hex:1:1: /);
    expect(() => parseHexFixture("000", "z.hex")).toThrow(/^z\.hex:1:1: /);
  });
});

describe("golden wire messages (kvmi-abi §3-§6)", () => {
  for (const c of MESSAGE_CASES) {
    describe(c.file, () => {
      const fixture = loadFixture(c.file);

      it("has the hand-written header and a body of hdr.size bytes", () => {
        expect(readMsgHdr(fixture)).toStrictEqual(c.hdr);
        expect(fixture.length).toBe(8 + c.hdr.size);
      });

      it("decodes to the hand-written value", () => {
        expect(c.decode(fixture.subarray(8))).toStrictEqual(c.expected);
      });

      it("encodes the hand-written value to the fixture, byte for byte", () => {
        expectSameBytes(c.encode(), fixture, c.file);
      });
    });
  }

  it("tells the error reply to an event reply from an event (id 0 && size 8)", () => {
    expect(isEventReplyError(v9, readMsgHdr(loadFixture("event-reply-error.hex")))).toBe(true);
    expect(isEventReplyError(v9, readMsgHdr(loadFixture("unhook.event.hex")))).toBe(false);
    expect(isEventReplyError(v9, readMsgHdr(loadFixture("breakpoint.event.hex")))).toBe(false);
    // A command reply of size 8 with a non-zero id is an ordinary error reply.
    expect(isEventReplyError(v9, readMsgHdr(loadFixture("rejected-command.reply.hex")))).toBe(false);
  });

  it("locates the event payload with kvmi_event.size (kvmi-abi §3.3, §10)", () => {
    // A newer kernel with a 552-byte kvmi_event: the payload moves 8 bytes further.
    const fixture = loadFixture("breakpoint.event.hex");
    const body = new Uint8Array(552 + 16);
    body.set(fixture.subarray(8, 8 + 544));
    body[0] = 0x28; // kvmi_event.size = 552 (0x228)
    body.set(fixture.subarray(8 + 544), 552);
    expect(decodeEvent(v9, body).payload).toStrictEqual({ gpa: 0x100_0010n, insn_len: 1 });
  });
});

describe("framer over the golden messages", () => {
  const fixtures = MESSAGE_CASES.map((c) => ({ file: c.file, bytes: loadFixture(c.file) }));
  const stream = Buffer.concat(fixtures.map((f) => f.bytes));
  const expected = fixtures.map((f) => ({ hdr: readHdrByHand(f.bytes), body: [...f.bytes.subarray(8)] }));

  /** kvmi_msg_hdr read by hand (kvmi-abi §3.1), independent of readMsgHdr. */
  function readHdrByHand(b: Uint8Array): MsgHdr {
    return { id: b[0]! | (b[1]! << 8), size: b[2]! | (b[3]! << 8), seq: (b[4]! | (b[5]! << 8) | (b[6]! << 16) | (b[7]! << 24)) >>> 0 };
  }

  function run(chunks: Uint8Array[]): Array<{ hdr: MsgHdr; body: number[] }> {
    const framer = createFramer(v9);
    const out: Array<{ hdr: MsgHdr; body: number[] }> = [];
    for (const chunk of chunks) framer.push(chunk, (hdr, body) => out.push({ hdr, body: [...body] }));
    expect(framer.pendingBytes).toBe(0);
    return out;
  }

  it("splits the concatenated stream into the same messages in one chunk", () => {
    expect(run([stream])).toStrictEqual(expected);
  });

  it("splits the same messages whatever offset the stream is cut at", () => {
    for (let cut = 0; cut <= stream.length; cut++) {
      // Copies, so that each chunk has its own ArrayBuffer as a socket chunk would.
      const got = run([Uint8Array.from(stream.subarray(0, cut)), Uint8Array.from(stream.subarray(cut))]);
      if (JSON.stringify(got) !== JSON.stringify(expected)) {
        expect(got, `stream cut at byte ${cut}`).toStrictEqual(expected);
      }
    }
  });

  it("splits the same messages when fed one byte at a time", () => {
    const chunks = [...stream].map((b) => Uint8Array.of(b));
    expect(run(chunks)).toStrictEqual(expected);
  });
});

// ---------------------------------------------------------------------------------------------
// QEMU handshake (kvmi-abi §2.3): layouts + the generic codec, and handshake.ts on top.

describe("golden handshake structs (kvmi-abi §2.3)", () => {
  const base = { struct_size: 96, uuid: UUID, start_time: START_TIME, name: NAME };
  const maxGpa = { struct_size: 104, uuid: UUID, start_time: START_TIME, name: NAME, max_gpa: 0x2_4000_0000n };
  const e820Fixed = {
    struct_size: 152,
    uuid: UUID,
    cpu_type: 1,
    start_time: START_TIME,
    name: NAME,
    arch: { e820_count: 2 },
  };
  const e820Entries = [
    { address: 0n, length: 0x9_fc00n, type: 1 },
    { address: 0x10_0000n, length: 0x7ff0_0000n, type: 1 },
  ];
  const reply = { struct_size: 24, cookie_hash: SECRET_SHA1 };

  it("handshake-base.hex: qemu_vmi_to_introspector (96)", () => {
    const fixture = loadFixture("handshake-base.hex");
    expect(fixture.length).toBe(96);
    expect(decode(qemuVmiToIntrospector, fixture)).toStrictEqual(base);
    expectSameBytes(encode(qemuVmiToIntrospector, base), fixture, "handshake-base.hex");
  });

  it("handshake-max-gpa.hex: qemu_vmi_to_introspector with max_gpa (104)", () => {
    const fixture = loadFixture("handshake-max-gpa.hex");
    expect(fixture.length).toBe(104);
    expect(decode(qemuVmiToIntrospectorMaxGpa, fixture)).toStrictEqual(maxGpa);
    expectSameBytes(encode(qemuVmiToIntrospectorMaxGpa, maxGpa), fixture, "handshake-max-gpa.hex");
  });

  it("handshake-e820.hex: fixed part (104) + 2 qemu_vmi_e820_entry (24 each), with the codec", () => {
    const fixture = loadFixture("handshake-e820.hex");
    expect(fixture.length).toBe(104 + 2 * 24);
    expect(decode(qemuVmiToIntrospectorE820, fixture)).toStrictEqual(e820Fixed);
    expect([0, 1].map((i) => decode(qemuVmiE820Entry, fixture, 104 + 24 * i))).toStrictEqual(e820Entries);
    const encoded = new Uint8Array(152);
    encoded.set(encode(qemuVmiToIntrospectorE820, e820Fixed), 0);
    e820Entries.forEach((entry, i) => encoded.set(encode(qemuVmiE820Entry, entry), 104 + 24 * i));
    expectSameBytes(encoded, fixture, "handshake-e820.hex");
  });

  it("handshake-e820.hex: the same through the body schema with its e820_entries tail", () => {
    const fixture = loadFixture("handshake-e820.hex");
    const decoded = decodeBody(qemuVmiToIntrospectorE820Body, viewOf(fixture), 0, fixture.length);
    expect(decoded).toStrictEqual({
      value: { ...e820Fixed, e820_entries: e820Entries },
      nonZeroPadding: undefined,
      extraBytes: 0,
    });
    const out = new Uint8Array(152);
    const written = encodeBodyInto(
      qemuVmiToIntrospectorE820Body,
      { ...e820Fixed, arch: { e820_count: 0 }, e820_entries: e820Entries }, // count is written from the tail
      viewOf(out),
      0,
    );
    expect(written).toBe(152);
    expectSameBytes(out, fixture, "handshake-e820.hex");
  });

  it("handshake-reply.hex: qemu_vmi_from_introspector (24) with SHA-1 of the secret", () => {
    const fixture = loadFixture("handshake-reply.hex");
    expect(decode(qemuVmiFromIntrospector, fixture)).toStrictEqual(reply);
    expectSameBytes(encode(qemuVmiFromIntrospector, reply), fixture, "handshake-reply.hex");
  });

  it("handshake.ts parses and produces the same golden bytes", () => {
    const identity = { uuid: UUID_TEXT, name: "vm-golden", startTime: START_TIME };
    expect(parseHandshake(loadFixture("handshake-base.hex"), "base")).toStrictEqual({ variant: "base", ...identity });
    expect(parseHandshake(loadFixture("handshake-max-gpa.hex"), "max-gpa")).toStrictEqual({
      variant: "max-gpa",
      ...identity,
      maxGpa: 0x2_4000_0000n,
    });
    expect(parseHandshake(loadFixture("handshake-e820.hex"), "e820")).toStrictEqual({
      variant: "e820",
      ...identity,
      cpuType: 1,
      e820: e820Entries,
    });
    expectSameBytes(encodeHandshake({ variant: "base", ...identity }), loadFixture("handshake-base.hex"), "handshake-base.hex");
    expectSameBytes(
      encodeHandshake({ variant: "max-gpa", ...identity, maxGpa: 0x2_4000_0000n }),
      loadFixture("handshake-max-gpa.hex"),
      "handshake-max-gpa.hex",
    );
    expectSameBytes(
      encodeHandshake({ variant: "e820", ...identity, cpuType: 1, e820: e820Entries }),
      loadFixture("handshake-e820.hex"),
      "handshake-e820.hex",
    );
    expectSameBytes(encodeHandshakeReply(SECRET), loadFixture("handshake-reply.hex"), "handshake-reply.hex");
    expect(checkHandshakeReply(loadFixture("handshake-reply.hex"), SECRET)).toBeUndefined();
    expect(checkHandshakeReply(loadFixture("handshake-reply.hex"), ascii("another secret"))).toBeTypeOf("string");
  });

  it("auto-detects each handshake variant from its bytes", () => {
    expect(parseHandshake(loadFixture("handshake-base.hex")).variant).toBe("base");
    expect(parseHandshake(loadFixture("handshake-max-gpa.hex")).variant).toBe("max-gpa");
    expect(parseHandshake(loadFixture("handshake-e820.hex")).variant).toBe("e820");
  });
});
