// SPDX-License-Identifier: Apache-2.0
/**
 * Every v9 command's toWire/fromWire on a hand-written sample (expected values written by hand from
 * kvmi-abi §4 and command.proto), checked through the real codec, plus the argument pre-checks.
 */
import { create } from "@bufbuild/protobuf";
import type { DescMessage } from "@bufbuild/protobuf";
import { KvmiArgumentError } from "@kvmi/kvm-bridge";
import { decodeCommand, decodeReply, encodeCommand, encodeReply, v9, V9_COMMANDS } from "@kvmi/kvm-bridge/wire";
import type { DialectLimits, V9CommandName } from "@kvmi/kvm-bridge/wire";
import {
  Command,
  CpuMode,
  EventType,
  IntrospectionService,
  MtrrType,
  RegsSchema,
  SessionCommandSchema,
  CommandResultSchema,
} from "@kvmi/proto";
import { describe, expect, it } from "vitest";
import { COMMAND_MAPPINGS, commandMappingByMethod, responseFromWire } from "./commands.js";
import type { AnyCommandMapping, LimitsOf } from "./commands.js";
import { msrEntryToProto, regsToProto, sregsToProto } from "./registers.js";
import { sampleRegs, sampleSregs, UUID, VCPU, VM } from "./test-support.js";

interface Case {
  readonly request: Record<string, unknown>;
  readonly vcpu?: number;
  readonly body: Record<string, unknown>;
  readonly reply: Record<string, unknown>;
  readonly response: Record<string, unknown>;
}

const regs = sampleRegs();
const sregs = sampleSregs();
const page = Uint8Array.from({ length: 64 }, (_, i) => i);
const xsave = Uint8Array.from({ length: 4096 }, (_, i) => i % 251);

