// SPDX-License-Identifier: Apache-2.0
/**
 * kvmi.v1 EventFilter -> the compiled filter the VM host evaluates (vm/event-rules.ts), and its
 * counters -> EventFilterSummary (docs/event-filters.md).
 *
 * Every field is checked before anything is applied; all violations come back together as one
 * BadRequest (field-violations.ts). A rule's reply is checked against the VM's dialect the way an
 * EventReply is (events.ts replyViolation): an action the event type does not accept, or a value
 * on an event without reply data, would make the kernel close the socket (docs/protocol/README.md,
 * "Events and replies").
 */
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { eventByKind, V9_EVENTS } from "@kvmi/kvm-bridge/wire";
import type { Dialect, EventSpec } from "@kvmi/kvm-bridge/wire";
import { EventAction, EventFilterSummarySchema, EventNotificationSchema, EventType, Register, RuleCountersSchema, ValueOperator } from "@kvmi/proto";
import type { EventFilter, EventFilterSummary, EventNotification, EventMatch, EventRule, LocalReply, ValueCondition } from "@kvmi/proto";
import { CompiledFilter, Condition, ConditionOp, Counter, FieldArea, RuleActionKind } from "../vm/event-rules.js";
import type { CompiledRule, RuleReply } from "../vm/event-rules.js";
import type { RuleNotice } from "../vm/vm-host.js";
import { eventActionFromWire, eventActionName, eventActionToWire } from "./enums.js";
import { EVENT_MAPPINGS, replyViolation } from "./events.js";
import { InvalidFieldsError } from "./field-violations.js";
import type { FieldViolation } from "./field-violations.js";

/** Limits that keep a filter's memory bounded (a client cannot make the bridge grow). */
export const FILTER_LIMITS = {
  rules: 256,
  /** Entries of one set (CR3s, GPAs, RIPs, hypercall numbers, MSRs). */
  setEntries: 4096,
  ranges: 256,
  registerConditions: 16,
  minSummaryIntervalMs: 100,
  maxSummaryIntervalMs: 3_600_000,
} as const;

const RULE_NAME = /^[a-z0-9_.-]{1,63}$/;
const CONTROL_REGISTERS = new Set([0, 3, 4]);
const ACCESS_RWX = 7;

/** The kvmi.v1 EventType of each event kind, and back. */
const KIND_BY_TYPE: ReadonlyMap<EventType, string> = new Map(
  Object.values(EVENT_MAPPINGS).map((m) => [m.type, V9_EVENTS[m.event].kind as string]),
);
const TYPE_BY_KIND: ReadonlyMap<string, EventType> = new Map([...KIND_BY_TYPE].map(([type, kind]) => [kind, type]));

/** The payload match case each event kind accepts. */
const PAYLOAD_CASE_KIND: Readonly<Record<NonNullable<EventMatch["payload"]["case"]>, string>> = {
  cr: "CR",
  msr: "MSR",
  breakpoint: "BREAKPOINT",
  pageFault: "PF",
  hypercall: "HYPERCALL",
};

/** Register -> where kvmi_event_arch holds it. */
function registerField(register: Register): { area: FieldArea; key: string } | undefined {
  if (register >= Register.RAX && register <= Register.RFLAGS) return { area: FieldArea.REGS, key: Register[register]!.toLowerCase() };
  if (register >= Register.CR0 && register <= Register.EFER) return { area: FieldArea.SREGS, key: Register[register]!.toLowerCase() };
  return undefined;
}

/** What a compile needs to know about the VM. */
export interface FilterTarget {
  readonly dialect: Dialect;
  readonly vcpuCount: number;
}

/**
 * Checks and compiles a filter. An unset filter or one without rules compiles to undefined (no
 * filter: every event is delivered).
 * @param field the filter's path in the request, for violations (`attach.event_filter`).
 * @throws InvalidFieldsError with every violation; nothing is applied.
 */
