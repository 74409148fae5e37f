// SPDX-License-Identifier: Apache-2.0
/**
 * Golden bytes of the v9 commands and events that golden-wire.test.ts does not cover (conventions
 * §7 item 3): each `test/fixtures/wire/*.hex` file below was written by hand from kvmi-abi §3-§6,
 * annotated field by field, and never produced by our encoder. For each, the decoded value is a
 * literal written here, and encoding that literal must give the fixture byte for byte. With
 * golden-wire.test.ts, every v9 command has a golden request and every v9 event a golden message.
 */
import { describe, expect, it } from "vitest";
import { decodeCommand, decodeEvent, decodeReply, encodeCommand, encodeEvent, encodeReply, readMsgHdr, v9, V9_COMMANDS, V9_EVENTS } from "@kvmi/kvm-bridge/wire";
import type { MsgHdr, V9CommandName } from "@kvmi/kvm-bridge/wire";
import { loadFixture, toHexRows } from "../support/hex.js";

type Body = Record<string, unknown>;

interface RequestCase {
  readonly file: string;
  readonly command: V9CommandName;
  readonly hdr: MsgHdr;
  readonly vcpu?: number;
  /** The request body as decoded: no padding fields, the tail's count field included. */
  readonly body: Body;
  /** What the encoder is given (the count field of a tail may be left out). */
  readonly input?: Body;
}

interface ReplyCase {
  readonly file: string;
  readonly command: V9CommandName;
  readonly hdr: MsgHdr;
  readonly value: Body;
}

/** kvm_regs of set-registers.request.hex, every field (kvmi-abi §6). */
const REGS: Body = {
  rax: 1n, rbx: 0n, rcx: 0n, rdx: 0n, rsi: 0n, rdi: 0n, rsp: 0xffff_c900_0001_3f58n, rbp: 0n,
  r8: 0n, r9: 0n, r10: 0n, r11: 0n, r12: 0n, r13: 0n, r14: 0n, r15: 0x0123_4567_89ab_cdefn,
  rip: 0xffff_ffff_8100_0011n, rflags: 0x202n,
}; // prettier-ignore

const XSAVE_START = Uint8Array.of(0x7f, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);

