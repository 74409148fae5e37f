// SPDX-License-Identifier: Apache-2.0
/**
 * fast-check arbitraries derived from the layout tables, shared by the layout and message property
 * tests (conventions §7 item 4): a new struct, field or dialect is covered as soon as it is in a
 * table. Values are in decoded form: u64/s64 as bigint, narrower integers and `u64AsNumber` fields
 * as number, byte fields as Uint8Array, padding left out.
 */
import fc from "fast-check";
import type { BodySchema, Field, Layout, TailSpec } from "@kvmi/kvm-bridge/codec";

export type Obj = Record<string, unknown>;
type ScalarType = Extract<Field, { kind: "scalar" }>["type"];

export const U64_MAX = (1n << 64n) - 1n;
export const S64_MIN = -(1n << 63n);
export const S64_MAX = (1n << 63n) - 1n;

/** Any value of a wire integer type, in the JS type the decoder returns for it. */
export function scalarArb(type: ScalarType): fc.Arbitrary<number | bigint> {
  switch (type) {
    case "u8":
      return fc.integer({ min: 0, max: 0xff });
    case "u16":
      return fc.integer({ min: 0, max: 0xffff });
    case "u32":
      return fc.integer({ min: 0, max: 0xffff_ffff });
    case "s32":
      return fc.integer({ min: -0x8000_0000, max: 0x7fff_ffff });
    case "u64":
      return fc.bigInt({ min: 0n, max: U64_MAX });
    case "s64":
      return fc.bigInt({ min: S64_MIN, max: S64_MAX });
  }
}

/** A value of one field; undefined for padding, which has no value. */
export function fieldArb(field: Field): fc.Arbitrary<unknown> | undefined {
  switch (field.kind) {
    case "scalar":
      // A u64 that decodes as a number round-trips exactly up to 2^53 - 1 (docs/decisions/0010).
      return field.asNumber === true ? fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }) : scalarArb(field.type);
    case "bytes":
      return fc.uint8Array({ minLength: field.length, maxLength: field.length });
    case "array":
      return fc.array(scalarArb(field.type), { minLength: field.count, maxLength: field.count });
    case "struct":
      return layoutArb(field.layout);
    case "pad":
      return undefined;
  }
}

const layoutArbs = new WeakMap<Layout, fc.Arbitrary<Obj>>();

/** A value of `layout`: every non-padding field, nested structs included. */
export function layoutArb(layout: Layout): fc.Arbitrary<Obj> {
  let arb = layoutArbs.get(layout);
  if (arb === undefined) {
    const record: Record<string, fc.Arbitrary<unknown>> = {};
    for (const [name, field] of Object.entries(layout.fields)) {
      const inner = fieldArb(field);
      if (inner !== undefined) record[name] = inner;
    }
    arb = fc.record(record, { noNullPrototype: true }) as fc.Arbitrary<Obj>;
    layoutArbs.set(layout, arb);
  }
  return arb;
}

/** Bytes of one tail element, from the C widths (kvmi-abi "Conventions"), not from the codec. */
export function tailElementBytes(tail: TailSpec): number {
  const element = tail.element;
  if (element === "bytes") return 1;
  if (typeof element === "string") return { u8: 1, u16: 2, u32: 4, s32: 4, u64: 8, s64: 8 }[element];
  return element.size;
}

/** A copy of `value` with the number at dotted `path` replaced; only the objects on the path are copied. */
export function withPath(value: Obj, path: string, to: number): Obj {
  const dot = path.indexOf(".");
  if (dot < 0) return { ...value, [path]: to };
  const head = path.slice(0, dot);
  return { ...value, [head]: withPath(value[head] as Obj, path.slice(dot + 1), to) };
}

/** Sets the leaf at dotted `path` in place. */
export function setPath(value: Obj, path: string, leafValue: unknown): void {
  const parts = path.split(".");
  let node = value;
  for (const part of parts.slice(0, -1)) node = node[part] as Obj;
  node[parts[parts.length - 1]!] = leafValue;
}

