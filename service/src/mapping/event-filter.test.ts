// SPDX-License-Identifier: Apache-2.0
/**
 * EventFilter compile and match (docs/event-filters.md): every match kind against decoded events
 * that fit and events that do not, every action's compiled reply, every validation error with its
 * field path (all reported at once, nothing compiled), and a structural check that the matcher
 * creates no objects.
 */
import { create } from "@bufbuild/protobuf";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { KvmiEvent } from "@kvmi/kvm-bridge";
import { kvmiV7, v12, v9, V9_EVENTS } from "@kvmi/kvm-bridge/wire";
import type { Dialect } from "@kvmi/kvm-bridge/wire";
import { EventAction, EventFilterSchema, EventType, Register, ValueOperator } from "@kvmi/proto";
import { describe, expect, it } from "vitest";
import { CompiledFilter, compare, Condition, holds, read, RuleActionKind } from "../vm/event-rules.js";
import { compileEventFilter, filterSummaryToProto } from "./event-filter.js";
import { InvalidFieldsError } from "./field-violations.js";
import { mapError } from "./status.js";

type FilterInit = MessageInitShape<typeof EventFilterSchema>;
type RuleInit = NonNullable<FilterInit["rules"]>[number];
type Extra = { readonly summaryInterval?: { seconds: bigint; nanos: number } };

const TARGET = { dialect: v9 as Dialect, vcpuCount: 4 };

function compile(rules: RuleInit[], extra: Extra = {}, target = TARGET): CompiledFilter {
  const filter = compileEventFilter(create(EventFilterSchema, { rules, ...(extra.summaryInterval !== undefined && { summaryInterval: extra.summaryInterval }) }), target, "filter");
  if (filter === undefined) throw new Error("no filter compiled");
  return filter;
}

/** The violations a filter fails with (field -> description). */
function violations(rules: RuleInit[], extra: Extra = {}, target = TARGET): Record<string, string> {
  try {
    compileEventFilter(create(EventFilterSchema, { rules, ...(extra.summaryInterval !== undefined && { summaryInterval: extra.summaryInterval }) }), target, "filter");
  } catch (err) {
    expect(err).toBeInstanceOf(InvalidFieldsError);
    return Object.fromEntries((err as InvalidFieldsError).violations.map((v) => [v.field, v.description]));
  }
  throw new Error("the filter compiled");
}

const regs = (over: Record<string, bigint> = {}): Record<string, bigint> => ({ rax: 0n, rbx: 0n, rdi: 0n, rip: 0x1000n, rflags: 2n, ...over });
const sregs = (over: Record<string, bigint> = {}): Record<string, bigint> => ({ cr0: 0x80050033n, cr2: 0n, cr3: 0x1000n, cr4: 0x20n, efer: 0xd01n, ...over });

function event(name: keyof typeof V9_EVENTS, payload?: Record<string, unknown>, over: { vcpu?: number; regs?: Record<string, bigint>; sregs?: Record<string, bigint> } = {}): KvmiEvent {
  return {
    seq: 1,
    vcpu: over.vcpu ?? 0,
    kind: V9_EVENTS[name].kind,
    spec: V9_EVENTS[name],
    arch: { regs: regs(over.regs), sregs: sregs(over.sregs), msrs: {} },
    payload,
    receivedAt: 0n,
    receivedAtMs: 0,
  };
}

const COUNT = { kind: { case: "count" as const, value: {} } };
const cr = (old_value: bigint, new_value: bigint, crNumber = 3): Record<string, unknown> => ({ cr: crNumber, old_value, new_value });

