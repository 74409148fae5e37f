// SPDX-License-Identifier: Apache-2.0
/**
 * The codec where code generation from strings is disallowed (a CSP without 'unsafe-eval', `node
 * --disallow-code-generation-from-strings`): `new Function` throws there, and the codec must fall back
 * to the interpreter instead of failing. The layout property tests run on both codecs
 * (test/contract/layout-roundtrip.test.ts); this checks the automatic choice.
 */
import { afterEach, describe, expect, it } from "vitest";
import { decode, encode } from "./codec.js";
import { setCodeGeneration, usesCodeGeneration } from "./compile.js";
import { defineLayout, pad, u16, u64 } from "./layout.js";

const probe = defineLayout("codegen_probe", 16, { gpa: u64(0), size: u16(8), padding: pad(10, 6) });
const realFunction = globalThis.Function;

afterEach(() => {
  globalThis.Function = realFunction;
  setCodeGeneration(undefined);
});

describe("code generation", () => {
  it("is used where the runtime allows it", () => {
    setCodeGeneration(undefined);
    expect(usesCodeGeneration()).toBe(true);
  });

  it("falls back to the interpreter when new Function throws, with the same results and errors", () => {
    globalThis.Function = function disallowed(): never {
      throw new EvalError("Code generation from strings disallowed for this context");
    } as unknown as FunctionConstructor;
    setCodeGeneration(undefined);
    const bytes = encode(probe, { gpa: 0x1234n, size: 7 });
    expect(Array.from(bytes)).toEqual([0x34, 0x12, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0]);
    expect(decode(probe, bytes)).toStrictEqual({ gpa: 0x1234n, size: 7 });
    expect(() => encode(probe, { gpa: 1n, size: 0x1_0000 })).toThrow(/size must be a u16 integer in \[0, 65535\]/);
    expect(usesCodeGeneration()).toBe(false);
  });
});