export function compileEventFilter(filter: EventFilter | undefined, target: FilterTarget, field: string): CompiledFilter | undefined {
  if (filter === undefined) return undefined;
  const violations: FieldViolation[] = [];
  const bad = (path: string, description: string): void => void violations.push({ field: path, description });
  let intervalMs: number | undefined;
  if (filter.summaryInterval !== undefined) {
    intervalMs = Number(filter.summaryInterval.seconds) * 1000 + filter.summaryInterval.nanos / 1e6;
    if (!(intervalMs >= FILTER_LIMITS.minSummaryIntervalMs && intervalMs <= FILTER_LIMITS.maxSummaryIntervalMs)) {
      bad(`${field}.summary_interval`, "must be between 100 ms and 1 h (unset sends no summaries)");
    }
  }
  if (filter.rules.length > FILTER_LIMITS.rules) bad(`${field}.rules`, `at most ${FILTER_LIMITS.rules} rules, got ${filter.rules.length}`);
  const names = new Set<string>();
  const rules: CompiledRule[] = [];
  filter.rules.slice(0, FILTER_LIMITS.rules).forEach((rule, index) => {
    const compiled = compileRule(rule, index, `${field}.rules[${index}]`, target, bad);
    if (compiled === undefined) return;
    if (names.has(compiled.name)) bad(`${field}.rules[${index}].name`, `the name ${compiled.name} is used by an earlier rule`);
    names.add(compiled.name);
    rules.push(compiled);
  });
  if (violations.length > 0) throw new InvalidFieldsError(violations);
  return rules.length === 0 ? undefined : new CompiledFilter(rules, intervalMs);
}

type Bad = (path: string, description: string) => void;

function compileRule(rule: EventRule, index: number, path: string, target: FilterTarget, bad: Bad): CompiledRule | undefined {
  const before = { count: 0 };
  const mark: Bad = (p, d) => (before.count++, bad(p, d));
  if (rule.name !== "" && !RULE_NAME.test(rule.name)) mark(`${path}.name`, "use 1-63 characters of a-z, 0-9, _, . and -");
  const kind = KIND_BY_TYPE.get(rule.event);
  let spec: EventSpec | undefined;
  if (rule.event === EventType.UNSPECIFIED) mark(`${path}.event`, "is required: name an EVENT_TYPE_*");
  else if (kind === undefined || rule.event === EventType.UNHOOK) mark(`${path}.event`, `${EventType[rule.event] ?? rule.event} cannot be filtered (UNHOOK is no vCPU event)`);
  else if ((spec = eventByKind(target.dialect, kind as never)) === undefined) {
    mark(`${path}.event`, `the VM's ${target.dialect.name} kernel has no ${kind} event`);
  }
  const conditions = compileMatch(rule.match, kind, `${path}.match`, target, mark);
  const action = rule.action?.kind;
  let actionKind: RuleActionKind = RuleActionKind.DELIVER;
  let every = 1;
  let localReply: LocalReply | undefined;
  let replyPath = `${path}.action`;
  switch (action?.case) {
    case "deliver":
      break;
    case "reply":
    case "notify":
      actionKind = action.case === "reply" ? RuleActionKind.REPLY : RuleActionKind.NOTIFY;
      localReply = action.value;
      replyPath = `${path}.action.${action.case}`;
      break;
    case "sample":
      actionKind = RuleActionKind.SAMPLE;
      every = action.value.every;
      if (every < 1) mark(`${path}.action.sample.every`, "must be at least 1");
      localReply = action.value.reply;
      replyPath = `${path}.action.sample.reply`;
      break;
    case "count":
      actionKind = RuleActionKind.COUNT;
      localReply = action.value.reply;
      replyPath = `${path}.action.count.reply`;
      break;
    default:
      mark(`${path}.action`, "is required: deliver, reply, notify, sample or count");
  }
  const reply = spec === undefined ? undefined : compileReply(localReply, spec, replyPath, mark);
  if (before.count > 0 || kind === undefined || reply === undefined || conditions === undefined) return undefined;
  return { index, name: rule.name === "" ? `rule-${index}` : rule.name, kind, action: actionKind, every, reply, conditions };
}