const CASES: { readonly [N in V9CommandName]: Case } = {
  KVMI_GET_VERSION: {
    request: { vm: VM },
    body: {},
    reply: { version: 1, features: { singlestep: 1 } },
    response: { version: 1, features: { singlestep: true }, maxMsgSize: 8184 },
  },
  KVMI_VM_CHECK_COMMAND: {
    request: { vm: VM, command: Command.VCPU_GET_REGISTERS },
    body: { id: 11 },
    reply: {},
    response: {},
  },
  KVMI_VM_CHECK_EVENT: {
    request: { vm: VM, event: EventType.PF },
    body: { id: 9 },
    reply: {},
    response: {},
  },
  KVMI_VM_GET_INFO: { request: { vm: VM }, body: {}, reply: { vcpu_count: 4 }, response: { vcpuCount: 4 } },
  KVMI_VM_CONTROL_EVENTS: {
    request: { vm: VM, event: EventType.UNHOOK, enable: true },
    body: { event_id: 0, enable: 1 },
    reply: {},
    response: {},
  },
  KVMI_VM_READ_PHYSICAL: {
    request: { vm: VM, gpa: 0x1000_0fc0n, size: 64 },
    body: { gpa: 0x1000_0fc0n, size: 64 },
    reply: { data: page },
    response: { data: page },
  },
  KVMI_VM_WRITE_PHYSICAL: {
    request: { vm: VM, gpa: 0x2000n, data: page },
    body: { gpa: 0x2000n, data: page },
    reply: {},
    response: {},
  },
  KVMI_VCPU_GET_INFO: { request: { name: VCPU }, vcpu: 2, body: {}, reply: { tsc_speed: 2_400_000_000n }, response: { tscSpeed: 2_400_000_000n } },
  KVMI_VCPU_PAUSE: { request: { name: VCPU, wait: true }, vcpu: 2, body: { wait: 1 }, reply: {}, response: {} },
  KVMI_VCPU_CONTROL_EVENTS: {
    request: { name: VCPU, event: EventType.BREAKPOINT, enable: false },
    vcpu: 2,
    body: { event_id: 3, enable: 0 },
    reply: {},
    response: {},
  },
  KVMI_VCPU_GET_REGISTERS: {
    request: { name: VCPU, msrIndices: [0xc000_0082, 0x174] },
    vcpu: 2,
    body: { msrs_idx: [0xc000_0082, 0x174] },
    reply: {
      mode: 8,
      regs,
      sregs,
      msrs: { nmsrs: 2 },
      entries: [
        { index: 0xc000_0082, data: 0xffffffff81a00010n },
        { index: 0x174, data: 0x10n },
      ],
    },
    response: {
      mode: CpuMode.BITS_64,
      regs: regsToProto(regs),
      sregs: sregsToProto(sregs),
      msrs: [msrEntryToProto({ index: 0xc000_0082, data: 0xffffffff81a00010n }), msrEntryToProto({ index: 0x174, data: 0x10n })],
    },
  },
  KVMI_VCPU_SET_REGISTERS: {
    request: { name: VCPU, regs: create(RegsSchema, { rax: 1n, rip: 0xffffffff81000000n, rflags: 0x202n }) },
    vcpu: 2,
    body: { ...Object.fromEntries(Object.keys(regs).map((k) => [k, 0n])), rax: 1n, rip: 0xffffffff81000000n, rflags: 0x202n },
    reply: {},
    response: {},
  },
  KVMI_VCPU_GET_CPUID: {
    request: { name: VCPU, function: 0x8000_0001, index: 0 },
    vcpu: 2,
    body: { function: 0x8000_0001, index: 0 },
    reply: { eax: 1, ebx: 2, ecx: 3, edx: 4 },
    response: { eax: 1, ebx: 2, ecx: 3, edx: 4 },
  },
  KVMI_VM_CONTROL_CLEANUP: { request: { vm: VM, enable: true }, body: { enable: 1 }, reply: {}, response: {} },
  KVMI_VCPU_CONTROL_CR: { request: { name: VCPU, cr: 3, enable: true }, vcpu: 2, body: { cr: 3, enable: 1 }, reply: {}, response: {} },
  KVMI_VCPU_INJECT_EXCEPTION: {
    request: { name: VCPU, vector: 14, errorCode: 2, address: 0x7fff_0000n },
    vcpu: 2,
    body: { nr: 14, error_code: 2, address: 0x7fff_0000n },
    reply: {},
    response: {},
  },
  KVMI_VM_GET_MAX_GFN: { request: { vm: VM }, body: {}, reply: { gfn: 0x14_0000n }, response: { gfn: 0x14_0000n } },
  KVMI_VCPU_GET_XCR: { request: { name: VCPU, xcr: 0 }, vcpu: 2, body: { xcr: 0 }, reply: { value: 7n }, response: { value: 7n } },
  KVMI_VCPU_GET_XSAVE: { request: { name: VCPU }, vcpu: 2, body: {}, reply: { region: xsave }, response: { region: xsave } },
  KVMI_VCPU_SET_XSAVE: { request: { name: VCPU, region: xsave }, vcpu: 2, body: { region: xsave }, reply: {}, response: {} },
  KVMI_VCPU_GET_MTRR_TYPE: {
    request: { name: VCPU, gpa: 0xfee0_0000n },
    vcpu: 2,
    body: { gpa: 0xfee0_0000n },
    reply: { type: 6 },
    response: { type: MtrrType.WRITE_BACK, rawType: 6 },
  },
  KVMI_VCPU_CONTROL_MSR: {
    request: { name: VCPU, msr: 0xc000_0082, enable: true },
    vcpu: 2,
    body: { enable: 1, msr: 0xc000_0082 },
    reply: {},
    response: {},
  },
  KVMI_VM_SET_PAGE_ACCESS: {
    request: {
      vm: VM,
      entries: [
        { gpa: 0x1000n, access: 1, visible: false },
        { gpa: 0x2000n, access: 7, visible: true },
      ],
    },
    body: {
      entries: [
        { gpa: 0x1000n, access: 1, visible: 0 },
        { gpa: 0x2000n, access: 7, visible: 1 },
      ],
    },
    reply: {},
    response: {},
  },
  KVMI_VCPU_CONTROL_SINGLESTEP: { request: { name: VCPU, enable: true }, vcpu: 2, body: { enable: 1 }, reply: {}, response: {} },
  KVMI_VCPU_TRANSLATE_GVA: {
    request: { name: VCPU, gva: 0xffff_8000_0000_1000n },
    vcpu: 2,
    body: { gva: 0xffff_8000_0000_1000n },
    reply: { gpa: 0x1000n },
    response: { gpa: 0x1000n, mapped: true },
  },
};

