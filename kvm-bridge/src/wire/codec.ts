// SPDX-License-Identifier: Apache-2.0
/**
 * The generic encoder and decoder, driven only by layout tables (conventions §4). DataView with an
 * explicit little-endian flag everywhere: the KVMI ABI is host-native and x86_64 is little-endian
 * (kvmi-abi "Conventions"). Nothing here knows a struct by name.
 */
import { KvmiArgumentError, KvmiProtocolError } from "../errors.js";
import type { Field, Layout, LayoutValue, ScalarType } from "./layout.js";
import { SCALAR_BYTES } from "./layout.js";

const LE = true;
const U64_MAX = (1n << 64n) - 1n;
const S64_MIN = -(1n << 63n);
const S64_MAX = (1n << 63n) - 1n;
const INT_RANGE: Readonly<Record<"u8" | "u16" | "u32" | "s32", readonly [number, number]>> = {
  u8: [0, 0xff],
  u16: [0, 0xffff],
  u32: [0, 0xffff_ffff],
  s32: [-0x8000_0000, 0x7fff_ffff],
};

/** A DataView over exactly the bytes of `buf`, whatever its offset in its ArrayBuffer. */
export function viewOf(buf: Uint8Array): DataView {
  return new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
}

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

/** Writes one scalar. The caller has range-checked it. */
export function writeScalar(view: DataView, at: number, type: ScalarType, value: number | bigint): void {
  switch (type) {
    case "u8":
      view.setUint8(at, value as number);
      return;
    case "u16":
      view.setUint16(at, value as number, LE);
      return;
    case "u32":
      view.setUint32(at, value as number, LE);
      return;
    case "s32":
      view.setInt32(at, value as number, LE);
      return;
    case "u64":
      view.setBigUint64(at, value as bigint, LE);
      return;
    case "s64":
      view.setBigInt64(at, value as bigint, LE);
      return;
  }
}

/** Reads one scalar. */
export function readScalar(view: DataView, at: number, type: ScalarType): number | bigint {
  switch (type) {
    case "u8":
      return view.getUint8(at);
    case "u16":
      return view.getUint16(at, LE);
    case "u32":
      return view.getUint32(at, LE);
    case "s32":
      return view.getInt32(at, LE);
    case "u64":
      return view.getBigUint64(at, LE);
    case "s64":
      return view.getBigInt64(at, LE);
  }
}

function encodeField(field: Field, value: unknown, view: DataView, base: number, path: string): void {
  const at = base + field.offset;
  switch (field.kind) {
    case "scalar":
      checkScalar(field.type, value, path);
      writeScalar(view, at, field.type, value as number | bigint);
      return;
    case "bytes": {
      if (!(value instanceof Uint8Array) || value.length > field.length) {
        throw new KvmiArgumentError(path, `${path} must be at most ${field.length} bytes`);
      }
      const target = new Uint8Array(view.buffer, view.byteOffset + at, field.length);
      target.set(value);
      target.fill(0, value.length);
      return;
    }
    case "array": {
      if (!Array.isArray(value) || value.length !== field.count) {
        throw new KvmiArgumentError(path, `${path} must be an array of ${field.count} ${field.type}`);
      }
      const width = SCALAR_BYTES[field.type];
      for (let i = 0; i < field.count; i++) {
        checkScalar(field.type, value[i], `${path}[${i}]`);
        writeScalar(view, at + i * width, field.type, value[i] as number | bigint);
      }
      return;
    }
    case "struct":
      encodeLayoutInto(field.layout, value, view, at, path);
      return;
    case "pad":
      for (let i = 0; i < field.length; i++) view.setUint8(at + i, 0);
      return;
  }
}

function encodeLayoutInto(layout: Layout, value: unknown, view: DataView, offset: number, path: string): void {
  if (typeof value !== "object" || value === null) {
    throw new KvmiArgumentError(path, `${path} must be a ${layout.name} object`);
  }
  const record = value as Record<string, unknown>;
  for (const name in layout.fields) {
    encodeField(layout.fields[name]!, record[name], view, offset, path === "" ? name : `${path}.${name}`);
  }
}

