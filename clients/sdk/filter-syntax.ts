// SPDX-License-Identifier: Apache-2.0
/**
 * The compact event-filter syntax of kvmictl's `--filter` and the SDK's `attach({ eventFilter })`
 * (docs/event-filters.md, "Compact syntax"), parsed into a kvmi.v1 EventFilter:
 *
 *     cr cr=4 old:all=0x100000 new:none=0x100000 -> reply keep-old as smep ;
 *     hypercall nr=34 %rdi==24 -> count ;
 *     msr msr=0xc0000082 -> notify ;
 *     pf gpa=0x1000-0x1fff access=w -> sample 100 retry
 *
 * Rules are separated by `;`. A rule is an event type, conditions (all must hold), `->`, an action
 * and an optional `as NAME`. Errors name the rule and the part that is wrong.
 */
import { create } from "@bufbuild/protobuf";
import {
  BreakpointMatchSchema,
  CrMatchSchema,
  EventAction,
  EventFilterSchema,
  EventMatchSchema,
  EventType,
  HypercallMatchSchema,
  MsrMatchSchema,
  PageFaultMatchSchema,
  Register,
  ValueOperator,
} from "@kvmi/proto";
import type { EventFilter, EventMatch, EventRule, LocalReply, RuleAction, ValueCondition } from "@kvmi/proto";
import { InvalidArgumentError, StatusCode } from "./errors.js";

const EVENTS: Readonly<Record<string, EventType>> = {
  cr: EventType.CR,
  msr: EventType.MSR,
  breakpoint: EventType.BREAKPOINT,
  bp: EventType.BREAKPOINT,
  pf: EventType.PF,
  hypercall: EventType.HYPERCALL,
  pause: EventType.PAUSE_VCPU,
  trap: EventType.TRAP,
  xsetbv: EventType.XSETBV,
  descriptor: EventType.DESCRIPTOR,
  singlestep: EventType.SINGLESTEP,
};

const OPERATORS: ReadonlyArray<[string, ValueOperator]> = [
  ["==", ValueOperator.EQUAL],
  ["!=", ValueOperator.NOT_EQUAL],
  ["<=", ValueOperator.LESS_EQUAL],
  [">=", ValueOperator.GREATER_EQUAL],
  ["<", ValueOperator.LESS],
  [">", ValueOperator.GREATER],
  [":any=", ValueOperator.ANY_BITS],
  [":all=", ValueOperator.ALL_BITS],
  [":none=", ValueOperator.NO_BITS],
];

const ACTIONS: Readonly<Record<string, EventAction>> = { continue: EventAction.CONTINUE, retry: EventAction.RETRY, crash: EventAction.CRASH };

const CONDITION_HELP = "vcpu=, cr3=, %REG<op>VALUE, and per event cr= old<op> new<op> changed= (cr), msr= old<op> new<op> (msr), gpa= rip= (bp), gpa= gva= access= (pf), nr= (hypercall)";

type PayloadCase = NonNullable<EventMatch["payload"]["case"]>;

const PAYLOAD_SCHEMAS = {
  cr: CrMatchSchema,
  msr: MsrMatchSchema,
  breakpoint: BreakpointMatchSchema,
  pageFault: PageFaultMatchSchema,
  hypercall: HypercallMatchSchema,
} as const satisfies Record<PayloadCase, unknown>;

class SyntaxProblem extends Error {}

/**
 * Parses the compact syntax into an EventFilter.
 * @throws InvalidArgumentError naming the rule and the part that is wrong.
 */
export function parseEventFilter(text: string, options: { readonly summaryIntervalMs?: number } = {}): EventFilter {
  const rules = text
    .split(";")
    .map((r) => r.trim())
    .filter((r) => r !== "");
  const parsed = rules.map((rule, i) => {
    try {
      return parseRule(rule);
    } catch (err) {
      if (!(err instanceof SyntaxProblem)) throw err;
      throw new InvalidArgumentError({
        code: StatusCode.INVALID_ARGUMENT,
        message: `filter rule ${i + 1} ("${rule}"): ${err.message}`,
        reason: "FILTER_SYNTAX",
      });
    }
  });
  const intervalMs = options.summaryIntervalMs;
  return create(EventFilterSchema, {
    rules: parsed,
    ...(intervalMs !== undefined && { summaryInterval: { seconds: BigInt(Math.floor(intervalMs / 1000)), nanos: (intervalMs % 1000) * 1e6 } }),
  });
}