const mappings = Object.values<AnyCommandMapping>(COMMAND_MAPPINGS);

/** The VM's kernel limits in these tests: v9's, unless a test gives another dialect's. */
function toWire(m: AnyCommandMapping, init: Record<string, unknown>, limits: DialectLimits = v9.limits) {
  return (m.toWire as (r: unknown, limitsOf: LimitsOf) => { vm: string; vcpu?: number; body: Record<string, unknown> })(
    create(m.requestSchema as DescMessage, init as never),
    () => limits,
  );
}

function fromWire(m: AnyCommandMapping, reply: Record<string, unknown>): unknown {
  return responseFromWire(m as never, reply as never);
}

describe("COMMAND_MAPPINGS", () => {
  it("has one entry per v9 command, keyed and named by kernel name", () => {
    expect(Object.keys(COMMAND_MAPPINGS).sort()).toEqual(Object.keys(V9_COMMANDS).sort());
    for (const [key, m] of Object.entries(COMMAND_MAPPINGS)) {
      expect(m.command).toBe(key);
      expect(m.scope).toBe(V9_COMMANDS[m.command].scope);
    }
  });

  it("names the IntrospectionService method and the SessionCommand/CommandResult case of each command", () => {
    for (const m of mappings) {
      const method = IntrospectionService.method[m.method as keyof typeof IntrospectionService.method];
      expect(method, m.method).toBeDefined();
      expect(method.input.typeName).toBe(m.requestSchema.typeName);
      expect(method.output.typeName).toBe(m.responseSchema.typeName);
      // session.proto: field numbers are the v9 message id plus one, in both oneofs.
      const command = SessionCommandSchema.fields.find((f) => f.localName === m.method);
      const result = CommandResultSchema.fields.find((f) => f.localName === m.method);
      expect(command?.number, m.method).toBe(V9_COMMANDS[m.command].id + 1);
      expect(result?.number, m.method).toBe(V9_COMMANDS[m.command].id + 1);
      expect(command?.message?.typeName).toBe(m.requestSchema.typeName);
      expect(result?.message?.typeName).toBe(m.responseSchema.typeName);
      expect(commandMappingByMethod(m.method)).toBe(m);
    }
    expect(commandMappingByMethod("getVm")).toBeUndefined();
  });
});

describe.each(Object.keys(CASES) as V9CommandName[])("%s", (name) => {
  const m: AnyCommandMapping = COMMAND_MAPPINGS[name];
  const c = CASES[name];
  const spec = V9_COMMANDS[name];

  it("toWire parses the name and shapes the exact channel request", () => {
    const wire = toWire(m, c.request);
    expect(wire.vm).toBe(UUID);
    expect(wire.vcpu).toBe(c.vcpu);
    expect(wire.body).toEqual(c.body);
  });

  it("produces a body the codec encodes, and the kernel side decodes back", () => {
    const wire = toWire(m, c.request);
    const bytes = encodeCommand(v9, spec, 7, wire.body, wire.vcpu);
    const decoded = decodeCommand(v9, spec, bytes.subarray(8));
    expect(decoded.vcpu).toBe(wire.vcpu);
    expect(decoded.nonZeroPadding).toBeUndefined();
    for (const [key, value] of Object.entries(wire.body)) expect(decoded.value[key]).toEqual(value);
  });

  it("fromWire maps a codec-decoded reply to the response", () => {
    const bytes = encodeReply(v9, spec, 7, 0, c.reply);
    const reply = decodeReply(v9, spec, bytes.subarray(8));
    expect(reply.err).toBe(0);
    expect(fromWire(m, reply.value!)).toEqual(create(m.responseSchema as DescMessage, c.response as never));
  });
});

describe("resource names", () => {
  it("rejects a vCPU name on a VM command and a VM name on a vCPU command", () => {
    expect(() => toWire(COMMAND_MAPPINGS.KVMI_VM_GET_INFO, { vm: VCPU })).toThrow(/not a VM name/);
    expect(() => toWire(COMMAND_MAPPINGS.KVMI_VCPU_GET_INFO, { name: VM })).toThrow(/not a vCPU name/);
  });
});

