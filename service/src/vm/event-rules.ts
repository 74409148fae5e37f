// SPDX-License-Identifier: Apache-2.0
/**
 * The compiled form of a controller's event filter (docs/event-filters.md) and its evaluation on
 * the event path. mapping/event-filter.ts checks an EventFilter message and builds this once per
 * change; {@link CompiledFilter.match} then runs on every event before anything crosses the
 * network.
 *
 * Why this shape: matching must not allocate, so a rule is a flat list of {@link Condition}s of one
 * hidden class (monomorphic reads), set membership is a prebuilt `Set`, ranges are a prebuilt array
 * of bigint bounds, a register is read by a precomputed key, and counters live in one
 * Float64Array. {@link CompiledFilter.match} creates no object, array, closure or string; the only
 * value it may create is the intermediate BigInt of a masked or XOR comparison on a 64-bit field
 * (`(field & mask) op value`), which optimized V8 code may or may not keep off the heap. Rules
 * without masks (sets, ranges, plain comparisons) allocate nothing at all; `npm run bench`
 * reports the garbage collections a million matches cause.
 *
 * gRPC-free like vm-host.ts: it knows decoded KVMI events, not kvmi.v1 messages.
 */
import type { KvmiEvent } from "@kvmi/kvm-bridge";

/** What a rule does with a matching event. */
export const RuleActionKind = { DELIVER: 0, REPLY: 1, NOTIFY: 2, SAMPLE: 3, COUNT: 4 } as const;
export type RuleActionKind = (typeof RuleActionKind)[keyof typeof RuleActionKind];

/** Where a condition reads its value: the event payload, `kvmi_event_arch.regs` or `.sregs`. */
export const FieldArea = { PAYLOAD: 0, REGS: 1, SREGS: 2, VCPU: 3 } as const;
export type FieldArea = (typeof FieldArea)[keyof typeof FieldArea];

/**
 * How a condition compares. 1-9 are the unsigned 64-bit comparisons of kvmi.v1 ValueOperator (same
 * values); the others are the membership forms the typed matches compile to.
 */
export const ConditionOp = {
  EQUAL: 1,
  NOT_EQUAL: 2,
  LESS: 3,
  LESS_EQUAL: 4,
  GREATER: 5,
  GREATER_EQUAL: 6,
  ANY_BITS: 7,
  ALL_BITS: 8,
  NO_BITS: 9,
  /** The field (bigint or number) is in `set`. */
  IN_SET: 20,
  /** The bigint field is in one of the inclusive `ranges` [first, last, first, last, ...]. */
  IN_RANGES: 21,
  /** `(field XOR field2) & value` is not zero (CR bits the write changes). */
  CHANGED_BITS: 22,
  /** The u32 field shares a bit with `bits` (PF access). */
  ANY_BITS_U32: 23,
} as const;
export type ConditionOp = (typeof ConditionOp)[keyof typeof ConditionOp];

/** One condition. Every condition has all fields, so reads stay monomorphic. */
export class Condition {
  constructor(
    readonly area: FieldArea,
    /** The field's key in its area (`new_value`, `rip`, `cr3`). */
    readonly key: string,
    readonly op: ConditionOp,
    /** The constant of a comparison (and the bits of CHANGED_BITS). */
    readonly value: bigint = 0n,
    /** Applied to the field before the comparison; `hasMask` false keeps all bits. */
    readonly mask: bigint = 0n,
    readonly hasMask: boolean = false,
    readonly set: ReadonlySet<bigint | number> | null = null,
    readonly ranges: readonly bigint[] | null = null,
    /** The second payload key of CHANGED_BITS. */
    readonly key2: string = "",
    /** The bits of ANY_BITS_U32. */
    readonly bits: number = 0,
  ) {}
}

/** The reply a rule sends: a wire action and what CR/MSR reply data carries. */
export interface RuleReply {
  /** `kvmi_event_reply.action` (KVMI_EVENT_ACTION_*). */
  readonly action: number;
  /** True for CONTINUE: a BREAKPOINT whose INT3 the bridge removed is then sent RETRY. */
  readonly isContinue: boolean;
  /** The RETRY action value, for that case. */
  readonly retryAction: number;
  /** CR/MSR `new_val`: the guest's value, a constant, or the old value (blocks the write). */
  readonly value: "guest" | "constant" | "old";
  readonly newVal: bigint;
}