/**
 * Encodes `value` as `layout` at `offset` of `view`, padding as zero.
 * @throws KvmiArgumentError when a field is missing or out of range for its wire type.
 */
export function encodeInto<L extends Layout>(layout: L, value: LayoutValue<L>, view: DataView, offset = 0): void {
  if (offset < 0 || offset + layout.size > view.byteLength) {
    throw new RangeError(`${layout.name} needs ${layout.size} bytes at ${offset}, view has ${view.byteLength}`);
  }
  encodeLayoutInto(layout, value, view, offset, "");
}

/** Encodes `value` into a fresh buffer of exactly `layout.size` bytes. */
export function encode<L extends Layout>(layout: L, value: LayoutValue<L>): Uint8Array {
  const out = new Uint8Array(layout.size);
  encodeInto(layout, value, viewOf(out), 0);
  return out;
}

function decodeField(field: Field, view: DataView, base: number): unknown {
  const at = base + field.offset;
  switch (field.kind) {
    case "scalar":
      return readScalar(view, at, field.type);
    case "bytes":
      return new Uint8Array(view.buffer.slice(view.byteOffset + at, view.byteOffset + at + field.length));
    case "array": {
      const width = SCALAR_BYTES[field.type];
      const out: Array<number | bigint> = new Array(field.count);
      for (let i = 0; i < field.count; i++) out[i] = readScalar(view, at + i * width, field.type);
      return out;
    }
    case "struct":
      return decodeLayoutFrom(field.layout, view, at);
    case "pad":
      return undefined;
  }
}

function decodeLayoutFrom(layout: Layout, view: DataView, offset: number): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const name in layout.fields) {
    const field = layout.fields[name]!;
    if (field.kind !== "pad") out[name] = decodeField(field, view, offset);
  }
  return out;
}

/**
 * Decodes `layout` at `offset` of `view`. Padding is ignored (see {@link findNonZeroPadding}).
 * @throws KvmiProtocolError when fewer than `layout.size` bytes are available.
 */
export function decodeFrom<L extends Layout>(layout: L, view: DataView, offset = 0): LayoutValue<L> {
  if (offset < 0 || offset + layout.size > view.byteLength) {
    throw new KvmiProtocolError(
      `truncated ${layout.name}: need ${layout.size} bytes at offset ${offset}, have ${view.byteLength - offset}`,
    );
  }
  return decodeLayoutFrom(layout, view, offset) as LayoutValue<L>;
}

/** Decodes `layout` from the start of `buf`. */
export function decode<L extends Layout>(layout: L, buf: Uint8Array, offset = 0): LayoutValue<L> {
  return decodeFrom(layout, viewOf(buf), offset);
}

/**
 * Returns the dotted name of the first checked padding field holding a non-zero byte, or
 * `undefined`. This is the v9 kernel's "padding must be zero" rule (kvmi-abi "Conventions", §7 EINVAL).
 */
export function findNonZeroPadding(layout: Layout, view: DataView, offset = 0, prefix = ""): string | undefined {
  for (const name in layout.fields) {
    const field = layout.fields[name]!;
    const at = offset + field.offset;
    if (field.kind === "pad" && field.checked) {
      for (let i = 0; i < field.length; i++) {
        if (view.getUint8(at + i) !== 0) return prefix + name;
      }
    } else if (field.kind === "struct") {
      const inner = findNonZeroPadding(field.layout, view, at, `${prefix}${name}.`);
      if (inner !== undefined) return inner;
    }
  }
  return undefined;
}

/** A zero-filled value of `layout`: every integer 0, every byte array zeroed. */
export function zeroValue<L extends Layout>(layout: L): LayoutValue<L> {
  return decode(layout, new Uint8Array(layout.size));
}