const REQUESTS: readonly RequestCase[] = [
  { file: "check-command.request.hex", command: "KVMI_VM_CHECK_COMMAND", hdr: { id: 2, size: 8, seq: 20 }, body: { id: 11 } },
  { file: "check-event.request.hex", command: "KVMI_VM_CHECK_EVENT", hdr: { id: 3, size: 8, seq: 21 }, body: { id: 9 } },
  { file: "vm-get-info.request.hex", command: "KVMI_VM_GET_INFO", hdr: { id: 4, size: 0, seq: 22 }, body: {} },
  { file: "vm-control-events.request.hex", command: "KVMI_VM_CONTROL_EVENTS", hdr: { id: 5, size: 8, seq: 23 }, body: { event_id: 0, enable: 1 } },
  { file: "vcpu-get-info.request.hex", command: "KVMI_VCPU_GET_INFO", hdr: { id: 8, size: 8, seq: 24 }, vcpu: 1, body: {} },
  { file: "vcpu-control-events.request.hex", command: "KVMI_VCPU_CONTROL_EVENTS", hdr: { id: 10, size: 16, seq: 25 }, vcpu: 2, body: { event_id: 3, enable: 1 } },
  { file: "set-registers.request.hex", command: "KVMI_VCPU_SET_REGISTERS", hdr: { id: 12, size: 152, seq: 26 }, vcpu: 0, body: REGS },
  { file: "get-cpuid.request.hex", command: "KVMI_VCPU_GET_CPUID", hdr: { id: 13, size: 16, seq: 27 }, vcpu: 1, body: { function: 0x8000_0001, index: 0 } },
  { file: "control-cleanup.request.hex", command: "KVMI_VM_CONTROL_CLEANUP", hdr: { id: 14, size: 8, seq: 28 }, body: { enable: 1 } },
  { file: "control-cr.request.hex", command: "KVMI_VCPU_CONTROL_CR", hdr: { id: 15, size: 16, seq: 29 }, vcpu: 0, body: { cr: 3, enable: 1 } },
  {
    file: "inject-exception.request.hex",
    command: "KVMI_VCPU_INJECT_EXCEPTION",
    hdr: { id: 16, size: 24, seq: 30 },
    vcpu: 1,
    body: { nr: 14, error_code: 2, address: 0x7fff_0000n },
  },
  { file: "get-max-gfn.request.hex", command: "KVMI_VM_GET_MAX_GFN", hdr: { id: 17, size: 0, seq: 31 }, body: {} },
  { file: "get-xcr.request.hex", command: "KVMI_VCPU_GET_XCR", hdr: { id: 18, size: 16, seq: 32 }, vcpu: 0, body: { xcr: 0 } },
  { file: "get-xsave.request.hex", command: "KVMI_VCPU_GET_XSAVE", hdr: { id: 19, size: 8, seq: 38 }, vcpu: 2, body: {} },
  { file: "set-xsave.request.hex", command: "KVMI_VCPU_SET_XSAVE", hdr: { id: 20, size: 24, seq: 33 }, vcpu: 1, body: { region: XSAVE_START } },
  { file: "get-mtrr-type.request.hex", command: "KVMI_VCPU_GET_MTRR_TYPE", hdr: { id: 21, size: 16, seq: 34 }, vcpu: 0, body: { gpa: 0xfee0_0000n } },
  { file: "control-msr.request.hex", command: "KVMI_VCPU_CONTROL_MSR", hdr: { id: 22, size: 16, seq: 35 }, vcpu: 1, body: { enable: 1, msr: 0xc000_0082 } },
  { file: "control-singlestep.request.hex", command: "KVMI_VCPU_CONTROL_SINGLESTEP", hdr: { id: 24, size: 16, seq: 36 }, vcpu: 0, body: { enable: 1 } },
  { file: "translate-gva.request.hex", command: "KVMI_VCPU_TRANSLATE_GVA", hdr: { id: 25, size: 16, seq: 37 }, vcpu: 1, body: { gva: 0xffff_8000_0000_1000n } },
];

const REPLIES: readonly ReplyCase[] = [
  { file: "vm-get-info.reply.hex", command: "KVMI_VM_GET_INFO", hdr: { id: 4, size: 24, seq: 22 }, value: { vcpu_count: 4 } },
  { file: "vcpu-get-info.reply.hex", command: "KVMI_VCPU_GET_INFO", hdr: { id: 8, size: 16, seq: 24 }, value: { tsc_speed: 2_400_000_000n } },
  {
    file: "get-cpuid.reply.hex",
    command: "KVMI_VCPU_GET_CPUID",
    hdr: { id: 13, size: 24, seq: 27 },
    value: { eax: 0, ebx: 0, ecx: 0x121, edx: 0x2c10_0800 },
  },
  { file: "get-max-gfn.reply.hex", command: "KVMI_VM_GET_MAX_GFN", hdr: { id: 17, size: 16, seq: 31 }, value: { gfn: 0x14_0000n } },
  { file: "get-xcr.reply.hex", command: "KVMI_VCPU_GET_XCR", hdr: { id: 18, size: 16, seq: 32 }, value: { value: 7n } },
  { file: "get-mtrr-type.reply.hex", command: "KVMI_VCPU_GET_MTRR_TYPE", hdr: { id: 21, size: 16, seq: 34 }, value: { type: 0 } },
  { file: "translate-gva.reply.hex", command: "KVMI_VCPU_TRANSLATE_GVA", hdr: { id: 25, size: 16, seq: 37 }, value: { gpa: 0xffff_ffff_ffff_ffffn } },
];

/** The requests golden-wire.test.ts covers; with REQUESTS they make every v9 command. */
const COVERED_ELSEWHERE: readonly V9CommandName[] = [
  "KVMI_GET_VERSION",
  "KVMI_VM_READ_PHYSICAL",
  "KVMI_VM_WRITE_PHYSICAL",
  "KVMI_VCPU_PAUSE",
  "KVMI_VCPU_GET_REGISTERS",
  "KVMI_VM_SET_PAGE_ACCESS",
];