describe("EventFilter: match kinds", () => {
  it("matches the event type alone, first rule first, and -1 when no rule fits", () => {
    const f = compile([
      { event: EventType.CR, action: COUNT },
      { event: EventType.CR, action: { kind: { case: "deliver", value: {} } } },
      { event: EventType.MSR, action: COUNT },
    ]);
    expect(f.match(event("KVMI_EVENT_CR", cr(1n, 2n)))).toBe(0);
    expect(f.match(event("KVMI_EVENT_MSR", { msr: 0x10, old_value: 0n, new_value: 1n }))).toBe(2);
    expect(f.match(event("KVMI_EVENT_PAUSE_VCPU"))).toBe(-1);
  });

  it("vCPU set and CR3 set", () => {
    const f = compile([{ event: EventType.PAUSE_VCPU, match: { vcpus: [1, 3], cr3: [0x5000n, 0x6000n] }, action: COUNT }]);
    expect(f.match(event("KVMI_EVENT_PAUSE_VCPU", undefined, { vcpu: 1, sregs: { cr3: 0x6000n } }))).toBe(0);
    expect(f.match(event("KVMI_EVENT_PAUSE_VCPU", undefined, { vcpu: 0, sregs: { cr3: 0x6000n } }))).toBe(-1);
    expect(f.match(event("KVMI_EVENT_PAUSE_VCPU", undefined, { vcpu: 3, sregs: { cr3: 0x7000n } }))).toBe(-1);
  });

  it("CR number, old/new value with masks, changed bits", () => {
    const smepCleared = compile([
      {
        event: EventType.CR,
        match: {
          payload: {
            case: "cr",
            value: {
              crs: [4],
              oldValue: { operator: ValueOperator.ALL_BITS, value: 1n << 20n },
              newValue: { operator: ValueOperator.EQUAL, value: 0n, mask: 1n << 20n },
            },
          },
        },
        action: COUNT,
      },
    ]);
    expect(smepCleared.match(event("KVMI_EVENT_CR", cr(0x100020n, 0x20n, 4)))).toBe(0);
    expect(smepCleared.match(event("KVMI_EVENT_CR", cr(0x100020n, 0x100020n, 4)))).toBe(-1);
    expect(smepCleared.match(event("KVMI_EVENT_CR", cr(0x100020n, 0x20n, 3)))).toBe(-1);
    const wpChanged = compile([{ event: EventType.CR, match: { payload: { case: "cr", value: { changedBits: 1n << 16n } } }, action: COUNT }]);
    expect(wpChanged.match(event("KVMI_EVENT_CR", cr(0x10000n, 0n, 0)))).toBe(0);
    expect(wpChanged.match(event("KVMI_EVENT_CR", cr(0x10001n, 0x10000n, 0)))).toBe(-1);
  });

  it("MSR index and value comparisons", () => {
    const f = compile([
      {
        event: EventType.MSR,
        match: { payload: { case: "msr", value: { msrs: [0xc0000082], newValue: { operator: ValueOperator.GREATER_EQUAL, value: 0xffff800000000000n } } } },
        action: COUNT,
      },
    ]);
    expect(f.match(event("KVMI_EVENT_MSR", { msr: 0xc0000082, old_value: 0n, new_value: 0xffffffff81000000n }))).toBe(0);
    expect(f.match(event("KVMI_EVENT_MSR", { msr: 0xc0000082, old_value: 0n, new_value: 0x1000n }))).toBe(-1);
    expect(f.match(event("KVMI_EVENT_MSR", { msr: 0x174, old_value: 0n, new_value: 0xffffffff81000000n }))).toBe(-1);
  });

  it("every value operator", () => {
    const cases: Array<[ValueOperator, bigint, bigint, boolean]> = [
      [ValueOperator.EQUAL, 5n, 5n, true],
      [ValueOperator.EQUAL, 5n, 6n, false],
      [ValueOperator.NOT_EQUAL, 5n, 6n, true],
      [ValueOperator.LESS, 4n, 5n, true],
      [ValueOperator.LESS, 5n, 5n, false],
      [ValueOperator.LESS_EQUAL, 5n, 5n, true],
      [ValueOperator.GREATER, 6n, 5n, true],
      [ValueOperator.GREATER_EQUAL, 4n, 5n, false],
      [ValueOperator.ANY_BITS, 0b1010n, 0b0010n, true],
      [ValueOperator.ANY_BITS, 0b1010n, 0b0101n, false],
      [ValueOperator.ALL_BITS, 0b1110n, 0b0110n, true],
      [ValueOperator.ALL_BITS, 0b1010n, 0b0110n, false],
      [ValueOperator.NO_BITS, 0b1010n, 0b0101n, true],
      [ValueOperator.NO_BITS, 0b1010n, 0b0010n, false],
      // Unsigned 64-bit: the top bit set is the largest value, not a negative one.
      [ValueOperator.GREATER, 0xffffffffffffffffn, 1n, true],
    ];
    for (const [operator, field, value, expected] of cases) {
      const f = compile([{ event: EventType.HYPERCALL, match: { registers: [{ register: Register.RBX, condition: { operator, value } }] }, action: COUNT }]);
      expect(f.match(event("KVMI_EVENT_HYPERCALL", undefined, { regs: { rbx: field } })), `${ValueOperator[operator]} ${field} ${value}`).toBe(expected ? 0 : -1);
    }
  });

  it("breakpoint GPA and RIP sets", () => {
    const f = compile([{ event: EventType.BREAKPOINT, match: { payload: { case: "breakpoint", value: { gpas: [0x30000n], rips: [0xffffffff81000000n] } } }, action: COUNT }]);
    expect(f.match(event("KVMI_EVENT_BREAKPOINT", { gpa: 0x30000n, insn_len: 1 }, { regs: { rip: 0xffffffff81000000n } }))).toBe(0);
    expect(f.match(event("KVMI_EVENT_BREAKPOINT", { gpa: 0x30000n, insn_len: 1 }, { regs: { rip: 0x1n } }))).toBe(-1);
    expect(f.match(event("KVMI_EVENT_BREAKPOINT", { gpa: 0x31000n, insn_len: 1 }, { regs: { rip: 0xffffffff81000000n } }))).toBe(-1);
  });

  it("PF GPA and GVA ranges and access bits", () => {
    const f = compile([
      {
        event: EventType.PF,
        match: {
          payload: {
            case: "pageFault",
            value: { gpas: [{ first: 0x1000n, last: 0x1fffn }, { first: 0x8000n, last: 0x8fffn }], gvas: [{ first: 0n, last: 0xffffffffffffffffn }], access: 2 },
          },
        },
        action: COUNT,
      },
    ]);
    expect(f.match(event("KVMI_EVENT_PF", { gpa: 0x8010n, gva: 0x7000n, access: 2 }))).toBe(0);
    expect(f.match(event("KVMI_EVENT_PF", { gpa: 0x1fffn, gva: 0n, access: 6 }))).toBe(0);
    expect(f.match(event("KVMI_EVENT_PF", { gpa: 0x2000n, gva: 0n, access: 2 }))).toBe(-1);
    expect(f.match(event("KVMI_EVENT_PF", { gpa: 0x1000n, gva: 0n, access: 4 }))).toBe(-1);
  });

  it("hypercall number (RAX) and argument registers, any register and CR3 through sregs", () => {
    const f = compile([
      {
        event: EventType.HYPERCALL,
        match: {
          payload: { case: "hypercall", value: { numbers: [34n] } },
          registers: [
            { register: Register.RDI, condition: { operator: ValueOperator.EQUAL, value: 24n } },
            { register: Register.CR3, condition: { operator: ValueOperator.EQUAL, value: 0x1000n, mask: ~0xfffn & 0xffffffffffffffffn } },
          ],
        },
        action: COUNT,
      },
    ]);
    expect(f.match(event("KVMI_EVENT_HYPERCALL", undefined, { regs: { rax: 34n, rdi: 24n }, sregs: { cr3: 0x1018n } }))).toBe(0);
    expect(f.match(event("KVMI_EVENT_HYPERCALL", undefined, { regs: { rax: 35n, rdi: 24n } }))).toBe(-1);
    expect(f.match(event("KVMI_EVENT_HYPERCALL", undefined, { regs: { rax: 34n, rdi: 25n } }))).toBe(-1);
    expect(f.match(event("KVMI_EVENT_HYPERCALL", undefined, { regs: { rax: 34n, rdi: 24n }, sregs: { cr3: 0x2000n } }))).toBe(-1);
  });
});

