// SPDX-License-Identifier: Apache-2.0
/**
 * Compiles a layout table into straight-line encode/decode functions, once per layout, on first
 * use (conventions §4 still holds: the table is the only description of a struct; this file only
 * turns it into code the way a protobuf code generator would, at run time).
 *
 * Why: interpreting the table field by field cost ~25% of the CPU of an event round trip in the
 * benchmark (`kvmi_event` carries 536 bytes of `kvmi_event_arch`, 60-odd scalars, on every event;
 * kvmi-abi §6). Generated code reads and writes each field at a constant offset, builds the decoded
 * object as one literal (one hidden class per layout) and checks ranges with integer tricks instead
 * of a lookup per field. Semantics are those of the interpreter it replaced: the same checks, the
 * same error text (a failing check falls back to {@link checkScalar} to throw it), padding written
 * as zero, byte fields copied out.
 */
import { KvmiArgumentError, KvmiProtocolError } from "../errors.js";
import type { Field, Layout, ScalarType } from "./layout.js";
import { SCALAR_BYTES } from "./layout.js";

/** Encodes one value of a layout at `offset` of `view` (the caller has checked the bounds). */
export type CompiledEncoder = (value: unknown, view: DataView, offset: number) => void;
/** Decodes one value of a layout at `offset` of `view` (the caller has checked the bounds). */
export type CompiledDecoder = (view: DataView, offset: number) => Record<string, unknown>;

/** The checked padding of a layout, flattened: where to look and what to call it. */
interface CheckedPad {
  readonly offset: number;
  readonly length: number;
  readonly name: string;
}

interface Compiled {
  readonly encode: CompiledEncoder;
  readonly decode: CompiledDecoder;
  readonly checkedPads: readonly CheckedPad[];
}

const cache = new WeakMap<Layout, Compiled>();

const U64_MAX = (1n << 64n) - 1n;
const S64_MIN = -(1n << 63n);
const S64_MAX = (1n << 63n) - 1n;
const INT_RANGE: Readonly<Record<"u8" | "u16" | "u32" | "s32", readonly [number, number]>> = {
  u8: [0, 0xff],
  u16: [0, 0xffff],
  u32: [0, 0xffff_ffff],
  s32: [-0x8000_0000, 0x7fff_ffff],
};

/**
 * Checks that `value` fits `type` (bigint for u64/s64, an integer number otherwise).
 * @throws KvmiArgumentError naming `path` when it does not.
 */
export function checkScalar(type: ScalarType, value: unknown, path: string): void {
  if (type === "u64" || type === "s64") {
    const [min, max] = type === "u64" ? [0n, U64_MAX] : [S64_MIN, S64_MAX];
    if (typeof value !== "bigint" || value < min || value > max) {
      throw new KvmiArgumentError(path, `${path} must be a ${type} bigint, got ${String(value)}`);
    }
    return;
  }
  const [min, max] = INT_RANGE[type];
  if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > max) {
    throw new KvmiArgumentError(path, `${path} must be a ${type} integer in [${min}, ${max}], got ${String(value)}`);
  }
}

/**
 * `value` as the JS type of `type`'s wire width, range-checked: a safe-integer `number` is accepted
 * for u64/s64 and an in-range `bigint` for the narrower types, so one value fits a field that is
 * u16 in one dialect and u64 in another (docs/decisions/0010-dialect-model.md).
 * @throws KvmiArgumentError naming `path` when the value is not an integer of that range.
 */
export function coerceScalar(type: ScalarType, value: unknown, path: string): number | bigint {
  let v = value;
  if (type === "u64" || type === "s64") {
    if (typeof v === "number" && Number.isSafeInteger(v)) v = BigInt(v);
  } else if (typeof v === "bigint") {
    const [min, max] = INT_RANGE[type];
    if (v >= BigInt(min) && v <= BigInt(max)) v = Number(v);
  }
  checkScalar(type, v, path);
  return v as number | bigint;
}

/** The compiled form of `layout`, built on first use. */
export function compiled(layout: Layout): Compiled {
  let c = cache.get(layout);
  if (c === undefined) {
    c = { encode: compileEncoder(layout), decode: compileDecoder(layout), checkedPads: flattenCheckedPads(layout, 0, "") };
    cache.set(layout, c);
  }
  return c;
}

