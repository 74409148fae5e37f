// SPDX-License-Identifier: Apache-2.0
/**
 * The v9 dialect table against kvmi-abi §3-§5, §7, §9. Expected ids, names and whole-message sizes
 * are copied by hand from the sheet; sizes on the table side are computed from the layouts.
 */
import { describe, expect, it } from "vitest";
import { commandById, eventById } from "../dialect.js";
import type { BodySchema, CommandSpec, EventSpec } from "../dialect.js";
import type { Field, Layout } from "../layout.js";
import { SCALAR_BYTES } from "../layout.js";
import {
  KVM_E2BIG,
  KVM_EAGAIN,
  KVM_EBUSY,
  KVM_EFAULT,
  KVM_EINVAL,
  KVM_ENOENT,
  KVM_ENOMEM,
  KVM_ENOSYS,
  KVM_EOPNOTSUPP,
  KVM_EPERM,
  KVM_ERRNO_NAMES,
} from "./errno.js";
import {
  KVMI_DESC_GDTR,
  KVMI_DESC_IDTR,
  KVMI_DESC_LDTR,
  KVMI_DESC_TR,
  KVMI_PAGE_ACCESS_R,
  KVMI_PAGE_ACCESS_W,
  KVMI_PAGE_ACCESS_X,
  V9_COMMANDS,
  V9_EVENTS,
  v9,
} from "./v9.js";

// kvmi-abi §4: id, name, scope, dispatch (§2.5: VM commands and VCPU_PAUSE on the receive thread).
const COMMANDS: ReadonlyArray<readonly [number, string, "vm" | "vcpu", "receive-thread" | "vcpu-job"]> = [
  [1, "KVMI_GET_VERSION", "vm", "receive-thread"],
  [2, "KVMI_VM_CHECK_COMMAND", "vm", "receive-thread"],
  [3, "KVMI_VM_CHECK_EVENT", "vm", "receive-thread"],
  [4, "KVMI_VM_GET_INFO", "vm", "receive-thread"],
  [5, "KVMI_VM_CONTROL_EVENTS", "vm", "receive-thread"],
  [6, "KVMI_VM_READ_PHYSICAL", "vm", "receive-thread"],
  [7, "KVMI_VM_WRITE_PHYSICAL", "vm", "receive-thread"],
  [8, "KVMI_VCPU_GET_INFO", "vcpu", "vcpu-job"],
  [9, "KVMI_VCPU_PAUSE", "vcpu", "receive-thread"],
  [10, "KVMI_VCPU_CONTROL_EVENTS", "vcpu", "vcpu-job"],
  [11, "KVMI_VCPU_GET_REGISTERS", "vcpu", "vcpu-job"],
  [12, "KVMI_VCPU_SET_REGISTERS", "vcpu", "vcpu-job"],
  [13, "KVMI_VCPU_GET_CPUID", "vcpu", "vcpu-job"],
  [14, "KVMI_VM_CONTROL_CLEANUP", "vm", "receive-thread"],
  [15, "KVMI_VCPU_CONTROL_CR", "vcpu", "vcpu-job"],
  [16, "KVMI_VCPU_INJECT_EXCEPTION", "vcpu", "vcpu-job"],
  [17, "KVMI_VM_GET_MAX_GFN", "vm", "receive-thread"],
  [18, "KVMI_VCPU_GET_XCR", "vcpu", "vcpu-job"],
  [19, "KVMI_VCPU_GET_XSAVE", "vcpu", "vcpu-job"],
  [20, "KVMI_VCPU_SET_XSAVE", "vcpu", "vcpu-job"],
  [21, "KVMI_VCPU_GET_MTRR_TYPE", "vcpu", "vcpu-job"],
  [22, "KVMI_VCPU_CONTROL_MSR", "vcpu", "vcpu-job"],
  [23, "KVMI_VM_SET_PAGE_ACCESS", "vm", "receive-thread"],
  [24, "KVMI_VCPU_CONTROL_SINGLESTEP", "vcpu", "vcpu-job"],
  [25, "KVMI_VCPU_TRANSLATE_GVA", "vcpu", "vcpu-job"],
];