describe("EventFilter: actions", () => {
  it("compiles each action with its reply (CONTINUE by default), names and interval", () => {
    const f = compile(
      [
        { name: "all", event: EventType.CR, action: { kind: { case: "deliver", value: {} } } },
        { event: EventType.CR, action: { kind: { case: "reply", value: { action: EventAction.CONTINUE, value: { case: "keepOldValue", value: true } } } } },
        { event: EventType.MSR, action: { kind: { case: "notify", value: { value: { case: "newVal", value: 9n } } } } },
        { event: EventType.BREAKPOINT, action: { kind: { case: "sample", value: { every: 10, reply: { action: EventAction.RETRY } } } } },
        { event: EventType.PF, action: COUNT },
      ],
      { summaryInterval: { seconds: 2n, nanos: 0 } },
    );
    expect(f.summaryIntervalMs).toBe(2000);
    expect(f.rules.map((r) => [r.name, r.action, r.every, r.reply.action, r.reply.value])).toEqual([
      ["all", RuleActionKind.DELIVER, 1, 0, "guest"],
      ["rule-1", RuleActionKind.REPLY, 1, 0, "old"],
      ["rule-2", RuleActionKind.NOTIFY, 1, 0, "constant"],
      ["rule-3", RuleActionKind.SAMPLE, 10, 1, "guest"],
      ["rule-4", RuleActionKind.COUNT, 1, 0, "guest"],
    ]);
    expect(f.rules[2]!.reply.newVal).toBe(9n);
    expect(f.rules[3]!.reply.isContinue).toBe(false);
  });

  it("an unset or empty filter compiles to none", () => {
    expect(compileEventFilter(undefined, TARGET, "f")).toBeUndefined();
    expect(compileEventFilter(create(EventFilterSchema), TARGET, "f")).toBeUndefined();
  });

  it("summarizes counters per rule", () => {
    const f = compile([{ name: "cr3", event: EventType.CR, action: COUNT }]);
    f.counters[0] = 5;
    f.counters[1] = 5;
    f.unmatched = 2;
    const summary = filterSummaryToProto(f);
    expect(summary.rules).toEqual([expect.objectContaining({ name: "cr3", event: EventType.CR, matched: 5n, replied: 5n, notified: 0n, delivered: 0n })]);
    expect(summary.unmatched).toBe(2n);
  });
});