const ACCESSOR: Readonly<Record<ScalarType, string>> = {
  u8: "Uint8",
  u16: "Uint16",
  u32: "Uint32",
  s32: "Int32",
  u64: "BigUint64",
  s64: "BigInt64",
};

/**
 * A condition that is true when `v` does NOT fit `type`: for numbers, masking/truncating to the
 * type's width changes any non-integer or out-of-range value (and NaN), so one comparison
 * replaces the integer test and both bounds.
 */
function misfit(type: ScalarType, v: string): string {
  switch (type) {
    case "u8":
      return `typeof ${v} !== "number" || (${v} & 0xff) !== ${v}`;
    case "u16":
      return `typeof ${v} !== "number" || (${v} & 0xffff) !== ${v}`;
    case "u32":
      return `typeof ${v} !== "number" || (${v} >>> 0) !== ${v}`;
    case "s32":
      return `typeof ${v} !== "number" || (${v} | 0) !== ${v}`;
    case "u64":
      return `typeof ${v} !== "bigint" || ${v} < 0n || ${v} > U64_MAX`;
    case "s64":
      return `typeof ${v} !== "bigint" || ${v} < S64_MIN || ${v} > S64_MAX`;
  }
}

const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/;

function checkedName(layout: Layout, name: string): string {
  // Names come from our own layout tables; refusing anything else keeps the generated source
  // trivially safe.
  if (!IDENTIFIER.test(name) || name === "__proto__") throw new KvmiProtocolError(`layout ${layout.name}: field name ${JSON.stringify(name)} is not an identifier`);
  return name;
}

/** Source that encodes `layout` from variable `v` at `o + base`. `path` is the JS expression of the dotted path prefix. */
function encoderSource(layout: Layout, v: string, base: number, path: string, fresh: () => string): string {
  const lines = [`if (typeof ${v} !== "object" || ${v} === null) notObject(${path === "" ? '""' : path}, ${JSON.stringify(layout.name)});`];
  for (const name in layout.fields) {
    const field = layout.fields[name]!;
    const at = base + field.offset;
    const fieldPath = path === "" ? JSON.stringify(checkedName(layout, name)) : `${path} + ${JSON.stringify(`.${checkedName(layout, name)}`)}`;
    lines.push(fieldSource(field, `${v}.${name}`, at, fieldPath, fresh));
  }
  return lines.join("\n");
}

function fieldSource(field: Field, access: string, at: number, path: string, fresh: () => string): string {
  switch (field.kind) {
    case "scalar": {
      const x = fresh();
      const le = SCALAR_BYTES[field.type] > 1 ? ", true" : "";
      return `let ${x} = ${access};
if (${misfit(field.type, x)}) ${x} = coerceScalar(${JSON.stringify(field.type)}, ${x}, ${path});
view.set${ACCESSOR[field.type]}(o + ${at}, ${x}${le});`;
    }
    case "bytes": {
      const x = fresh();
      return `const ${x} = ${access};
if (!(${x} instanceof Uint8Array) || ${x}.length > ${field.length}) tooLong(${path}, ${field.length});
putBytes(view, o + ${at}, ${x}, ${field.length});`;
    }
    case "array": {
      const x = fresh();
      const e = fresh();
      const width = SCALAR_BYTES[field.type];
      const le = width > 1 ? ", true" : "";
      return `const ${x} = ${access};
if (!Array.isArray(${x}) || ${x}.length !== ${field.count}) notArray(${path}, ${field.count}, ${JSON.stringify(field.type)});
for (let i = 0; i < ${field.count}; i++) {
  let ${e} = ${x}[i];
  if (${misfit(field.type, e)}) ${e} = coerceScalar(${JSON.stringify(field.type)}, ${e}, ${path} + "[" + i + "]");
  view.set${ACCESSOR[field.type]}(o + ${at} + i * ${width}, ${e}${le});
}`;
    }
    case "struct": {
      const x = fresh();
      return `const ${x} = ${access};\n${encoderSource(field.layout, x, at, path, fresh)}`;
    }
    case "pad":
      return field.length <= 8
        ? Array.from({ length: field.length }, (_, i) => `view.setUint8(o + ${at + i}, 0);`).join("\n")
        : `zero(view, o + ${at}, ${field.length});`;
  }
}

