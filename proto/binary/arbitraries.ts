// SPDX-License-Identifier: Apache-2.0
/**
 * fast-check arbitraries derived from protobuf-es descriptors, for the codec's differential tests:
 * any message of any schema, so a field added to a .proto is covered as soon as it is generated.
 */
import { create, ScalarType } from "@bufbuild/protobuf";
import type { DescField, DescMessage, Message } from "@bufbuild/protobuf";
import fc from "fast-check";

const U64_MAX = (1n << 64n) - 1n;
const I64_MIN = -(1n << 63n);
const I64_MAX = (1n << 63n) - 1n;

export interface MessageArbOptions {
  /** Strings of any code points (else ASCII only, which the generated decoder reads itself). */
  readonly unicode?: boolean;
  /** How deep message fields nest before they stay unset. */
  readonly depth?: number;
}

/** Values of one scalar type, zero and the extremes among them. */
export function scalarArb(t: ScalarType, unicode: boolean): fc.Arbitrary<unknown> {
  switch (t) {
    case ScalarType.INT32:
    case ScalarType.SINT32:
    case ScalarType.SFIXED32:
      return fc.oneof(fc.constantFrom(0, -1, 0x7fff_ffff, -0x8000_0000), fc.integer());
    case ScalarType.UINT32:
    case ScalarType.FIXED32:
      return fc.oneof(fc.constantFrom(0, 0xffff_ffff, 0x7f, 0x80), fc.integer({ min: 0, max: 0xffff_ffff }));
    case ScalarType.UINT64:
    case ScalarType.FIXED64:
      return fc.oneof(fc.constantFrom(0n, U64_MAX, 0x7fn, 0x80n, 0xffff_ffffn, 0x1_0000_0000n, 0xffff_ffff_8100_0000n), fc.bigInt({ min: 0n, max: U64_MAX }));
    case ScalarType.INT64:
    case ScalarType.SINT64:
    case ScalarType.SFIXED64:
      return fc.oneof(fc.constantFrom(0n, -1n, I64_MIN, I64_MAX), fc.bigInt({ min: I64_MIN, max: I64_MAX }));
    case ScalarType.BOOL:
      return fc.boolean();
    case ScalarType.STRING:
      return unicode ? fc.string({ unit: "grapheme", maxLength: 12 }) : fc.string({ maxLength: 80 });
    case ScalarType.BYTES:
      return fc.uint8Array({ maxLength: 40 });
    case ScalarType.DOUBLE:
      return fc.oneof(fc.constantFrom(0, -0, Infinity, NaN), fc.double());
    case ScalarType.FLOAT:
      return fc.oneof(fc.constantFrom(0, -0, -Infinity), fc.float());
  }
}

function valueArb(f: DescField, options: Required<MessageArbOptions>): fc.Arbitrary<unknown> | undefined {
  const kind = f.fieldKind === "list" ? f.listKind : f.fieldKind;
  if (kind === "message") {
    if (options.depth <= 0) return undefined;
    return messageArb(f.message!, { ...options, depth: options.depth - 1 });
  }
  if (kind === "enum") {
    const values = f.enum!.values.map((v) => v.number);
    // Open enums keep numbers they do not name.
    return fc.oneof(fc.constantFrom(...values), fc.integer({ min: -5, max: 1000 }));
  }
  return scalarArb(f.scalar!, options.unicode);
}

/** Any message of `desc`, built with protobuf-es's create(). */
export function messageArb<Desc extends DescMessage>(desc: Desc, options: MessageArbOptions = {}): fc.Arbitrary<Message> {
  const opts = { unicode: options.unicode ?? false, depth: options.depth ?? 3 };
  const parts: Record<string, fc.Arbitrary<unknown>> = {};
  for (const member of desc.members) {
    if (member.kind === "oneof") {
      const cases = member.fields.flatMap((f) => {
        const v = valueArb(f, opts);
        return v === undefined ? [] : [v.map((value) => ({ case: f.localName, value }))];
      });
      parts[member.localName] = fc.oneof(fc.constant({ case: undefined }), ...cases);
      continue;
    }
    const v = valueArb(member, opts);
    if (v === undefined) continue;
    if (member.fieldKind === "list") parts[member.localName] = fc.array(v, { maxLength: 4 });
    else parts[member.localName] = fc.option(v, { nil: undefined, freq: 3 });
  }
  return fc.record(parts, { requiredKeys: [] }).map((init) => create(desc, init as never) as Message);
}