describe("EventFilter: validation", () => {
  it("reports every bad field at once, with its path", () => {
    expect(
      violations(
        [
          { event: EventType.UNSPECIFIED, action: COUNT },
          { event: EventType.UNHOOK, action: COUNT },
          { event: EventType.CR },
          { name: "Bad Name", event: EventType.CR, action: COUNT },
          { name: "x", event: EventType.CR, action: COUNT },
          { name: "x", event: EventType.MSR, action: COUNT },
        ],
        { summaryInterval: { seconds: 0n, nanos: 1_000_000 } },
      ),
    ).toEqual({
      "filter.summary_interval": expect.stringContaining("100 ms"),
      "filter.rules[0].event": expect.stringContaining("required"),
      "filter.rules[1].event": expect.stringContaining("cannot be filtered"),
      "filter.rules[2].action": expect.stringContaining("required"),
      "filter.rules[3].name": expect.stringContaining("a-z"),
      "filter.rules[5].name": expect.stringContaining("used by an earlier rule"),
    });
  });

  it("checks the reply like an EventReply: action accepted by the event, values only for CR/MSR", () => {
    expect(
      violations([
        { event: EventType.CR, action: { kind: { case: "reply", value: { action: EventAction.RETRY } } } },
        { event: EventType.PF, action: { kind: { case: "notify", value: { value: { case: "newVal", value: 1n } } } } },
        { event: EventType.HYPERCALL, action: { kind: { case: "count", value: { reply: { value: { case: "keepOldValue", value: true } } } } } },
        { event: EventType.CR, action: { kind: { case: "reply", value: { value: { case: "keepOldValue", value: false } } } } },
        { event: EventType.MSR, action: { kind: { case: "sample", value: { every: 0 } } } },
        { event: EventType.PF, action: { kind: { case: "reply", value: { action: 9 as EventAction } } } },
      ]),
    ).toEqual({
      "filter.rules[0].action.reply.action": expect.stringContaining("EVENT_ACTION_RETRY is not accepted by CR events"),
      "filter.rules[1].action.notify.new_val": expect.stringContaining("only for CR and MSR"),
      "filter.rules[2].action.count.reply.keep_old_value": expect.stringContaining("only for CR and MSR"),
      "filter.rules[3].action.reply.keep_old_value": expect.stringContaining("set it to true"),
      "filter.rules[4].action.sample.every": expect.stringContaining("at least 1"),
      "filter.rules[5].action.reply.action": expect.stringContaining("not an EventAction"),
    });
  });

  it("checks matches: payload case against the event, CR numbers, vCPUs, ranges, access, operators, registers", () => {
    expect(
      violations([
        { event: EventType.CR, match: { payload: { case: "msr", value: {} } }, action: COUNT },
        { event: EventType.CR, match: { payload: { case: "cr", value: { crs: [2] } } }, action: COUNT },
        { event: EventType.PF, match: { vcpus: [4] }, action: COUNT },
        { event: EventType.PF, match: { payload: { case: "pageFault", value: { gpas: [{ first: 2n, last: 1n }], access: 8 } } }, action: COUNT },
        { event: EventType.MSR, match: { payload: { case: "msr", value: { newValue: { value: 1n } } } }, action: COUNT },
        { event: EventType.HYPERCALL, match: { registers: [{ register: Register.UNSPECIFIED, condition: { operator: ValueOperator.EQUAL } }, { register: Register.RAX }] }, action: COUNT },
      ]),
    ).toEqual({
      "filter.rules[0].match.msr": expect.stringContaining("matches MSR events, but the rule is for CR events"),
      "filter.rules[1].match.cr.crs": expect.stringContaining("CR2 raises no events"),
      "filter.rules[2].match.vcpus": expect.stringContaining("the VM has 4"),
      "filter.rules[3].match.page_fault.gpas[0]": expect.stringContaining("first must not be above last"),
      "filter.rules[3].match.page_fault.access": expect.stringContaining("R = 1"),
      "filter.rules[4].match.msr.new_value.operator": expect.stringContaining("VALUE_OPERATOR_"),
      "filter.rules[5].match.registers[0].register": expect.stringContaining("REGISTER_"),
      "filter.rules[5].match.registers[1].condition": "is required",
    });
  });

  it("bounds the filter's size", () => {
    const many = Array.from({ length: 257 }, () => ({ event: EventType.CR, action: COUNT }));
    expect(Object.keys(violations(many))).toContain("filter.rules");
    const big = Array.from({ length: 4097 }, (_, i) => BigInt(i));
    expect(violations([{ event: EventType.CR, match: { cr3: big }, action: COUNT }])).toEqual({ "filter.rules[0].match.cr3": expect.stringContaining("at most 4096") });
  });

  it("checks the event against the VM's dialect: kvmi-v7 has no PF reply values either, and every dialect has CR", () => {
    for (const dialect of [v12, kvmiV7] as Dialect[]) {
      expect(compile([{ event: EventType.CR, action: COUNT }], {}, { dialect, vcpuCount: 1 }).rules).toHaveLength(1);
    }
  });

  it("maps to INVALID_ARGUMENT with one BadRequest field violation per problem", () => {
    let err: unknown;
    try {
      compileEventFilter(create(EventFilterSchema, { rules: [{ event: EventType.CR }, { event: EventType.MSR }] }), TARGET, "attach.event_filter");
    } catch (e) {
      err = e;
    }
    const mapped = mapError(err);
    expect(mapped.code).toBe(3);
    expect(mapped.details).toEqual([
      expect.objectContaining({
        kind: "badRequest",
        violations: [
          expect.objectContaining({ field: "attach.event_filter.rules[0].action" }),
          expect.objectContaining({ field: "attach.event_filter.rules[1].action" }),
        ],
      }),
    ]);
  });
});