/** Source of an expression that decodes `layout` at `o + base`. */
function decoderSource(layout: Layout, base: number): string {
  const parts: string[] = [];
  for (const name in layout.fields) {
    const field = layout.fields[name]!;
    const at = base + field.offset;
    const key = checkedName(layout, name);
    switch (field.kind) {
      case "scalar": {
        const read = `view.get${ACCESSOR[field.type]}(o + ${at}${SCALAR_BYTES[field.type] > 1 ? ", true" : ""})`;
        parts.push(`${key}: ${field.asNumber === true ? `Number(${read})` : read}`);
        break;
      }
      case "bytes":
        parts.push(`${key}: copyBytes(view, o + ${at}, ${field.length})`);
        break;
      case "array": {
        const width = SCALAR_BYTES[field.type];
        const le = width > 1 ? ", true" : "";
        const items = Array.from({ length: field.count }, (_, i) => `view.get${ACCESSOR[field.type]}(o + ${at + i * width}${le})`);
        parts.push(`${key}: [${items.join(", ")}]`);
        break;
      }
      case "struct":
        parts.push(`${key}: ${decoderSource(field.layout, at)}`);
        break;
      case "pad":
        break;
    }
  }
  return `{ ${parts.join(", ")} }`;
}

const helpers = {
  coerceScalar,
  U64_MAX,
  S64_MIN,
  S64_MAX,
  notObject(path: string, layoutName: string): never {
    throw new KvmiArgumentError(path, `${path} must be a ${layoutName} object`);
  },
  tooLong(path: string, length: number): never {
    throw new KvmiArgumentError(path, `${path} must be at most ${length} bytes`);
  },
  notArray(path: string, count: number, type: string): never {
    throw new KvmiArgumentError(path, `${path} must be an array of ${count} ${type}`);
  },
  putBytes(view: DataView, at: number, value: Uint8Array, length: number): void {
    const target = new Uint8Array(view.buffer, view.byteOffset + at, length);
    target.set(value);
    target.fill(0, value.length);
  },
  zero(view: DataView, at: number, length: number): void {
    new Uint8Array(view.buffer, view.byteOffset + at, length).fill(0);
  },
  copyBytes(view: DataView, at: number, length: number): Uint8Array {
    return new Uint8Array(view.buffer.slice(view.byteOffset + at, view.byteOffset + at + length));
  },
};

function build<T>(layout: Layout, params: string, body: string): T {
  const names = Object.keys(helpers);
  // Generated from our own layout tables only (see checkedName); no input ever reaches the source.
  const fn = layout.name.replace(/\W/g, "_");
  // The sourceURL names the generated code in stack traces and CPU profiles (it counts as the codec).
  const source = `"use strict";\nreturn function ${fn}(${params}) {\n${body}\n};\n//# sourceURL=kvmi-codec:///kvm-bridge/src/wire/compiled/${fn}.js`;
  const factory = new Function(...names, source);
  return factory(...names.map((n) => helpers[n as keyof typeof helpers])) as T;
}

function compileEncoder(layout: Layout): CompiledEncoder {
  let n = 0;
  const fresh = (): string => `v${n++}`;
  return build(layout, "value, view, o", encoderSource(layout, "value", 0, "", fresh));
}

function compileDecoder(layout: Layout): CompiledDecoder {
  return build(layout, "view, o", `return ${decoderSource(layout, 0)};`);
}

function flattenCheckedPads(layout: Layout, base: number, prefix: string): CheckedPad[] {
  const out: CheckedPad[] = [];
  for (const name in layout.fields) {
    const field = layout.fields[name]!;
    if (field.kind === "pad" && field.checked) out.push({ offset: base + field.offset, length: field.length, name: prefix + name });
    else if (field.kind === "struct") out.push(...flattenCheckedPads(field.layout, base + field.offset, `${prefix}${name}.`));
  }
  return out;
}