function parseRule(text: string): Omit<EventRule, "$typeName"> & { $typeName: "kvmi.v1.EventRule" } {
  const arrow = text.indexOf("->");
  if (arrow < 0) throw new SyntaxProblem('missing "-> ACTION" (deliver, reply, notify, sample N or count)');
  const left = text.slice(0, arrow).trim().split(/\s+/).filter(Boolean);
  const right = text.slice(arrow + 2).trim().split(/\s+/).filter(Boolean);
  const eventWord = left.shift();
  const event = eventWord === undefined ? undefined : EVENTS[eventWord.toLowerCase()];
  if (event === undefined) throw new SyntaxProblem(`"${eventWord ?? ""}" is not an event type: use ${Object.keys(EVENTS).join(", ")}`);
  const match = parseConditions(left, event);
  let name = "";
  const as = right.indexOf("as");
  if (as >= 0) {
    if (as !== right.length - 2) throw new SyntaxProblem('"as NAME" must end the rule');
    name = right[as + 1]!;
    right.splice(as);
  }
  return { $typeName: "kvmi.v1.EventRule", name, event, match, action: parseAction(right) };
}

function parseConditions(words: readonly string[], event: EventType): EventMatch {
  const match = create(EventMatchSchema);
  const payload = (kind: PayloadCase, expected: EventType, word: string): Record<string, unknown> => {
    if (event !== expected) throw new SyntaxProblem(`"${word}" applies to ${EventType[expected]!.toLowerCase()} events only`);
    if (match.payload.case === undefined) match.payload = { case: kind, value: create(PAYLOAD_SCHEMAS[kind] as typeof CrMatchSchema) } as EventMatch["payload"];
    return match.payload.value as unknown as Record<string, unknown>;
  };
  for (const word of words) {
    if (word.startsWith("%")) {
      const { field, condition } = comparison(word.slice(1), word);
      const register = Register[field.toUpperCase() as keyof typeof Register];
      if (typeof register !== "number" || register === Register.UNSPECIFIED) throw new SyntaxProblem(`"%${field}" is not a register: use %rax..%r15, %rip, %rflags, %cr0, %cr2, %cr3, %cr4, %efer`);
      match.registers.push({ $typeName: "kvmi.v1.RegisterCondition", register, condition });
      continue;
    }
    const eq = word.indexOf("=");
    const key = eq < 0 ? word : word.slice(0, eq);
    const list = (): bigint[] => (eq < 0 ? [] : word.slice(eq + 1).split(",").map((v) => number(v, word)));
    switch (key) {
      case "vcpu":
        match.vcpus.push(...list().map(Number));
        continue;
      case "cr3":
        match.cr3.push(...list());
        continue;
      case "cr":
        (payload("cr", EventType.CR, word)["crs"] as number[]).push(...list().map(Number));
        continue;
      case "changed":
        payload("cr", EventType.CR, word)["changedBits"] = list()[0] ?? 0n;
        continue;
      case "msr":
        (payload("msr", EventType.MSR, word)["msrs"] as number[]).push(...list().map(Number));
        continue;
      case "nr":
        (payload("hypercall", EventType.HYPERCALL, word)["numbers"] as bigint[]).push(...list());
        continue;
      case "rip":
        (payload("breakpoint", EventType.BREAKPOINT, word)["rips"] as bigint[]).push(...list());
        continue;
      case "gpa":
        if (event === EventType.BREAKPOINT) (payload("breakpoint", EventType.BREAKPOINT, word)["gpas"] as bigint[]).push(...list());
        else (payload("pageFault", EventType.PF, word)["gpas"] as unknown[]).push(...ranges(word.slice(eq + 1), word));
        continue;
      case "gva":
        (payload("pageFault", EventType.PF, word)["gvas"] as unknown[]).push(...ranges(word.slice(eq + 1), word));
        continue;
      case "access":
        payload("pageFault", EventType.PF, word)["access"] = accessBits(word.slice(eq + 1), word);
        continue;
      default:
        break;
    }
    const old = word.startsWith("old") ? "oldValue" : word.startsWith("new") ? "newValue" : undefined;
    if (old !== undefined && (event === EventType.CR || event === EventType.MSR)) {
      const target = event === EventType.CR ? payload("cr", EventType.CR, word) : payload("msr", EventType.MSR, word);
      target[old] = comparison(word.slice(3), word).condition;
      continue;
    }
    throw new SyntaxProblem(`unknown condition "${word}": use ${CONDITION_HELP}`);
  }
  return match;
}