function compileReply(reply: LocalReply | undefined, spec: EventSpec, path: string, bad: Bad): RuleReply | undefined {
  const action = reply === undefined || reply.action === EventAction.UNSPECIFIED ? EventAction.CONTINUE : reply.action;
  const value = reply?.value;
  if (value?.case === "keepOldValue" && !value.value) {
    bad(`${path}.keep_old_value`, "set it to true, or leave the value unset to let the guest's write through");
    return undefined;
  }
  const violation = replyViolation(spec, action, value?.case !== undefined);
  if (violation !== undefined) {
    bad(`${path}.${violation.field === "new_val" ? (value?.case === "keepOldValue" ? "keep_old_value" : "new_val") : "action"}`, violation.message);
    return undefined;
  }
  return {
    action: eventActionToWire(eventActionName(action)!),
    isContinue: action === EventAction.CONTINUE,
    retryAction: eventActionToWire("RETRY"),
    value: value?.case === "newVal" ? "constant" : value?.case === "keepOldValue" ? "old" : "guest",
    newVal: value?.case === "newVal" ? value.value : 0n,
  };
}

function compileMatch(match: EventMatch | undefined, kind: string | undefined, path: string, target: FilterTarget, bad: Bad): Condition[] | undefined {
  const conditions: Condition[] = [];
  if (match === undefined) return conditions;
  const errors = { count: 0 };
  const mark: Bad = (p, d) => (errors.count++, bad(p, d));
  if (match.vcpus.length > 0) {
    const beyond = match.vcpus.find((v) => v >= target.vcpuCount);
    if (beyond !== undefined) mark(`${path}.vcpus`, `vCPU ${beyond} does not exist: the VM has ${target.vcpuCount}`);
    conditions.push(new Condition(FieldArea.VCPU, "", ConditionOp.IN_SET, 0n, 0n, false, new Set(match.vcpus)));
  }
  const set = (values: ReadonlyArray<bigint | number>, p: string, area: FieldArea, key: string): void => {
    if (values.length === 0) return;
    if (values.length > FILTER_LIMITS.setEntries) mark(p, `at most ${FILTER_LIMITS.setEntries} values, got ${values.length}`);
    conditions.push(new Condition(area, key, ConditionOp.IN_SET, 0n, 0n, false, new Set(values)));
  };
  set(match.cr3, `${path}.cr3`, FieldArea.SREGS, "cr3");
  if (match.registers.length > FILTER_LIMITS.registerConditions) mark(`${path}.registers`, `at most ${FILTER_LIMITS.registerConditions} conditions`);
  match.registers.forEach((r, i) => {
    const where = registerField(r.register);
    if (where === undefined) mark(`${path}.registers[${i}].register`, "is required: name a REGISTER_*");
    const condition = valueCondition(r.condition, `${path}.registers[${i}].condition`, where?.area ?? FieldArea.REGS, where?.key ?? "", mark, true);
    if (condition !== undefined) conditions.push(condition);
  });
  const payload = match.payload;
  if (payload.case !== undefined && kind !== undefined && PAYLOAD_CASE_KIND[payload.case] !== kind) {
    mark(`${path}.${snake(payload.case)}`, `matches ${PAYLOAD_CASE_KIND[payload.case]} events, but the rule is for ${kind} events`);
  }
  const p = `${path}.${snake(payload.case ?? "")}`;
  const value = (c: ValueCondition | undefined, sub: string, key: string): void => {
    const condition = valueCondition(c, `${p}.${sub}`, FieldArea.PAYLOAD, key, mark, false);
    if (condition !== undefined) conditions.push(condition);
  };
  switch (payload.case) {
    case "cr": {
      const bad3 = payload.value.crs.find((cr) => !CONTROL_REGISTERS.has(cr));
      if (bad3 !== undefined) mark(`${p}.crs`, `CR${bad3} raises no events: use 0, 3 or 4`);
      set(payload.value.crs, `${p}.crs`, FieldArea.PAYLOAD, "cr");
      value(payload.value.oldValue, "old_value", "old_value");
      value(payload.value.newValue, "new_value", "new_value");
      if (payload.value.changedBits !== 0n) {
        conditions.push(new Condition(FieldArea.PAYLOAD, "old_value", ConditionOp.CHANGED_BITS, payload.value.changedBits, 0n, false, null, null, "new_value"));
      }
      break;
    }
    case "msr":
      set(payload.value.msrs, `${p}.msrs`, FieldArea.PAYLOAD, "msr");
      value(payload.value.oldValue, "old_value", "old_value");
      value(payload.value.newValue, "new_value", "new_value");
      break;
    case "breakpoint":
      set(payload.value.gpas, `${p}.gpas`, FieldArea.PAYLOAD, "gpa");
      set(payload.value.rips, `${p}.rips`, FieldArea.REGS, "rip");
      break;
    case "pageFault": {
      const ranges = (list: ReadonlyArray<{ first: bigint; last: bigint }>, sub: string, key: string): void => {
        if (list.length === 0) return;
        if (list.length > FILTER_LIMITS.ranges) mark(`${p}.${sub}`, `at most ${FILTER_LIMITS.ranges} ranges`);
        list.forEach((r, i) => r.first > r.last && mark(`${p}.${sub}[${i}]`, "first must not be above last"));
        conditions.push(new Condition(FieldArea.PAYLOAD, key, ConditionOp.IN_RANGES, 0n, 0n, false, null, list.flatMap((r) => [r.first, r.last])));
      };
      ranges(payload.value.gpas, "gpas", "gpa");
      ranges(payload.value.gvas, "gvas", "gva");
      if (payload.value.access > ACCESS_RWX) mark(`${p}.access`, "use the bits R = 1, W = 2, X = 4");
      if (payload.value.access !== 0) {
        conditions.push(new Condition(FieldArea.PAYLOAD, "access", ConditionOp.ANY_BITS_U32, 0n, 0n, false, null, null, "", payload.value.access));
      }
      break;
    }
    case "hypercall":
      set(payload.value.numbers, `${p}.numbers`, FieldArea.REGS, "rax");
      break;
    default:
      break;
  }
  return errors.count > 0 ? undefined : conditions;
}

