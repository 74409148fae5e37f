// SPDX-License-Identifier: Apache-2.0
/**
 * The generic encoder and decoder, driven only by layout tables (conventions §4), compiled per
 * layout on first use (compile.ts). DataView with an explicit little-endian flag everywhere: the
 * KVMI ABI is host-native and x86_64 is little-endian (kvmi-abi "Conventions"). Nothing here knows
 * a struct by name.
 */
import { KvmiArgumentError, KvmiProtocolError } from "../errors.js";
import { compiled } from "./compile.js";
import type { Layout, LayoutValue, ScalarType } from "./layout.js";

export { checkScalar, coerceScalar } from "./compile.js";

const LE = true;

/** A DataView over exactly the bytes of `buf`, whatever its offset in its ArrayBuffer. */
export function viewOf(buf: Uint8Array): DataView {
  return new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
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

/**
 * Encodes `value` as `layout` at `offset` of `view`, padding as zero.
 * @throws KvmiArgumentError when a field is missing or out of range for its wire type, or when
 *   `view` has no room for the layout at `offset`.
 */
export function encodeInto<L extends Layout>(layout: L, value: LayoutValue<L>, view: DataView, offset = 0): void {
  if (offset < 0 || offset + layout.size > view.byteLength) {
    throw new KvmiArgumentError("offset", `${layout.name} needs ${layout.size} bytes at ${offset}, view has ${view.byteLength}`);
  }
  compiled(layout).encode(value, view, offset);
}

/** Encodes `value` into a fresh buffer of exactly `layout.size` bytes. */
export function encode<L extends Layout>(layout: L, value: LayoutValue<L>): Uint8Array {
  const out = new Uint8Array(layout.size);
  encodeInto(layout, value, viewOf(out), 0);
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
  return compiled(layout).decode(view, offset) as LayoutValue<L>;
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
  for (const pad of compiled(layout).checkedPads) {
    for (let i = 0; i < pad.length; i++) {
      if (view.getUint8(offset + pad.offset + i) !== 0) return prefix + pad.name;
    }
  }
  return undefined;
}

/** A zero-filled value of `layout`: every integer 0, every byte array zeroed. */
export function zeroValue<L extends Layout>(layout: L): LayoutValue<L> {
  return decode(layout, new Uint8Array(layout.size));
}

/**
 * `value` completed with zero for every field `layout` declares and `value` lacks, nested structs
 * too, so that a value written for one dialect's layout encodes in another's that has more fields
 * (kvmi-v7's `view`, v12's `max_msg_size`, the 272-byte PF reply). Returns `value` itself when
 * nothing is missing; other keys are kept (the encoder reads only the layout's).
 */
export function withZeroDefaults(layout: Layout | null, value: Readonly<Record<string, unknown>>): Record<string, unknown> {
  if (layout === null) return value as Record<string, unknown>;
  let out: Record<string, unknown> | undefined;
  let zeros: Record<string, unknown> | undefined;
  for (const [key, field] of Object.entries(layout.fields)) {
    if (field.kind === "pad") continue;
    const given = value[key];
    if (given === undefined) {
      zeros ??= zeroValue(layout) as Record<string, unknown>;
      (out ??= { ...value })[key] = zeros[key];
    } else if (field.kind === "struct") {
      const nested = withZeroDefaults(field.layout, given as Record<string, unknown>);
      if (nested !== given) (out ??= { ...value })[key] = nested;
    }
  }
  return out ?? (value as Record<string, unknown>);
}
