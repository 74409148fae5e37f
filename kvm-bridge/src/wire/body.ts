// SPDX-License-Identifier: Apache-2.0
/**
 * Bodies: a fixed layout plus an optional variable tail (`u32 msrs_idx[nmsrs]`, page-access
 * entries, `u8 data[size]`). Sizes and counts come from the {@link BodySchema}; nothing is hand-offset.
 */
import { KvmiArgumentError, KvmiProtocolError } from "../errors.js";
import { coerceScalar, decodeFrom, encodeInto, findNonZeroPadding, readScalar, writeScalar } from "./codec.js";
import type { BodySchema, TailSpec } from "./dialect.js";
import type { Layout, LayoutValue } from "./layout.js";
import { SCALAR_BYTES } from "./layout.js";

type AnyValue = Record<string, unknown>;

/** Bytes of one tail element. */
export function tailElementBytes(tail: TailSpec): number {
  if (tail.element === "bytes") return 1;
  if (typeof tail.element === "string") return SCALAR_BYTES[tail.element];
  return tail.element.size;
}

function tailCount(tail: TailSpec, value: AnyValue): number {
  const items = value[tail.name];
  if (tail.element === "bytes") {
    if (!(items instanceof Uint8Array)) throw new KvmiArgumentError(tail.name, `${tail.name} must be a Uint8Array`);
    return items.length;
  }
  if (!Array.isArray(items)) throw new KvmiArgumentError(tail.name, `${tail.name} must be an array`);
  return items.length;
}

function getPath(value: AnyValue, path: string): unknown {
  let node: unknown = value;
  for (const key of path.split(".")) node = (node as AnyValue | undefined)?.[key];
  return node;
}

/** A copy of `value` with the field at dotted `path` set; only the objects on the path are copied. */
function withPath(value: AnyValue, path: string, fieldValue: number): AnyValue {
  const dot = path.indexOf(".");
  if (dot < 0) return { ...value, [path]: fieldValue };
  const head = path.slice(0, dot);
  return { ...value, [head]: withPath((value[head] ?? {}) as AnyValue, path.slice(dot + 1), fieldValue) };
}

/** Total encoded bytes of `value` under `schema`. */
export function bodyBytes(schema: BodySchema, value: AnyValue): number {
  const fixed = schema.layout?.size ?? 0;
  return schema.tail === undefined ? fixed : fixed + tailCount(schema.tail, value) * tailElementBytes(schema.tail);
}

/**
 * Encodes a body at `offset` of `view`. The tail's count field is written from the tail itself,
 * so a caller can never send a count that disagrees with the data.
 * @throws KvmiArgumentError on out-of-range fields or a tail longer than `maxCount`.
 */
export function encodeBodyInto(schema: BodySchema, value: AnyValue, view: DataView, offset: number): number {
  let fixedValue = value;
  const tail = schema.tail;
  let count = 0;
  if (tail !== undefined) {
    count = tailCount(tail, value);
    if (tail.maxCount !== undefined && count > tail.maxCount) {
      throw new KvmiArgumentError(tail.name, `${tail.name} has ${count} elements, at most ${tail.maxCount} allowed`);
    }
    if (tail.countField !== undefined) fixedValue = withPath(value, tail.countField, count);
  }
  let at = offset;
  if (schema.layout !== null) {
    encodeInto(schema.layout, fixedValue as LayoutValue<Layout>, view, at);
    at += schema.layout.size;
  }
  if (tail === undefined) return at - offset;
  const items = value[tail.name];
  if (tail.element === "bytes") {
    new Uint8Array(view.buffer, view.byteOffset + at, count).set(items as Uint8Array);
    return at + count - offset;
  }
  const list = items as unknown[];
  if (typeof tail.element === "string") {
    const type = tail.element;
    const width = SCALAR_BYTES[type];
    for (let i = 0; i < count; i++) {
      writeScalar(view, at + i * width, type, coerceScalar(type, list[i], `${tail.name}[${i}]`));
    }
    return at + count * width - offset;
  }
  const element = tail.element;
  for (let i = 0; i < count; i++) {
    encodeInto(element, list[i] as LayoutValue<Layout>, view, at + i * element.size);
  }
  return at + count * element.size - offset;
}