// kvmi-abi §5: id, name, scope, how enabled, actions.
const EVENTS: ReadonlyArray<readonly [number, string, "vm" | "vcpu", EventSpec["enable"], readonly string[]]> = [
  [0, "KVMI_EVENT_UNHOOK", "vm", "vm-control-events", []],
  [1, "KVMI_EVENT_PAUSE_VCPU", "vcpu", "implicit", ["CONTINUE", "CRASH"]],
  [2, "KVMI_EVENT_HYPERCALL", "vcpu", "vcpu-control-events", ["CONTINUE", "CRASH"]],
  [3, "KVMI_EVENT_BREAKPOINT", "vcpu", "vcpu-control-events", ["CONTINUE", "RETRY", "CRASH"]],
  [4, "KVMI_EVENT_CR", "vcpu", "vcpu-control-events", ["CONTINUE", "CRASH"]],
  [5, "KVMI_EVENT_TRAP", "vcpu", "implicit", ["CONTINUE", "CRASH"]],
  [6, "KVMI_EVENT_XSETBV", "vcpu", "vcpu-control-events", ["CONTINUE", "CRASH"]],
  [7, "KVMI_EVENT_DESCRIPTOR", "vcpu", "vcpu-control-events", ["CONTINUE", "RETRY", "CRASH"]],
  [8, "KVMI_EVENT_MSR", "vcpu", "vcpu-control-events", ["CONTINUE", "CRASH"]],
  [9, "KVMI_EVENT_PF", "vcpu", "vcpu-control-events", ["CONTINUE", "RETRY", "CRASH"]],
  [10, "KVMI_EVENT_SINGLESTEP", "vcpu", "implicit", ["CONTINUE", "CRASH"]],
];

const HDR = 8; // kvmi_msg_hdr
const VCPU_HDR = 8; // kvmi_vcpu_hdr
const ERROR_CODE = 8; // kvmi_error_code

const byName = (name: string): CommandSpec => {
  const spec = (V9_COMMANDS as Record<string, CommandSpec>)[name];
  if (spec === undefined) throw new Error(`no command ${name}`);
  return spec;
};
const eventByName = (name: string): EventSpec => {
  const spec = (V9_EVENTS as Record<string, EventSpec>)[name];
  if (spec === undefined) throw new Error(`no event ${name}`);
  return spec;
};

/** Whole request message (header included) with an empty tail, computed from the table. */
function requestBytes(spec: CommandSpec): number {
  return HDR + (spec.scope === "vcpu" ? VCPU_HDR : 0) + (spec.request.layout?.size ?? 0);
}
/** Whole successful reply message with an empty tail, computed from the table. */
function replyBytes(spec: CommandSpec): number {
  return HDR + ERROR_CODE + (spec.reply.layout?.size ?? 0);
}
function tailElementBytes(body: BodySchema): number {
  const element = body.tail!.element;
  if (element === "bytes") return 1;
  return typeof element === "string" ? SCALAR_BYTES[element] : element.size;
}
function resolveField(layout: Layout, path: string): Field | undefined {
  let current: Layout = layout;
  const parts = path.split(".");
  for (let i = 0; i < parts.length; i++) {
    const field: Field | undefined = current.fields[parts[i]!];
    if (field === undefined) return undefined;
    if (i === parts.length - 1) return field;
    if (field.kind !== "struct") return undefined;
    current = field.layout;
  }
  return undefined;
}

describe("v9 dialect numbers (kvmi-abi §1.2, §3.1, §9)", () => {
  it("has the v9 constants", () => {
    expect(v9.name).toBe("v9");
    expect(v9.kvmiVersion).toBe(1);
    expect(v9.maxMessageBytes).toBe(8184);
    expect(v9.eventFraming).toStrictEqual({ vmEventMessageId: 0, vcpuEventMessageId: 0, replyMessageId: 0, vmEventsCarryCommon: true });
    expect(v9.numMessages).toBe(26);
    expect(v9.numEvents).toBe(11);
  });

  it("frames with the 8-byte headers and the 544-byte kvmi_event", () => {
    expect(v9.layouts.msgHdr.name).toBe("kvmi_msg_hdr");
    expect(v9.layouts.msgHdr.size).toBe(8);
    expect(v9.layouts.errorCode.name).toBe("kvmi_error_code");
    expect(v9.layouts.errorCode.size).toBe(8);
    expect(v9.layouts.vcpuHdr.name).toBe("kvmi_vcpu_hdr");
    expect(v9.layouts.vcpuHdr.size).toBe(8);
    expect(v9.layouts.event.name).toBe("kvmi_event");
    expect(v9.layouts.event.size).toBe(544);
    expect(v9.layouts.eventReply.name).toBe("kvmi_event_reply");
    expect(v9.layouts.eventReply.size).toBe(8);
  });

  it("is frozen", () => {
    expect(Object.isFrozen(v9)).toBe(true);
    expect(Object.isFrozen(v9.commands)).toBe(true);
    expect(Object.isFrozen(V9_COMMANDS.KVMI_VCPU_GET_REGISTERS.reply.tail)).toBe(true);
    expect(Object.isFrozen(V9_EVENTS.KVMI_EVENT_PF.actions)).toBe(true);
  });
});

