// SPDX-License-Identifier: Apache-2.0
/**
 * The codec without generated code: walks a layout table field by field. `compile.ts` uses it where
 * code generation from strings is disallowed (a CSP without 'unsafe-eval', `node
 * --disallow-code-generation-from-strings`); it has the generated code's semantics (same checks,
 * same error texts through the shared helpers, padding written as zero, byte fields copied out), and
 * the layout and message property tests run against both (test/contract/layout-roundtrip.test.ts).
 */
import type { CompiledDecoder, CompiledEncoder } from "./compile.js";
import { codecHelpers, coerceScalar } from "./compile.js";
import type { Field, Layout, ScalarType } from "./layout.js";
import { SCALAR_BYTES } from "./layout.js";

function write(view: DataView, at: number, type: ScalarType, value: number | bigint): void {
  switch (type) {
    case "u8":
      return view.setUint8(at, value as number);
    case "u16":
      return view.setUint16(at, value as number, true);
    case "u32":
      return view.setUint32(at, value as number, true);
    case "s32":
      return view.setInt32(at, value as number, true);
    case "u64":
      return view.setBigUint64(at, value as bigint, true);
    case "s64":
      return view.setBigInt64(at, value as bigint, true);
  }
}

function read(view: DataView, at: number, type: ScalarType): number | bigint {
  switch (type) {
    case "u8":
      return view.getUint8(at);
    case "u16":
      return view.getUint16(at, true);
    case "u32":
      return view.getUint32(at, true);
    case "s32":
      return view.getInt32(at, true);
    case "u64":
      return view.getBigUint64(at, true);
    case "s64":
      return view.getBigInt64(at, true);
  }
}

function encodeLayout(layout: Layout, value: unknown, view: DataView, base: number, path: string): void {
  if (typeof value !== "object" || value === null) codecHelpers.notObject(path, layout.name);
  const object = value as Record<string, unknown>;
  for (const name in layout.fields) {
    const field = layout.fields[name]!;
    encodeField(field, object[name], view, base + field.offset, path === "" ? name : `${path}.${name}`);
  }
}

function encodeField(field: Field, value: unknown, view: DataView, at: number, path: string): void {
  switch (field.kind) {
    case "scalar":
      write(view, at, field.type, coerceScalar(field.type, value, path));
      return;
    case "bytes":
      if (!(value instanceof Uint8Array) || value.length > field.length) codecHelpers.tooLong(path, field.length);
      codecHelpers.putBytes(view, at, value as Uint8Array, field.length);
      return;
    case "array": {
      if (!Array.isArray(value) || value.length !== field.count) codecHelpers.notArray(path, field.count, field.type);
      const width = SCALAR_BYTES[field.type];
      const items = value as unknown[];
      for (let i = 0; i < field.count; i++) write(view, at + i * width, field.type, coerceScalar(field.type, items[i], `${path}[${i}]`));
      return;
    }
    case "struct":
      encodeLayout(field.layout, value, view, at, path);
      return;
    case "pad":
      codecHelpers.zero(view, at, field.length);
      return;
  }
}

function decodeLayout(layout: Layout, view: DataView, base: number): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const name in layout.fields) {
    const field = layout.fields[name]!;
    const at = base + field.offset;
    switch (field.kind) {
      case "scalar": {
        const v = read(view, at, field.type);
        out[name] = field.asNumber === true ? Number(v) : v;
        break;
      }
      case "bytes":
        out[name] = codecHelpers.copyBytes(view, at, field.length);
        break;
      case "array": {
        const width = SCALAR_BYTES[field.type];
        out[name] = Array.from({ length: field.count }, (_, i) => read(view, at + i * width, field.type));
        break;
      }
      case "struct":
        out[name] = decodeLayout(field.layout, view, at);
        break;
      case "pad":
        break;
    }
  }
  return out;
}

/** The interpreter's encoder of `layout`. */
export function interpretedEncoder(layout: Layout): CompiledEncoder {
  return (value, view, offset) => encodeLayout(layout, value, view, offset, "");
}

/** The interpreter's decoder of `layout`. */
export function interpretedDecoder(layout: Layout): CompiledDecoder {
  return (view, offset) => decodeLayout(layout, view, offset);
}