describe("argument pre-checks (before the socket)", () => {
  /** Asserts a KvmiArgumentError naming `field` with a message matching `message`. */
  function rejects(name: V9CommandName, request: Record<string, unknown>, field: string, message: RegExp, limits?: DialectLimits): void {
    let thrown: unknown;
    try {
      toWire(COMMAND_MAPPINGS[name], request, limits);
    } catch (err) {
      thrown = err;
    }
    expect(thrown, `${name} ${JSON.stringify(request, (_, v: unknown) => (typeof v === "bigint" ? v.toString() : v))}`).toBeInstanceOf(
      KvmiArgumentError,
    );
    expect((thrown as KvmiArgumentError).field).toBe(field);
    expect((thrown as KvmiArgumentError).message).toMatch(message);
  }

  it("ReadPhysicalMemory: size 1..4096 within one 4 KiB page", () => {
    rejects("KVMI_VM_READ_PHYSICAL", { vm: VM, gpa: 0x1000n, size: 0 }, "size", /size is required: read 1\.\.4096 bytes/);
    rejects("KVMI_VM_READ_PHYSICAL", { vm: VM, gpa: 0x1000n, size: 4097 }, "size", /above the 4096-byte limit.*BatchReadMemory/);
    rejects("KVMI_VM_READ_PHYSICAL", { vm: VM, gpa: 0x1ff0n, size: 32 }, "size", /0x1ff0\.\.0x200f crosses the 4 KiB page boundary at 0x2000/);
    expect(toWire(COMMAND_MAPPINGS.KVMI_VM_READ_PHYSICAL, { vm: VM, gpa: 0x1000n, size: 4096 }).body).toEqual({ gpa: 0x1000n, size: 4096 });
    expect(toWire(COMMAND_MAPPINGS.KVMI_VM_READ_PHYSICAL, { vm: VM, gpa: 0x1fffn, size: 1 }).body).toEqual({ gpa: 0x1fffn, size: 1 });
  });

  it("WritePhysicalMemory: data 1..4096 bytes within one page", () => {
    rejects("KVMI_VM_WRITE_PHYSICAL", { vm: VM, gpa: 0n, data: new Uint8Array() }, "data", /data is required: write 1\.\.4096 bytes/);
    rejects("KVMI_VM_WRITE_PHYSICAL", { vm: VM, gpa: 0n, data: new Uint8Array(4097) }, "data", /above the 4096-byte limit/);
    rejects("KVMI_VM_WRITE_PHYSICAL", { vm: VM, gpa: 0xfffn, data: new Uint8Array(2) }, "data", /crosses the 4 KiB page boundary at 0x1000/);
  });

  it("GetRegisters: at most 481 MSRs", () => {
    const ok = toWire(COMMAND_MAPPINGS.KVMI_VCPU_GET_REGISTERS, { name: VCPU, msrIndices: new Array(481).fill(0x10) });
    expect((ok.body["msrs_idx"] as number[]).length).toBe(481);
    rejects("KVMI_VCPU_GET_REGISTERS", { name: VCPU, msrIndices: new Array(482).fill(0x10) }, "msr_indices", /482 MSRs, at most 481/);
  });

  it("SetRegisters: regs is required", () => {
    rejects("KVMI_VCPU_SET_REGISTERS", { name: VCPU }, "regs", /regs is required/);
  });

  it("SetPageAccess: 1..511 entries, access 0..7", () => {
    const entry = { gpa: 0x1000n, access: 7, visible: false };
    rejects("KVMI_VM_SET_PAGE_ACCESS", { vm: VM, entries: [] }, "entries", /entries is required/);
    rejects("KVMI_VM_SET_PAGE_ACCESS", { vm: VM, entries: new Array(512).fill(entry) }, "entries", /512 pages, at most 511/);
    rejects("KVMI_VM_SET_PAGE_ACCESS", { vm: VM, entries: [entry, { ...entry, access: 8 }] }, "entries[1].access", /bits other than R \(1\), W \(2\) and X \(4\)/);
    expect(toWire(COMMAND_MAPPINGS.KVMI_VM_SET_PAGE_ACCESS, { vm: VM, entries: new Array(511).fill(entry) }).body["entries"]).toHaveLength(511);
  });

  it("takes every dialect-dependent limit from the VM's dialect table, not from v9", () => {
    // A dialect whose limits all differ from v9's (none of the three real ones does today: they
    // share KVMI_MSG_SIZE), so that a check still reading v9's numbers would let these through.
    const small: DialectLimits = { maxPhysicalBytes: 2048, maxPageAccessEntries: 100, maxGetRegistersMsrs: 7, maxXsaveBytes: 1024, maxPendingPauses: null };
    const entry = { gpa: 0x1000n, access: 7, visible: false };
    rejects("KVMI_VM_READ_PHYSICAL", { vm: VM, gpa: 0x1000n, size: 2049 }, "size", /above the 2048-byte limit/, small);
    rejects("KVMI_VM_WRITE_PHYSICAL", { vm: VM, gpa: 0n, data: new Uint8Array(2049) }, "data", /above the 2048-byte limit/, small);
    rejects("KVMI_VM_SET_PAGE_ACCESS", { vm: VM, entries: new Array(101).fill(entry) }, "entries", /101 pages, at most 100/, small);
    rejects("KVMI_VCPU_GET_REGISTERS", { name: VCPU, msrIndices: new Array(8).fill(0x10) }, "msr_indices", /8 MSRs, at most 7/, small);
    rejects("KVMI_VCPU_SET_XSAVE", { name: VCPU, region: new Uint8Array(1025) }, "region", /larger than struct kvm_xsave \(1024 bytes\)/, small);
    // And v9's own numbers pass where that dialect's would not.
    expect(toWire(COMMAND_MAPPINGS.KVMI_VM_READ_PHYSICAL, { vm: VM, gpa: 0x1000n, size: 4096 }).body).toEqual({ gpa: 0x1000n, size: 4096 });
  });

  it("asks for the limits of the VM the request names", () => {
    const asked: string[] = [];
    const limitsOf: LimitsOf = (vm) => {
      asked.push(vm);
      return v9.limits;
    };
    const read = COMMAND_MAPPINGS.KVMI_VM_READ_PHYSICAL;
    (read.toWire as (r: unknown, l: LimitsOf) => unknown)(create(read.requestSchema, { vm: VM, gpa: 0n, size: 1 }), limitsOf);
    expect(asked).toEqual([UUID]);
  });

  it("SetXsave: 1..4096 bytes", () => {
    rejects("KVMI_VCPU_SET_XSAVE", { name: VCPU, region: new Uint8Array() }, "region", /region is required/);
    rejects("KVMI_VCPU_SET_XSAVE", { name: VCPU, region: new Uint8Array(4097) }, "region", /4097 bytes is larger than struct kvm_xsave \(4096 bytes\)/);
    expect(toWire(COMMAND_MAPPINGS.KVMI_VCPU_SET_XSAVE, { name: VCPU, region: new Uint8Array(512) }).body["region"]).toHaveLength(512);
  });

  it("ControlCr: cr 0, 3 or 4", () => {
    for (const cr of [0, 3, 4]) expect(toWire(COMMAND_MAPPINGS.KVMI_VCPU_CONTROL_CR, { name: VCPU, cr }).body["cr"]).toBe(cr);
    for (const cr of [1, 2, 8, 99]) rejects("KVMI_VCPU_CONTROL_CR", { name: VCPU, cr }, "cr", /CR0, CR3 and CR4/);
  });

  it("ControlMsr: 0..0x1fff and 0xc0000000..0xc0001fff", () => {
    for (const msr of [0, 0x140, 0x1fff, 0xc000_0000, 0xc000_0082, 0xc000_1fff]) {
      expect(toWire(COMMAND_MAPPINGS.KVMI_VCPU_CONTROL_MSR, { name: VCPU, msr }).body["msr"]).toBe(msr);
    }
    for (const msr of [0x2000, 0xbfff_ffff, 0xc000_2000, 0xffff_ffff]) {
      rejects("KVMI_VCPU_CONTROL_MSR", { name: VCPU, msr }, "msr", /cannot be intercepted: KVMI accepts MSRs 0x0\.\.0x1fff and 0xc0000000\.\.0xc0001fff/);
    }
  });

  it("GetXcr: only XCR0; InjectException: vector 0..255", () => {
    rejects("KVMI_VCPU_GET_XCR", { name: VCPU, xcr: 1 }, "xcr", /only XCR0/);
    rejects("KVMI_VCPU_INJECT_EXCEPTION", { name: VCPU, vector: 256 }, "vector", /not an x86 exception vector \(0\.\.255\)/);
  });

  it("rejects UNSPECIFIED enums", () => {
    rejects("KVMI_VM_CHECK_COMMAND", { vm: VM, command: Command.UNSPECIFIED }, "command", /command is required/);
    rejects("KVMI_VM_CHECK_EVENT", { vm: VM, event: EventType.UNSPECIFIED }, "event", /event is required/);
    rejects("KVMI_VM_CONTROL_EVENTS", { vm: VM, event: EventType.UNSPECIFIED }, "event", /event is required/);
    rejects("KVMI_VCPU_CONTROL_EVENTS", { name: VCPU, event: EventType.UNSPECIFIED }, "event", /event is required/);
  });

  it("routes VM and vCPU events to the right command", () => {
    rejects("KVMI_VM_CONTROL_EVENTS", { vm: VM, event: EventType.PF }, "event", /KVMI_EVENT_PF is a vCPU event: enable it with ControlVcpuEvents/);
    rejects("KVMI_VCPU_CONTROL_EVENTS", { name: VCPU, event: EventType.UNHOOK }, "event", /KVMI_EVENT_UNHOOK is a VM event: enable it with ControlVmEvents/);
    rejects("KVMI_VCPU_CONTROL_EVENTS", { name: VCPU, event: 42 }, "event", /42 is not an event type this bridge knows/);
  });

  it("lets CheckCommand/CheckEvent ask the kernel about ids this bridge does not know", () => {
    expect(toWire(COMMAND_MAPPINGS.KVMI_VM_CHECK_COMMAND, { vm: VM, command: 31 }).body).toEqual({ id: 31 });
    expect(toWire(COMMAND_MAPPINGS.KVMI_VM_CHECK_EVENT, { vm: VM, event: 14 }).body).toEqual({ id: 13 });
    rejects("KVMI_VM_CHECK_COMMAND", { vm: VM, command: 0x1_0000 }, "command", /not a command/);
  });
});