describe("v9 commands (kvmi-abi §4)", () => {
  it("has 25 commands with unique ids 1..25, sorted, keyed by name", () => {
    expect(v9.commands).toHaveLength(25);
    expect(v9.commands.map((c) => c.id)).toEqual(Array.from({ length: 25 }, (_, i) => i + 1));
    expect(Object.keys(V9_COMMANDS)).toHaveLength(25);
    for (const [key, spec] of Object.entries(V9_COMMANDS)) expect(spec.name).toBe(key);
    expect(v9.commands.every((c) => c.id < v9.numMessages)).toBe(true);
  });

  it.each(COMMANDS)("%i %s: scope %s, dispatch %s", (id, name, scope, dispatch) => {
    const spec = commandById(v9, id);
    expect(spec?.name).toBe(name);
    expect(spec).toBe(byName(name));
    expect(spec?.scope).toBe(scope);
    expect(spec?.dispatch).toBe(dispatch);
  });

  it("knows no id 0 (event replies) and no id 26+", () => {
    expect(commandById(v9, 0)).toBeUndefined();
    expect(commandById(v9, 26)).toBeUndefined();
    expect(commandById(v9, 0xffff)).toBeUndefined();
  });

  it("always allows exactly GET_VERSION, VM_CHECK_COMMAND, VM_CHECK_EVENT (kvmi-abi §9)", () => {
    expect(v9.commands.filter((c) => c.alwaysAllowed).map((c) => c.id)).toEqual([1, 2, 3]);
  });

  it("closes on a short tail only for WRITE_PHYSICAL, GET_REGISTERS, SET_XSAVE (kvmi-abi §2.7)", () => {
    expect(v9.commands.filter((c) => c.closesOnShortTail).map((c) => c.name)).toEqual([
      "KVMI_VM_WRITE_PHYSICAL",
      "KVMI_VCPU_GET_REGISTERS",
      "KVMI_VCPU_SET_XSAVE",
    ]);
  });

  // kvmi-abi §4 "Whole-message sizes (header + body) for the fixed commands", plus the fixed parts
  // of the variable ones (§4 ids 7, 11, 20, 23).
  it.each([
    ["KVMI_GET_VERSION", 8],
    ["KVMI_VM_GET_INFO", 8],
    ["KVMI_VM_GET_MAX_GFN", 8],
    ["KVMI_VM_CHECK_COMMAND", 16],
    ["KVMI_VM_CHECK_EVENT", 16],
    ["KVMI_VM_CONTROL_EVENTS", 16],
    ["KVMI_VM_CONTROL_CLEANUP", 16],
    ["KVMI_VCPU_GET_INFO", 16],
    ["KVMI_VCPU_GET_XSAVE", 16],
    ["KVMI_VM_READ_PHYSICAL", 24],
    ["KVMI_VCPU_PAUSE", 24],
    ["KVMI_VCPU_CONTROL_EVENTS", 24],
    ["KVMI_VCPU_GET_CPUID", 24],
    ["KVMI_VCPU_CONTROL_CR", 24],
    ["KVMI_VCPU_GET_XCR", 24],
    ["KVMI_VCPU_GET_MTRR_TYPE", 24],
    ["KVMI_VCPU_CONTROL_MSR", 24],
    ["KVMI_VCPU_CONTROL_SINGLESTEP", 24],
    ["KVMI_VCPU_TRANSLATE_GVA", 24],
    ["KVMI_VCPU_INJECT_EXCEPTION", 32],
    ["KVMI_VCPU_SET_REGISTERS", 160],
    // variable: fixed part only
    ["KVMI_VM_WRITE_PHYSICAL", 24],
    ["KVMI_VCPU_GET_REGISTERS", 24],
    ["KVMI_VM_SET_PAGE_ACCESS", 16],
    ["KVMI_VCPU_SET_XSAVE", 16],
  ])("request %s is %i bytes", (name, bytes) => {
    expect(requestBytes(byName(name))).toBe(bytes);
  });

  // kvmi-abi §3.2: a successful reply is 8 + 8 + reply data; §6 "GET_VERSION reply: 32".
  it.each([
    ["KVMI_GET_VERSION", 32],
    ["KVMI_VM_GET_INFO", 32],
    ["KVMI_VCPU_GET_INFO", 24],
    ["KVMI_VCPU_GET_CPUID", 32],
    ["KVMI_VM_GET_MAX_GFN", 24],
    ["KVMI_VCPU_GET_XCR", 24],
    ["KVMI_VCPU_GET_MTRR_TYPE", 24],
    ["KVMI_VCPU_TRANSLATE_GVA", 24],
    ["KVMI_VCPU_GET_REGISTERS", 488],
    ["KVMI_VM_CHECK_COMMAND", 16],
    ["KVMI_VM_CHECK_EVENT", 16],
    ["KVMI_VM_CONTROL_EVENTS", 16],
    ["KVMI_VM_WRITE_PHYSICAL", 16],
    ["KVMI_VCPU_PAUSE", 16],
    ["KVMI_VCPU_CONTROL_EVENTS", 16],
    ["KVMI_VCPU_SET_REGISTERS", 16],
    ["KVMI_VM_CONTROL_CLEANUP", 16],
    ["KVMI_VCPU_CONTROL_CR", 16],
    ["KVMI_VCPU_INJECT_EXCEPTION", 16],
    ["KVMI_VCPU_SET_XSAVE", 16],
    ["KVMI_VCPU_CONTROL_MSR", 16],
    ["KVMI_VM_SET_PAGE_ACCESS", 16],
    ["KVMI_VCPU_CONTROL_SINGLESTEP", 16],
    // data-only replies: the header and error code, then the tail
    ["KVMI_VM_READ_PHYSICAL", 16],
    ["KVMI_VCPU_GET_XSAVE", 16],
  ])("reply %s is %i bytes (before any tail)", (name, bytes) => {
    expect(replyBytes(byName(name))).toBe(bytes);
  });

  it("GET_REGISTERS: msrs_idx u32 counted by nmsrs; reply entries kvm_msr_entry counted by msrs.nmsrs, max 481", () => {
    const spec = V9_COMMANDS.KVMI_VCPU_GET_REGISTERS;
    expect(spec.request.tail).toMatchObject({ name: "msrs_idx", element: "u32", countField: "nmsrs" });
    expect(spec.reply.tail).toMatchObject({ name: "entries", countField: "msrs.nmsrs", maxCount: 481 });
    expect(spec.reply.tail.element.name).toBe("kvm_msr_entry");
    // §6: GET_REGISTERS reply with n MSRs = 8 + 8 + 472 + 16n; §3.1: body <= 8184.
    expect(replyBytes(spec) + 16 * 2).toBe(8 + 8 + 472 + 32);
    const body = (n: number) => ERROR_CODE + spec.reply.layout.size + tailElementBytes(spec.reply) * n;
    expect(body(481)).toBeLessThanOrEqual(8184);
    expect(body(482)).toBeGreaterThan(8184);
    // Request: 8 + 8 + 4 * nmsrs (§2.7).
    expect(requestBytes(spec) + tailElementBytes(spec.request) * 3).toBe(8 + 8 + 8 + 12);
  });

  it("WRITE_PHYSICAL: data bytes counted by size, at most 4096", () => {
    expect(V9_COMMANDS.KVMI_VM_WRITE_PHYSICAL.request.tail).toEqual({
      name: "data",
      element: "bytes",
      countField: "size",
      maxCount: 4096,
    });
  });

  it("READ_PHYSICAL: reply is a bytes tail sized by the frame", () => {
    expect(V9_COMMANDS.KVMI_VM_READ_PHYSICAL.reply).toEqual({ layout: null, tail: { name: "data", element: "bytes" } });
  });

  it("SET_PAGE_ACCESS: entries counted by count, at most 511, filling KVMI_MSG_SIZE exactly", () => {
    const spec = V9_COMMANDS.KVMI_VM_SET_PAGE_ACCESS;
    expect(spec.request.tail).toMatchObject({ name: "entries", countField: "count", maxCount: 511 });
    expect(spec.request.tail.element.name).toBe("kvmi_page_access_entry");
    expect(spec.request.layout.size + tailElementBytes(spec.request) * 511).toBe(8184);
  });

  it("GET_XSAVE / SET_XSAVE: region bytes tail; SET_XSAVE at most 4096", () => {
    expect(V9_COMMANDS.KVMI_VCPU_GET_XSAVE.request).toEqual({ layout: null });
    expect(V9_COMMANDS.KVMI_VCPU_GET_XSAVE.reply).toEqual({ layout: null, tail: { name: "region", element: "bytes" } });
    expect(V9_COMMANDS.KVMI_VCPU_SET_XSAVE.request).toEqual({
      layout: null,
      tail: { name: "region", element: "bytes", maxCount: 4096 },
    });
    // §8 step 24: GET_XSAVE returns exactly 4096 bytes.
    expect(replyBytes(V9_COMMANDS.KVMI_VCPU_GET_XSAVE) + 4096).toBe(8 + 8 + 4096);
  });

  it("SET_REGISTERS takes a kvm_regs", () => {
    expect(V9_COMMANDS.KVMI_VCPU_SET_REGISTERS.request.layout.name).toBe("kvm_regs");
  });

  it("every countField names an integer field of the fixed part", () => {
    for (const spec of v9.commands) {
      for (const body of [spec.request, spec.reply]) {
        const count = body.tail?.countField;
        if (count === undefined) continue;
        expect(body.layout, spec.name).not.toBeNull();
        const field = resolveField(body.layout!, count);
        expect(field?.kind, `${spec.name}.${count}`).toBe("scalar");
      }
    }
  });

  it("no fixed body exceeds KVMI_MSG_SIZE", () => {
    for (const spec of v9.commands) {
      expect(requestBytes(spec) - HDR).toBeLessThanOrEqual(v9.maxMessageBytes);
      expect(replyBytes(spec) - HDR).toBeLessThanOrEqual(v9.maxMessageBytes);
    }
  });
});