/**
 * A body of `schema` in decoded form: the fixed part plus the tail, with its count field set to the
 * tail's length. `budget` is how many bytes the tail may use (KVMI_MSG_SIZE minus the rest).
 */
export function bodyArb(schema: BodySchema, budget: number): fc.Arbitrary<Obj> {
  const fixed = schema.layout === null ? fc.constant<Obj>({}) : layoutArb(schema.layout);
  const tail = schema.tail;
  if (tail === undefined) return fixed;
  const fitting = Math.floor(budget / tailElementBytes(tail));
  const maxCount = Math.min(tail.maxCount ?? fitting, fitting);
  // Mostly small tails, sometimes the largest one the message can hold.
  const count = fc.oneof(
    { weight: 4, arbitrary: fc.integer({ min: 0, max: Math.min(maxCount, 8) }) },
    { weight: 1, arbitrary: fc.integer({ min: 0, max: maxCount }) },
    { weight: 1, arbitrary: fc.constant(maxCount) },
  );
  const element = tail.element;
  const items = count.chain((n): fc.Arbitrary<unknown> => {
    if (element === "bytes") return fc.uint8Array({ minLength: n, maxLength: n });
    if (typeof element === "string") return fc.array(scalarArb(element), { minLength: n, maxLength: n });
    return fc.array(layoutArb(element), { minLength: n, maxLength: n });
  });
  return fc.tuple(fixed, items).map(([value, list]) => {
    const length = (list as { length: number }).length;
    const withTail: Obj = { ...value, [tail.name]: list };
    return tail.countField === undefined ? withTail : withPath(withTail, tail.countField, length);
  });
}

/** A leaf field of a layout with its dotted path and absolute offset. */
export interface Leaf {
  readonly path: string;
  readonly offset: number;
  readonly field: Field;
}

/** Every non-struct field of `layout`, recursively. */
export function leaves(layout: Layout, prefix = "", base = 0): Leaf[] {
  const out: Leaf[] = [];
  for (const [name, field] of Object.entries(layout.fields)) {
    if (field.kind === "struct") out.push(...leaves(field.layout, `${prefix}${name}.`, base + field.offset));
    else out.push({ path: prefix + name, offset: base + field.offset, field });
  }
  return out;
}

/**
 * Values the encoder must refuse for a field of `type`. The compiled checks use integer masking, so
 * the list covers what masking could let through (fractions, NaN, values that wrap to an in-range
 * one, non-integers). The other JS integer type is accepted when in range, so only out-of-range ones
 * of it are here.
 */
export function outOfRange(type: ScalarType): unknown[] {
  switch (type) {
    case "u8":
      return [0x100, -1, 1.5, Number.NaN, 0x1_0000_0001, "1", 0x100n, -1n, undefined];
    case "u16":
      return [0x1_0000, -1, 0.5, Number.NaN, 2 ** 40 + 1, "1", 0x1_0000n];
    case "u32":
      return [0x1_0000_0000, -1, 0.5, Number.NaN, 2 ** 53, Number.POSITIVE_INFINITY, null, 0x1_0000_0000n];
    case "s32":
      return [0x8000_0000, -0x8000_0001, -0.5, Number.NaN, 2 ** 32, "0", 0x8000_0000n];
    case "u64":
      return [U64_MAX + 1n, -1n, -1, 1.5, 2 ** 53, "1", undefined];
    case "s64":
      return [S64_MAX + 1n, S64_MIN - 1n, 0.5, 2 ** 60];
  }
}

/**
 * `value` with every Uint8Array replaced by a tagged hex string: vitest's deep equality walks typed
 * arrays element by element, which costs ~10 ms per 4 KiB `kvm_xsave` comparison.
 */
export function comparable(value: unknown): unknown {
  if (value instanceof Uint8Array) return `u8[${value.length}]:${Buffer.from(value).toString("hex")}`;
  if (Array.isArray(value)) return value.map(comparable);
  if (typeof value === "object" && value !== null) {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, comparable(v)]));
  }
  return value;
}
