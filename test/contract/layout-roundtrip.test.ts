// SPDX-License-Identifier: Apache-2.0
/**
 * Property tests over every layout of every dialect (conventions §7 item 4: V9_LAYOUTS, V12_LAYOUTS,
 * KVMI_V7_LAYOUTS), run twice: with the generated codec and with the interpreter that replaces it
 * where code generation from strings is disallowed (wire/compile.ts, wire/interpret.ts). Arbitraries
 * come from the tables (test/support/arbitraries.ts), so a new struct is covered once it is indexed.
 */
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  decode,
  encode,
  encodeInto,
  findNonZeroPadding,
  KVMI_V7_LAYOUTS,
  KvmiArgumentError,
  setCodeGeneration,
  usesCodeGeneration,
  V12_LAYOUTS,
  V9_LAYOUTS,
  viewOf,
  zeroValue,
} from "@kvmi/kvm-bridge/codec";
import type { Layout, LayoutValue } from "@kvmi/kvm-bridge/codec";
import { comparable, layoutArb, leaves, outOfRange, setPath } from "../support/arbitraries.js";
import type { Leaf, Obj } from "../support/arbitraries.js";

/** Every distinct layout object, labelled with the first C name it is indexed under. */
const LAYOUTS: Array<[string, Layout]> = [];
{
  const seen = new Set<Layout>();
  for (const [dialect, index] of [["v9", V9_LAYOUTS], ["v12", V12_LAYOUTS], ["kvmi-v7", KVMI_V7_LAYOUTS]] as const) {
    for (const [name, layout] of Object.entries(index)) {
      if (seen.has(layout)) continue;
      seen.add(layout);
      LAYOUTS.push([`${dialect} ${name}`, layout]);
    }
  }
}

/**
 * Sets each leaf of a zero value of `layout` to each value its type must refuse and encodes it:
 * returns every case that did not throw a KvmiArgumentError naming that leaf.
 */
function rejectionProblems(layout: Layout, all: readonly Leaf[]): string[] {
  const broken = zeroValue(layout) as Obj;
  const problems: string[] = [];
  // Thousands of expected throws: stack traces would be their whole cost, and nobody reads them.
  const stackTraceLimit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  try {
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
      const original = leaf.path.split(".").reduce<unknown>((node, part) => (node as Obj)[part], broken);
      for (const { label, value } of bad) {
        setPath(broken, leaf.path, value);
        try {
          encode(layout, broken as LayoutValue<Layout>);
          problems.push(`${label}: accepted`);
        } catch (err) {
          if (!(err instanceof KvmiArgumentError)) problems.push(`${label}: threw ${String(err)}`);
          else if (!err.field.startsWith(leaf.path)) problems.push(`${label}: names field ${err.field}`);
        } finally {
          setPath(broken, leaf.path, original);
        }
      }
    }
  } finally {
    Error.stackTraceLimit = stackTraceLimit;
  }
  return problems;
}

const MODES = [
  ["generated code", true],
  ["interpreter", false],
] as const;

describe.each(MODES)("codec with %s", (_mode, generated) => {
  beforeAll(() => setCodeGeneration(generated));
  afterAll(() => setCodeGeneration(undefined));

  it("runs in the mode under test", () => {
    expect(usesCodeGeneration()).toBe(generated);
  });

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
        { numRuns: 30 },
      );
    });

    it("writes every padding byte as zero, even over a dirty buffer", () => {
      fc.assert(
        fc.property(arb, (value) => {
          const buf = new Uint8Array(layout.size).fill(0xa5);
          encodeInto(layout, value as LayoutValue<Layout>, viewOf(buf));
          for (const pad of pads) {
            const length = pad.field.kind === "pad" ? pad.field.length : 0;
            expect(Array.from(buf.subarray(pad.offset, pad.offset + length)), pad.path).toEqual(new Array<number>(length).fill(0));
          }
          expect(findNonZeroPadding(layout, viewOf(buf))).toBeUndefined();
        }),
        { numRuns: 10 },
      );
    });

    it("accepts the other JS integer type in range and writes the same bytes", () => {
      fc.assert(
        fc.property(arb, (value) => {
          const swapped = structuredClone(value);
          for (const leaf of all) {
            if (leaf.field.kind !== "scalar") continue;
            const parts = leaf.path.split(".");
            let node = swapped;
            for (const part of parts.slice(0, -1)) node = node[part] as Obj;
            const v = node[parts.at(-1)!];
            node[parts.at(-1)!] = typeof v === "bigint" ? (v <= BigInt(Number.MAX_SAFE_INTEGER) && v >= -BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v) : BigInt(v as number);
          }
          expect(encode(layout, swapped as LayoutValue<Layout>)).toEqual(encode(layout, value as LayoutValue<Layout>));
        }),
        { numRuns: 10 },
      );
    });

    it("rejects out-of-range scalars and oversized byte arrays with KvmiArgumentError", () => {
      expect(rejectionProblems(layout, all)).toEqual([]);
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
              expect(findNonZeroPadding(layout, viewOf(buf)), `${pad.path}+${i}`).toBe(pad.field.checked ? pad.path : undefined);
            }
          }
        }),
        { numRuns: 3 },
      );
    });
  });
});

describe("the layout set", () => {
  it("covers every layout of the three dialect indexes", () => {
    expect(LAYOUTS.length).toBeGreaterThanOrEqual(90);
  });

  it("both modes throw the same error text", () => {
    const layout = V9_LAYOUTS["kvmi_vm_read_physical"]!;
    const messages = MODES.map(([, generated]) => {
      setCodeGeneration(generated);
      try {
        encode(layout, { gpa: 1n, size: 0x1_0000 } as never);
        return "no error";
      } catch (err) {
        return (err as Error).message;
      } finally {
        setCodeGeneration(undefined);
      }
    });
    expect(messages[0]).toMatch(/size must be a u16 integer/);
    expect(messages[1]).toBe(messages[0]);
  });
});