describe("v9 events (kvmi-abi §5)", () => {
  it("has 11 events with unique ids 0..10, sorted, keyed by name", () => {
    expect(v9.events).toHaveLength(11);
    expect(v9.events.map((e) => e.id)).toEqual(Array.from({ length: 11 }, (_, i) => i));
    for (const [key, spec] of Object.entries(V9_EVENTS)) expect(spec.name).toBe(key);
  });

  it.each(EVENTS)("%i %s: scope %s, enabled by %s, actions %j", (id, name, scope, enable, actions) => {
    const spec = eventById(v9, id);
    expect(spec).toBe(eventByName(name));
    expect(spec?.name).toBe(name);
    expect(spec?.scope).toBe(scope);
    expect(spec?.enable).toBe(enable);
    expect(spec?.actions).toEqual(actions);
  });

  it("knows no event id 11+", () => {
    expect(eventById(v9, 11)).toBeUndefined();
  });

  // kvmi-abi §6 "Whole-message sizes": 8 + 544 + payload.
  it.each([
    ["KVMI_EVENT_UNHOOK", 552],
    ["KVMI_EVENT_PAUSE_VCPU", 552],
    ["KVMI_EVENT_HYPERCALL", 552],
    ["KVMI_EVENT_BREAKPOINT", 568],
    ["KVMI_EVENT_TRAP", 568],
    ["KVMI_EVENT_CR", 576],
    ["KVMI_EVENT_XSETBV", 576],
    ["KVMI_EVENT_MSR", 576],
    ["KVMI_EVENT_PF", 576],
    ["KVMI_EVENT_DESCRIPTOR", 560],
    ["KVMI_EVENT_SINGLESTEP", 560],
  ])("%s message is %i bytes", (name, bytes) => {
    const spec = eventByName(name);
    expect(HDR + v9.layouts.event.size + (spec.payload?.size ?? 0)).toBe(bytes);
  });

  // kvmi-abi §3.4: 24 bytes, or 32 for CR and MSR (u64 new_val). UNHOOK gets no reply.
  it.each([
    ["KVMI_EVENT_PAUSE_VCPU", 24],
    ["KVMI_EVENT_HYPERCALL", 24],
    ["KVMI_EVENT_BREAKPOINT", 24],
    ["KVMI_EVENT_CR", 32],
    ["KVMI_EVENT_TRAP", 24],
    ["KVMI_EVENT_XSETBV", 24],
    ["KVMI_EVENT_DESCRIPTOR", 24],
    ["KVMI_EVENT_MSR", 32],
    ["KVMI_EVENT_PF", 24],
    ["KVMI_EVENT_SINGLESTEP", 24],
  ])("%s reply is %i bytes", (name, bytes) => {
    const spec = eventByName(name);
    expect(spec.actions.length).toBeGreaterThan(0);
    expect(HDR + v9.layouts.vcpuHdr.size + v9.layouts.eventReply.size + (spec.replyData?.size ?? 0)).toBe(bytes);
  });

  it("CR and MSR replies carry new_val; no other event has reply data", () => {
    const withData = v9.events.filter((e) => e.replyData !== null);
    expect(withData.map((e) => [e.name, e.replyData?.name])).toEqual([
      ["KVMI_EVENT_CR", "kvmi_event_cr_reply"],
      ["KVMI_EVENT_MSR", "kvmi_event_msr_reply"],
    ]);
    for (const e of withData) expect(Object.keys(e.replyData!.fields)).toEqual(["new_val"]);
  });

  it("UNHOOK is the only VM event and has no reply", () => {
    expect(v9.events.filter((e) => e.scope === "vm").map((e) => e.name)).toEqual(["KVMI_EVENT_UNHOOK"]);
    expect(V9_EVENTS.KVMI_EVENT_UNHOOK.actions).toEqual([]);
    expect(V9_EVENTS.KVMI_EVENT_UNHOOK.replyData).toBeNull();
  });

  it("payloads are the kernel structs of §5", () => {
    expect(v9.events.map((e) => e.payload?.name ?? null)).toEqual([
      null,
      null,
      null,
      "kvmi_event_breakpoint",
      "kvmi_event_cr",
      "kvmi_event_trap",
      "kvmi_event_xsetbv",
      "kvmi_event_descriptor",
      "kvmi_event_msr",
      "kvmi_event_pf",
      "kvmi_event_singlestep",
    ]);
  });
});