/** Options for {@link decodeBody}. */
export interface DecodeBodyOptions {
  /**
   * Treat a body shorter than the fixed layout as zero-extended. This is the v9 kernel's rule for
   * fixed-size requests (kvmi-abi §2.7: the receive buffer is zero-filled); replies are never short.
   */
  readonly zeroExtendFixed?: boolean;
}

/** A decoded body plus what the receiver must check before trusting it. */
export interface DecodedBody {
  readonly value: AnyValue;
  /** Dotted name of the first kernel-checked padding field that is non-zero, if any. */
  readonly nonZeroPadding: string | undefined;
  /** Bytes past the fixed part and the declared tail (ignored by v9 for fixed-size requests). */
  readonly extraBytes: number;
}

/**
 * Decodes a body that starts at `offset` and spans `length` bytes of `view`.
 * @throws KvmiProtocolError when the fixed part (unless zero-extended) or the declared tail is truncated.
 */
export function decodeBody(
  schema: BodySchema,
  view: DataView,
  offset: number,
  length: number,
  options: DecodeBodyOptions = {},
): DecodedBody {
  const layout = schema.layout;
  let fixed: AnyValue = {};
  let nonZeroPadding: string | undefined;
  let at = offset;
  if (layout !== null) {
    let source = view;
    let sourceOffset = offset;
    if (length < layout.size) {
      if (options.zeroExtendFixed !== true) {
        throw new KvmiProtocolError(`truncated ${layout.name}: ${length} of ${layout.size} bytes`);
      }
      const padded = new Uint8Array(layout.size);
      // Clamp to the view: a short body may end before `offset` itself.
      const present = Math.max(0, Math.min(length, view.byteLength - offset));
      if (present > 0) padded.set(new Uint8Array(view.buffer, view.byteOffset + offset, present));
      source = new DataView(padded.buffer);
      sourceOffset = 0;
    }
    fixed = decodeFrom(layout, source, sourceOffset) as AnyValue;
    nonZeroPadding = findNonZeroPadding(layout, source, sourceOffset);
    at += layout.size;
  }
  const end = offset + length;
  const tail = schema.tail;
  if (tail === undefined) return { value: fixed, nonZeroPadding, extraBytes: Math.max(0, end - at) };

  const width = tailElementBytes(tail);
  const available = Math.max(0, end - at);
  let count: number;
  if (tail.countField !== undefined) {
    count = Number(getPath(fixed, tail.countField));
    if (count * width > available) {
      throw new KvmiProtocolError(
        `truncated ${tail.name}: ${tail.countField} = ${count} needs ${count * width} bytes, ${available} present`,
      );
    }
  } else {
    count = Math.floor(available / width);
  }
  let items: unknown;
  if (tail.element === "bytes") {
    items = count === 0 ? new Uint8Array(0) : new Uint8Array(view.buffer, view.byteOffset + at, count);
  } else if (typeof tail.element === "string") {
    const type = tail.element;
    const list: Array<number | bigint> = new Array(count);
    for (let i = 0; i < count; i++) list[i] = readScalar(view, at + i * width, type);
    items = list;
  } else {
    const element = tail.element;
    const list: AnyValue[] = new Array(count);
    for (let i = 0; i < count; i++) {
      list[i] = decodeFrom(element, view, at + i * width) as AnyValue;
      nonZeroPadding ??= prefixed(`${tail.name}[${i}].`, findNonZeroPadding(element, view, at + i * width));
    }
    items = list;
  }
  // `fixed` is a fresh object (the decoder's literal or {}): add the tail to it rather than
  // spreading it into another one, as this runs for every page read.
  (fixed as Record<string, unknown>)[tail.name] = items;
  return { value: fixed, nonZeroPadding, extraBytes: end - (at + count * width) };
}

function prefixed(prefix: string, name: string | undefined): string | undefined {
  return name === undefined ? undefined : prefix + name;
}