describe("EventFilter: the matcher allocates nothing", () => {
  // A structural proof rather than a heap measurement (flaky under a shared machine): the code that
  // runs per event contains no object, array or function literal, no `new`, no template or spread.
  // `npm run bench` reports the garbage collections a million matches cause.
  const sources = [CompiledFilter.prototype.match, holds, read, compare].map((f) => f.toString());
  it.each(sources.map((s, i) => [i, s]))("function %i creates no objects", (_i, source) => {
    // The body only: the header of a method or function names it and lists its parameters.
    const text = source as string;
    const body = text.slice(text.indexOf("{") + 1).replace(/\/\/.*$/gm, "");
    expect(body).not.toMatch(/\bnew\s/);
    expect(body).not.toMatch(/=>/);
    expect(body).not.toMatch(/\bfunction\b/);
    expect(body).not.toMatch(/`/);
    expect(body).not.toMatch(/\.\.\./);
    expect(body).not.toMatch(/(?:[=(,?]|return)\s*\[/);
    // `case X: {` opens a block; an object literal follows `=`, `(`, `,`, `?` or `return`.
    expect(body).not.toMatch(/(?:[=(,?]|return)\s*\{/);
  });

  it("Condition keeps one shape: every field is set by the constructor", () => {
    const a = new Condition(0, "x", 1);
    const b = new Condition(1, "y", 20, 0n, 0n, false, new Set([1n]));
    expect(Object.keys(a)).toEqual(Object.keys(b));
  });
});