describe("v9 constants", () => {
  it("page-access bits and descriptor ids (kvmi-abi §4 id 23, §5 id 7)", () => {
    expect([KVMI_PAGE_ACCESS_R, KVMI_PAGE_ACCESS_W, KVMI_PAGE_ACCESS_X]).toEqual([1, 2, 4]);
    expect([KVMI_DESC_IDTR, KVMI_DESC_GDTR, KVMI_DESC_LDTR, KVMI_DESC_TR]).toEqual([1, 2, 3, 4]);
  });

  it("KVM error numbers (kvmi-abi §7)", () => {
    expect({
      KVM_ENOSYS,
      KVM_EFAULT,
      KVM_EINVAL,
      KVM_E2BIG,
      KVM_EPERM,
      KVM_EOPNOTSUPP,
      KVM_EAGAIN,
      KVM_ENOENT,
      KVM_ENOMEM,
      KVM_EBUSY,
    }).toEqual({
      KVM_ENOSYS: 1000,
      KVM_EFAULT: 14,
      KVM_EINVAL: 22,
      KVM_E2BIG: 7,
      KVM_EPERM: 1,
      KVM_EOPNOTSUPP: 95,
      KVM_EAGAIN: 11,
      KVM_ENOENT: 2,
      KVM_ENOMEM: 12,
      KVM_EBUSY: 16,
    });
    expect(KVM_ERRNO_NAMES[22]).toBe("KVM_EINVAL");
    expect(Object.keys(KVM_ERRNO_NAMES)).toHaveLength(10);
  });
});
