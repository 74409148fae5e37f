// SPDX-License-Identifier: Apache-2.0
/**
 * Property tests over every layout in V9_LAYOUTS (conventions §7.4): arbitraries are derived from the
 * layout tables generically, so a new struct is covered as soon as it is listed.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { KvmiArgumentError } from "../../errors.js";
import { decode, encode, encodeInto, findNonZeroPadding, viewOf, zeroValue } from "../codec.js";
import type { Field, Layout, LayoutValue, ScalarType } from "../layout.js";
import { V9_LAYOUTS } from "./index.js";

type AnyValue = Record<string, unknown>;

const U64_MAX = (1n << 64n) - 1n;
const S64_MIN = -(1n << 63n);
const S64_MAX = (1n << 63n) - 1n;

function scalarArb(type: ScalarType): fc.Arbitrary<number | bigint> {
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

function fieldArb(field: Field): fc.Arbitrary<unknown> {
  switch (field.kind) {
    case "scalar":
      return scalarArb(field.type);
    case "bytes":
      return fc.uint8Array({ minLength: field.length, maxLength: field.length });
    case "array":
      return fc.array(scalarArb(field.type), { minLength: field.count, maxLength: field.count });
    case "struct":
      return layoutArb(field.layout);
    case "pad":
      throw new Error("padding has no value");
  }
}

/** An arbitrary value of `layout`: every non-padding field, nested structs included. */
function layoutArb(layout: Layout): fc.Arbitrary<AnyValue> {
  const parts: Record<string, fc.Arbitrary<unknown>> = {};
  for (const [name, field] of Object.entries(layout.fields)) {
    if (field.kind !== "pad") parts[name] = fieldArb(field);
  }
  return fc.record(parts) as fc.Arbitrary<AnyValue>;
}

interface Leaf {
  /** Dotted path from the layout root (`arch.regs.rip`). */
  readonly path: string;
  /** Absolute offset from the layout root. */
  readonly offset: number;
  readonly field: Field;
}

/** Every non-struct field of `layout`, recursively, with its dotted path and absolute offset. */
function leaves(layout: Layout, prefix = "", base = 0): Leaf[] {
  const out: Leaf[] = [];
  for (const [name, field] of Object.entries(layout.fields)) {
    if (field.kind === "struct") out.push(...leaves(field.layout, `${prefix}${name}.`, base + field.offset));
    else out.push({ path: prefix + name, offset: base + field.offset, field });
  }
  return out;
}

function setPath(value: AnyValue, path: string, leafValue: unknown): void {
  const parts = path.split(".");
  let node = value;
  for (const part of parts.slice(0, -1)) node = node[part] as AnyValue;
  node[parts[parts.length - 1]!] = leafValue;
}

function outOfRange(type: ScalarType): unknown[] {
  switch (type) {
    // The compiled checks use integer masking (compile.ts), so the list covers what masking could
    // let through: fractions, NaN, values that wrap to an in-range one, non-integers. The other JS
    // integer type is accepted when in range (coerceScalar), so only out-of-range ones of it are here.
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
function comparable(value: unknown): unknown {
  if (value instanceof Uint8Array) return `u8[${value.length}]:${Buffer.from(value).toString("hex")}`;
  if (Array.isArray(value)) return value.map(comparable);
  if (typeof value === "object" && value !== null) {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, comparable(v)]));
  }
  return value;
}

const LAYOUTS = Object.entries(V9_LAYOUTS);

describe.each(LAYOUTS)("%s", (_name, layout) => {
  const arb = layoutArb(layout);
  const all = leaves(layout);
  const pads = all.filter((leaf) => leaf.field.kind === "pad");

  it("decode(encode(x)) deep-equals x", () => {
    fc.assert(
      fc.property(arb, (value) => {
        const bytes = encode(layout, value as LayoutValue<Layout>);
        expect(bytes.length).toBe(layout.size);
        expect(comparable(decode(layout, bytes))).toEqual(comparable(value));
      }),
      { numRuns: 50 },
    );
  });

  it("writes every padding byte as zero, even over a dirty buffer", () => {
    fc.assert(
      fc.property(arb, (value) => {
        const buf = new Uint8Array(layout.size).fill(0xa5);
        encodeInto(layout, value as LayoutValue<Layout>, viewOf(buf));
        for (const pad of pads) {
          const length = pad.field.kind === "pad" ? pad.field.length : 0;
          expect(Array.from(buf.subarray(pad.offset, pad.offset + length)), pad.path).toEqual(
            new Array<number>(length).fill(0),
          );
        }
        expect(findNonZeroPadding(layout, viewOf(buf))).toBeUndefined();
      }),
      { numRuns: 20 },
    );
  });

  it("rejects out-of-range scalars and oversized byte arrays with KvmiArgumentError", () => {
    for (const leaf of all) {
      const field = leaf.field;
      const bad: Array<{ label: string; value: unknown }> = [];
      if (field.kind === "scalar") {
        for (const v of outOfRange(field.type)) bad.push({ label: `${leaf.path}=${String(v)}`, value: v });
      } else if (field.kind === "array") {
        for (const v of outOfRange(field.type)) {
          const items: unknown[] = new Array(field.count).fill(field.type.endsWith("64") ? 0n : 0);
          items[field.count - 1] = v;
          bad.push({ label: `${leaf.path}[last]=${String(v)}`, value: items });
        }
        bad.push({ label: `${leaf.path} too short`, value: new Array(field.count - 1).fill(0n) });
      } else if (field.kind === "bytes") {
        bad.push({ label: `${leaf.path} too long`, value: new Uint8Array(field.length + 1) });
        bad.push({ label: `${leaf.path} not bytes`, value: "x" });
      }
      for (const { label, value } of bad) {
        const broken = structuredClone(zeroValue(layout)) as AnyValue;
        setPath(broken, leaf.path, value);
        let thrown: unknown;
        try {
          encode(layout, broken as LayoutValue<Layout>);
        } catch (err) {
          thrown = err;
        }
        expect(thrown, label).toBeInstanceOf(KvmiArgumentError);
        expect((thrown as KvmiArgumentError).field, label).toMatch(new RegExp(`^${leaf.path.replace(/[.[\]]/g, "\\$&")}`));
      }
    }
  });

  // Registered only for layouts that have padding, so the others show no skipped entry.
  if (pads.length === 0) return;
  it("findNonZeroPadding reports each checked pad byte and ignores reserved ones", () => {
    fc.assert(
      fc.property(arb, fc.integer({ min: 1, max: 0xff }), (value, poke) => {
        const clean = encode(layout, value as LayoutValue<Layout>);
        for (const pad of pads) {
          if (pad.field.kind !== "pad") continue;
          for (let i = 0; i < pad.field.length; i++) {
            const buf = clean.slice();
            buf[pad.offset + i] = poke;
            const found = findNonZeroPadding(layout, viewOf(buf));
            expect(found, `${pad.path}+${i}`).toBe(pad.field.checked ? pad.path : undefined);
          }
        }
      }),
      { numRuns: 5 },
    );
  });
});

describe("generic arbitrary", () => {
  it("covers every layout of V9_LAYOUTS", () => {
    expect(LAYOUTS.length).toBeGreaterThanOrEqual(60);
  });
});