function valueCondition(c: ValueCondition | undefined, path: string, area: FieldArea, key: string, bad: Bad, required: boolean): Condition | undefined {
  if (c === undefined) {
    if (required) bad(path, "is required");
    return undefined;
  }
  if (c.operator === ValueOperator.UNSPECIFIED || ValueOperator[c.operator] === undefined) {
    bad(`${path}.operator`, "is required: name a VALUE_OPERATOR_*");
    return undefined;
  }
  return new Condition(area, key, c.operator as unknown as ConditionOp, c.value, c.mask ?? 0n, c.mask !== undefined);
}

function snake(name: string): string {
  return name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

/** The filter's counters as an EventFilterSummary (session stream, SetEventFilterResponse). */
export function filterSummaryToProto(filter: CompiledFilter, now: Date = new Date()): EventFilterSummary {
  return create(EventFilterSummarySchema, {
    time: timestampFromDate(now),
    unmatched: BigInt(filter.unmatched),
    notificationsDropped: BigInt(filter.notificationsDropped),
    rules: filter.rules.map((rule) =>
      create(RuleCountersSchema, {
        name: rule.name,
        event: TYPE_BY_KIND.get(rule.kind) ?? EventType.UNSPECIFIED,
        matched: BigInt(filter.count(rule.index, Counter.MATCHED)),
        replied: BigInt(filter.count(rule.index, Counter.REPLIED)),
        notified: BigInt(filter.count(rule.index, Counter.NOTIFIED)),
        delivered: BigInt(filter.count(rule.index, Counter.DELIVERED)),
      }),
    ),
  });
}

/** The notification mark of an event a rule answered (Event.notification). */
export function ruleNoticeToProto(notice: RuleNotice): EventNotification {
  return create(EventNotificationSchema, {
    rule: notice.rule,
    action: eventActionFromWire(notice.action),
    replyTime: timestampFromDate(new Date(notice.replyTimeMs)),
  });
}