/** One compiled rule. */
export interface CompiledRule {
  readonly index: number;
  readonly name: string;
  /** The dialect-neutral event kind (`CR`) it applies to. */
  readonly kind: string;
  readonly action: RuleActionKind;
  /** SAMPLE: one in `every` is notified. */
  readonly every: number;
  readonly reply: RuleReply;
  readonly conditions: readonly Condition[];
}

/** Counter slots per rule in {@link CompiledFilter.counters}. */
export const COUNTER_SLOTS = 5;
export const Counter = { MATCHED: 0, REPLIED: 1, NOTIFIED: 2, DELIVERED: 3, SAMPLE_TICK: 4 } as const;

const NO_RULES: readonly CompiledRule[] = [];

/** A controller's compiled filter with its counters. */
export class CompiledFilter {
  /** Per rule, {@link COUNTER_SLOTS} counters (see {@link Counter}). Float64: exact to 2^53. */
  readonly counters: Float64Array;
  /** Events no rule matched. */
  unmatched = 0;
  /** Notifications the controller's stream had no room for. */
  notificationsDropped = 0;
  private readonly byKind: ReadonlyMap<string, readonly CompiledRule[]>;

  constructor(
    readonly rules: readonly CompiledRule[],
    /** How often summaries go on the session stream; undefined: never. */
    readonly summaryIntervalMs: number | undefined,
  ) {
    this.counters = new Float64Array(rules.length * COUNTER_SLOTS);
    const byKind = new Map<string, CompiledRule[]>();
    for (const rule of rules) {
      const list = byKind.get(rule.kind) ?? [];
      list.push(rule);
      byKind.set(rule.kind, list);
    }
    this.byKind = byKind;
  }

  /** The counter `slot` of rule `index`. */
  count(index: number, slot: number): number {
    return this.counters[index * COUNTER_SLOTS + slot]!;
  }

  /**
   * The index of the first rule that matches `event`, or -1. Allocation-free (see the file
   * comment): loops over prebuilt arrays and compares primitives.
   */
  match(event: KvmiEvent): number {
    const rules = this.byKind.get(event.kind) ?? NO_RULES;
    for (let i = 0; i < rules.length; i++) {
      const rule = rules[i]!;
      const conditions = rule.conditions;
      let j = 0;
      while (j < conditions.length && holds(conditions[j]!, event)) j++;
      if (j === conditions.length) return rule.index;
    }
    return -1;
  }
}

/** Reads a condition's field from a decoded event. @internal exported for the allocation check. */
export function read(area: FieldArea, key: string, event: KvmiEvent): unknown {
  switch (area) {
    case FieldArea.PAYLOAD:
      return event.payload === undefined ? undefined : event.payload[key];
    case FieldArea.REGS:
      return (event.arch["regs"] as Record<string, unknown>)[key];
    case FieldArea.SREGS:
      return (event.arch["sregs"] as Record<string, unknown>)[key];
    default:
      return event.vcpu;
  }
}

/** True when `c` holds for `event`. */
export function holds(c: Condition, event: KvmiEvent): boolean {
  const field = read(c.area, c.key, event);
  switch (c.op) {
    case ConditionOp.IN_SET:
      return c.set!.has(field as bigint | number);
    case ConditionOp.IN_RANGES: {
      const ranges = c.ranges!;
      const v = field as bigint;
      for (let i = 0; i < ranges.length; i += 2) if (v >= ranges[i]! && v <= ranges[i + 1]!) return true;
      return false;
    }
    case ConditionOp.ANY_BITS_U32:
      return ((field as number) & c.bits) !== 0;
    case ConditionOp.CHANGED_BITS:
      return (((field as bigint) ^ (read(c.area, c.key2, event) as bigint)) & c.value) !== 0n;
    default:
      return compare(c.op, c.hasMask ? (field as bigint) & c.mask : (field as bigint), c.value);
  }
}

/** Compares two unsigned 64-bit values. @internal exported for the allocation check. */
export function compare(op: ConditionOp, v: bigint, k: bigint): boolean {
  switch (op) {
    case ConditionOp.EQUAL:
      return v === k;
    case ConditionOp.NOT_EQUAL:
      return v !== k;
    case ConditionOp.LESS:
      return v < k;
    case ConditionOp.LESS_EQUAL:
      return v <= k;
    case ConditionOp.GREATER:
      return v > k;
    case ConditionOp.GREATER_EQUAL:
      return v >= k;
    case ConditionOp.ANY_BITS:
      return (v & k) !== 0n;
    case ConditionOp.ALL_BITS:
      return (v & k) === k;
    case ConditionOp.NO_BITS:
      return (v & k) === 0n;
    default:
      return false;
  }
}