function expectSameBytes(actual: Uint8Array, fixture: Uint8Array, file: string): void {
  expect(Buffer.from(actual).toString("hex"), `encoding differs from ${file}\nencoded:\n${toHexRows(actual)}\nfixture:\n${toHexRows(fixture)}`).toBe(
    Buffer.from(fixture).toString("hex"),
  );
}

describe("golden command requests (kvmi-abi §4)", () => {
  it("with golden-wire.test.ts, cover every v9 command", () => {
    expect([...REQUESTS.map((c) => c.command), ...COVERED_ELSEWHERE].sort()).toEqual(Object.keys(V9_COMMANDS).sort());
  });

  describe.each(REQUESTS)("$file", (c) => {
    const fixture = loadFixture(c.file);
    const spec = V9_COMMANDS[c.command];

    it("has the hand-written header (id of the command, body of hdr.size bytes)", () => {
      expect(readMsgHdr(fixture)).toStrictEqual(c.hdr);
      expect(c.hdr.id).toBe(spec.id);
      expect(fixture.length).toBe(8 + c.hdr.size);
    });

    it("decodes to the hand-written body and vCPU", () => {
      expect(decodeCommand(v9, spec, fixture.subarray(8))).toStrictEqual({
        value: c.body,
        nonZeroPadding: undefined,
        extraBytes: 0,
        vcpu: c.vcpu,
        vcpuHdrPadding: false,
      });
    });

    it("encodes the hand-written body to the fixture, byte for byte", () => {
      expectSameBytes(encodeCommand(v9, spec, c.hdr.seq, (c.input ?? c.body) as never, c.vcpu), fixture, c.file);
    });
  });
});

describe("golden command replies (kvmi-abi §3.2, §4)", () => {
  describe.each(REPLIES)("$file", (c) => {
    const fixture = loadFixture(c.file);
    const spec = V9_COMMANDS[c.command];

    it("has the hand-written header and decodes to the hand-written value", () => {
      expect(readMsgHdr(fixture)).toStrictEqual(c.hdr);
      expect(fixture.length).toBe(8 + c.hdr.size);
      expect(decodeReply(v9, spec, fixture.subarray(8))).toStrictEqual({ err: 0, value: c.value });
    });

    it("encodes the hand-written value to the fixture, byte for byte", () => {
      expectSameBytes(encodeReply(v9, spec, c.hdr.seq, 0, c.value as never), fixture, c.file);
    });
  });
});

// ---------------------------------------------------------------------------------------------
// Events: arch all zero in these fixtures (breakpoint.event.hex checks arch field by field).

interface EventCase {
  readonly file: string;
  readonly event: keyof typeof V9_EVENTS;
  readonly hdr: MsgHdr;
  readonly vcpu: number;
  /** The payload as decoded (no padding fields); undefined for events without one. */
  readonly payload: Body | undefined;
}

/** kvmi_event_arch with every field zero, written from kvmi-abi §6. */
function zeroArch(): Body {
  const segment = { base: 0n, limit: 0, selector: 0, type: 0, present: 0, dpl: 0, db: 0, s: 0, l: 0, g: 0, avl: 0, unusable: 0 };
  const dtable = { base: 0n, limit: 0 };
  return {
    mode: 0,
    regs: {
      rax: 0n, rbx: 0n, rcx: 0n, rdx: 0n, rsi: 0n, rdi: 0n, rsp: 0n, rbp: 0n,
      r8: 0n, r9: 0n, r10: 0n, r11: 0n, r12: 0n, r13: 0n, r14: 0n, r15: 0n, rip: 0n, rflags: 0n,
    },
    sregs: {
      cs: segment, ds: segment, es: segment, fs: segment, gs: segment, ss: segment, tr: segment, ldt: segment,
      gdt: dtable, idt: dtable,
      cr0: 0n, cr2: 0n, cr3: 0n, cr4: 0n, cr8: 0n, efer: 0n, apic_base: 0n,
      interrupt_bitmap: [0n, 0n, 0n, 0n],
    },
    msrs: { sysenter_cs: 0n, sysenter_esp: 0n, sysenter_eip: 0n, efer: 0n, star: 0n, lstar: 0n, cstar: 0n, pat: 0n, shadow_gs: 0n },
  }; // prettier-ignore
}