/** `[&MASK]OP VALUE` after a field name. */
function comparison(text: string, word: string): { field: string; condition: ValueCondition } {
  for (const [token, operator] of OPERATORS) {
    const at = text.indexOf(token);
    if (at < 0) continue;
    const left = text.slice(0, at);
    const amp = left.indexOf("&");
    const field = amp < 0 ? left : left.slice(0, amp);
    const mask = amp < 0 ? undefined : number(left.slice(amp + 1), word);
    const value = number(text.slice(at + token.length), word);
    return { field, condition: { $typeName: "kvmi.v1.ValueCondition", operator, value, ...(mask !== undefined && { mask }) } as ValueCondition };
  }
  throw new SyntaxProblem(`"${word}" has no comparison: use ==, !=, <, <=, >, >=, :any=, :all= or :none= (with &MASK before it to mask the field)`);
}

function number(text: string, word: string): bigint {
  try {
    if (!/^(0x[0-9a-f]+|\d+)$/i.test(text)) throw new Error();
    const value = BigInt(text);
    if (value > 0xffffffffffffffffn) throw new Error();
    return value;
  } catch {
    throw new SyntaxProblem(`"${text}" in "${word}" is not a number (decimal or 0x hex, at most 64 bits)`);
  }
}

function ranges(text: string, word: string): Array<{ $typeName: "kvmi.v1.AddressRange"; first: bigint; last: bigint }> {
  return text.split(",").map((part) => {
    const [first, last] = part.split("-");
    const a = number(first ?? "", word);
    const b = last === undefined ? a : number(last, word);
    if (b < a) throw new SyntaxProblem(`range "${part}" in "${word}" ends before it starts`);
    return { $typeName: "kvmi.v1.AddressRange", first: a, last: b };
  });
}

function accessBits(text: string, word: string): number {
  if (/^\d$/.test(text)) return Number(text);
  let bits = 0;
  for (const c of text.toLowerCase()) {
    const bit = { r: 1, w: 2, x: 4 }[c];
    if (bit === undefined) throw new SyntaxProblem(`"${word}": access is made of r, w and x (or a number 1-7)`);
    bits |= bit;
  }
  return bits;
}

function parseAction(words: string[]): RuleAction {
  const [kind, ...rest] = words;
  const action = (value: RuleAction["kind"]): RuleAction => ({ $typeName: "kvmi.v1.RuleAction", kind: value });
  switch (kind) {
    case "deliver":
      if (rest.length > 0) throw new SyntaxProblem(`"deliver" takes nothing after it, got "${rest.join(" ")}"`);
      return action({ case: "deliver", value: { $typeName: "kvmi.v1.DeliverAction" } });
    case "reply":
    case "notify":
      return action({ case: kind, value: localReply(rest) });
    case "count":
      return action({ case: "count", value: { $typeName: "kvmi.v1.CountAction", reply: localReply(rest) } });
    case "sample": {
      const every = rest.shift();
      if (every === undefined || !/^\d+$/.test(every) || Number(every) < 1) throw new SyntaxProblem(`"sample" needs how many events per notification: sample N (N >= 1), got "${every ?? ""}"`);
      return action({ case: "sample", value: { $typeName: "kvmi.v1.SampleAction", every: Number(every), reply: localReply(rest) } });
    }
    default:
      throw new SyntaxProblem(`"${kind ?? ""}" is not an action: use deliver, reply, notify, sample N or count`);
  }
}

/** `[continue|retry|crash] [keep-old | new=VALUE]`. */
function localReply(words: readonly string[]): LocalReply {
  const reply: LocalReply = { $typeName: "kvmi.v1.LocalReply", action: EventAction.UNSPECIFIED, value: { case: undefined } };
  for (const word of words) {
    if (word in ACTIONS) reply.action = ACTIONS[word]!;
    else if (word === "keep-old") reply.value = { case: "keepOldValue", value: true };
    else if (word.startsWith("new=")) reply.value = { case: "newVal", value: number(word.slice(4), word) };
    else throw new SyntaxProblem(`"${word}" is not a reply: use continue, retry, crash, keep-old or new=VALUE`);
  }
  return reply;
}