describe("fromWire details", () => {
  it("TranslateGva reports ~0 as unmapped", () => {
    const m = COMMAND_MAPPINGS.KVMI_VCPU_TRANSLATE_GVA;
    expect(m.fromWire({ gpa: 0xffff_ffff_ffff_ffffn })).toEqual({ gpa: 0xffff_ffff_ffff_ffffn, mapped: false });
  });

  it("GetMtrrType maps every kernel type (kernel + 1) and keeps unknown ones raw", () => {
    const m = COMMAND_MAPPINGS.KVMI_VCPU_GET_MTRR_TYPE;
    const expected: Array<[number, MtrrType]> = [
      [0, MtrrType.UNCACHEABLE],
      [1, MtrrType.WRITE_COMBINING],
      [4, MtrrType.WRITE_THROUGH],
      [5, MtrrType.WRITE_PROTECTED],
      [6, MtrrType.WRITE_BACK],
      [2, MtrrType.UNSPECIFIED],
      [0xfe, MtrrType.UNSPECIFIED],
    ];
    for (const [raw, type] of expected) expect(m.fromWire({ type: raw })).toEqual({ type, rawType: raw });
  });

  it("GetRegisters reports an unknown mode as CPU_MODE_UNSPECIFIED", () => {
    const m = COMMAND_MAPPINGS.KVMI_VCPU_GET_REGISTERS;
    const reply = { ...(CASES.KVMI_VCPU_GET_REGISTERS.reply as never as Parameters<typeof m.fromWire>[0]), mode: 3 };
    expect(m.fromWire(reply).mode).toBe(CpuMode.UNSPECIFIED);
  });

  it("copies bulk bytes out of the reply buffer", () => {
    const buffer = new Uint8Array([1, 2, 3]);
    const out = COMMAND_MAPPINGS.KVMI_VM_READ_PHYSICAL.fromWire({ data: buffer });
    buffer[0] = 9;
    expect(out.data).toEqual(new Uint8Array([1, 2, 3]));
  });
});