const EVENTS: readonly EventCase[] = [
  { file: "pause-vcpu.event.hex", event: "KVMI_EVENT_PAUSE_VCPU", hdr: { id: 0, size: 544, seq: 64 }, vcpu: 1, payload: undefined },
  { file: "hypercall.event.hex", event: "KVMI_EVENT_HYPERCALL", hdr: { id: 0, size: 544, seq: 65 }, vcpu: 0, payload: undefined },
  {
    file: "cr.event.hex",
    event: "KVMI_EVENT_CR",
    hdr: { id: 0, size: 568, seq: 66 },
    vcpu: 2,
    payload: { cr: 4, old_value: 0x34_06f0n, new_value: 0x35_06f0n },
  },
  {
    file: "trap.event.hex",
    event: "KVMI_EVENT_TRAP",
    hdr: { id: 0, size: 560, seq: 67 },
    vcpu: 1,
    payload: { nr: 14, error_code: 2, address: 0x7fff_0000n },
  },
  { file: "xsetbv.event.hex", event: "KVMI_EVENT_XSETBV", hdr: { id: 0, size: 568, seq: 68 }, vcpu: 0, payload: { xcr: 0, old_value: 3n, new_value: 7n } },
  { file: "descriptor.event.hex", event: "KVMI_EVENT_DESCRIPTOR", hdr: { id: 0, size: 552, seq: 69 }, vcpu: 1, payload: { descriptor: 2, write: 1 } },
  {
    file: "msr.event.hex",
    event: "KVMI_EVENT_MSR",
    hdr: { id: 0, size: 568, seq: 70 },
    vcpu: 1,
    payload: { msr: 0xc000_0082, old_value: 0xffff_ffff_81a0_0080n, new_value: 0x1000n },
  },
  {
    file: "pf.event.hex",
    event: "KVMI_EVENT_PF",
    hdr: { id: 0, size: 568, seq: 71 },
    vcpu: 0,
    payload: { gva: 0xffff_ffff_8100_1000n, gpa: 0x100_1000n, access: 2 },
  },
  { file: "singlestep.event.hex", event: "KVMI_EVENT_SINGLESTEP", hdr: { id: 0, size: 552, seq: 72 }, vcpu: 2, payload: { failed: 0 } },
];

/** The events golden-wire.test.ts covers; with EVENTS they make every v9 event. */
const EVENTS_COVERED_ELSEWHERE: ReadonlyArray<keyof typeof V9_EVENTS> = ["KVMI_EVENT_UNHOOK", "KVMI_EVENT_BREAKPOINT"];

describe("golden events (kvmi-abi §3.3, §5)", () => {
  it("with golden-wire.test.ts, cover every v9 event", () => {
    expect([...EVENTS.map((c) => c.event), ...EVENTS_COVERED_ELSEWHERE].sort()).toEqual(Object.keys(V9_EVENTS).sort());
  });

  describe.each(EVENTS)("$file", (c) => {
    const fixture = loadFixture(c.file);
    const spec = V9_EVENTS[c.event];

    it("has the hand-written header and decodes to the hand-written event", () => {
      expect(readMsgHdr(fixture)).toStrictEqual(c.hdr);
      expect(fixture.length).toBe(8 + c.hdr.size);
      expect(decodeEvent(v9, fixture.subarray(8))).toStrictEqual({ spec, eventId: spec.id, vcpu: c.vcpu, arch: zeroArch(), payload: c.payload });
    });

    it("encodes the hand-written event to the fixture, byte for byte", () => {
      expectSameBytes(encodeEvent(v9, spec, c.hdr.seq, c.vcpu, zeroArch() as never, c.payload as never), fixture, c.file);
    });
  });
});
