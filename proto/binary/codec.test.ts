// SPDX-License-Identifier: Apache-2.0
/**
 * The generated codec against protobuf-es, differentially: for every message of the API (and a
 * test schema with every scalar type in every cardinality), random messages encode to the bytes of
 * `toBinary` and decode to the messages of `fromBinary` without falling back; damaged bytes and
 * values protobuf-es converts or rejects give protobuf-es's own result or error.
 */
import { execFileSync } from "node:child_process";
import { create, createFileRegistry, fromBinary, ScalarType, toBinary } from "@bufbuild/protobuf";
import type { DescField, DescMessage, Message } from "@bufbuild/protobuf";
import { FieldDescriptorProto_Label, FieldDescriptorProto_Type, FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import * as api from "../index.js";
import { binaryCodec, fallbackCount } from "./index.js";

// Arbitraries from the descriptors: any message of any schema, so a field added to a .proto is
// covered as soon as it is generated.
const U64_MAX = (1n << 64n) - 1n;
const I64_MIN = -(1n << 63n);
const I64_MAX = (1n << 63n) - 1n;

interface MessageArbOptions {
  /** Strings of any code points (else ASCII only, which the generated decoder reads itself). */
  readonly unicode?: boolean;
  /** How deep message fields nest before they stay unset. */
  readonly depth?: number;
}

/** Values of one scalar type, zero and the extremes among them. */
function scalarArb(t: ScalarType, unicode: boolean): fc.Arbitrary<unknown> {
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
function messageArb<Desc extends DescMessage>(desc: Desc, options: MessageArbOptions = {}): fc.Arbitrary<Message> {
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

const API_MESSAGES = (Object.values(api) as unknown[]).filter((v): v is DescMessage => typeof v === "object" && v !== null && (v as { kind?: string }).kind === "message");

/** A proto3 schema with each scalar type singular, optional, repeated and in a oneof. */
function allScalarsSchema(): DescMessage {
  const types = Object.values(ScalarType).filter((t): t is ScalarType => typeof t === "number");
  let no = 1;
  const fields = types.flatMap((t) => {
    const type = t as unknown as FieldDescriptorProto_Type;
    const base = `f${ScalarType[t].toLowerCase()}`;
    return [
      { name: `${base}_one`, number: no++, type, label: FieldDescriptorProto_Label.OPTIONAL },
      { name: `${base}_opt`, number: no++, type, label: FieldDescriptorProto_Label.OPTIONAL, proto3Optional: true, oneofIndex: 0 },
      { name: `${base}_list`, number: no++, type, label: FieldDescriptorProto_Label.REPEATED },
      { name: `${base}_choice`, number: 1000 + no++, type, label: FieldDescriptorProto_Label.OPTIONAL, oneofIndex: 1 },
    ];
  });
  // Synthetic oneofs of proto3 `optional` fields come first; one per optional field.
  const optionals = fields.filter((f) => f.proto3Optional);
  optionals.forEach((f, i) => (f.oneofIndex = i));
  fields.filter((f) => f.oneofIndex === 1 && !f.proto3Optional).forEach((f) => (f.oneofIndex = optionals.length));
  fields.push({ name: "child", number: 900, type: FieldDescriptorProto_Type.MESSAGE, label: FieldDescriptorProto_Label.OPTIONAL, typeName: ".test.AllScalars" } as never);
  fields.push({ name: "children", number: 901, type: FieldDescriptorProto_Type.MESSAGE, label: FieldDescriptorProto_Label.REPEATED, typeName: ".test.AllScalars" } as never);
  const file = create(FileDescriptorProtoSchema, {
    name: "test/all_scalars.proto",
    package: "test",
    syntax: "proto3",
    messageType: [
      {
        name: "AllScalars",
        field: fields,
        oneofDecl: [...optionals.map((f) => ({ name: `_${f.name}` })), { name: "choice" }],
      },
    ],
  });
  return createFileRegistry(file, () => undefined).getMessage("test.AllScalars")!;
}

const ALL_SCALARS = allScalarsSchema();

function roundTrips(desc: DescMessage, unicode: boolean): void {
  const codec = binaryCodec(desc);
  fc.assert(
    fc.property(messageArb(desc, { unicode, depth: desc === ALL_SCALARS ? 2 : 3 }), (message: Message) => {
      const before = fallbackCount();
      const expected = toBinary(desc, message);
      const bytes = codec.encode(message as never);
      expect(Buffer.from(bytes).equals(Buffer.from(expected))).toBe(true);
      const decoded = codec.decode(expected);
      expect(decoded).toEqual(fromBinary(desc, expected));
      // ASCII strings: the generated code did all of it (non-ASCII strings decode through protobuf-es).
      if (!unicode) expect(fallbackCount()).toBe(before);
    }),
    { numRuns: desc === ALL_SCALARS ? 400 : 40 },
  );
}

describe("generated codec", () => {
  it("generates code for the API's messages and the test schema", () => {
    const generated = API_MESSAGES.filter((d) => binaryCodec(d).generated).map((d) => d.typeName);
    for (const name of ["kvmi.v1.SessionResponse", "kvmi.v1.SessionRequest", "kvmi.v1.Event", "kvmi.v1.ReadPhysicalMemoryResponse", "google.rpc.Status"]) {
      expect(generated).toContain(name);
    }
    expect(binaryCodec(ALL_SCALARS).generated).toBe(true);
  });

  it("leaves schemas with map fields to protobuf-es", () => {
    expect(binaryCodec(api.ErrorInfoSchema).generated).toBe(false);
    const info = create(api.ErrorInfoSchema, { reason: "R", domain: "d", metadata: { a: "1", b: "2" } });
    const bytes = binaryCodec(api.ErrorInfoSchema).encode(info);
    expect(bytes).toEqual(toBinary(api.ErrorInfoSchema, info));
    expect(binaryCodec(api.ErrorInfoSchema).decode(bytes)).toEqual(info);
  });

  it("encodes and decodes every scalar type like protobuf-es", () => roundTrips(ALL_SCALARS, false));
  it("decodes non-ASCII strings like protobuf-es", () => roundTrips(ALL_SCALARS, true));

  it.each(API_MESSAGES.map((d) => [d.typeName, d] as const))("%s: the bytes and messages of protobuf-es", (_name, desc) => {
    roundTrips(desc, false);
  });

  it("gives protobuf-es's result or error for damaged bytes", () => {
    const desc = api.SessionResponseSchema;
    const codec = binaryCodec(desc);
    const damaged = fc.tuple(messageArb(desc), fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 4 }), fc.nat());
    fc.assert(
      fc.property(damaged, ([message, edits, cut]) => {
        const bytes = toBinary(desc, message as never).slice();
        for (const [at, value] of edits) if (bytes.length > 0) bytes[at % bytes.length] = value;
        const input = bytes.subarray(0, bytes.length === 0 ? 0 : cut % (bytes.length + 1));
        const outcome = (decode: () => unknown): unknown => {
          try {
            return { ok: decode() };
          } catch (err) {
            return { error: String(err) };
          }
        };
        expect(outcome(() => codec.decode(input))).toEqual(outcome(() => fromBinary(desc, input)));
      }),
      { numRuns: 500 },
    );
  });

  it("leaves values protobuf-es converts or rejects to it", () => {
    const codec = binaryCodec(api.RegsSchema);
    // A number in a uint64 field: protobuf-es converts it.
    const converted = { ...create(api.RegsSchema), rax: 5 } as never;
    expect(codec.encode(converted)).toEqual(toBinary(api.RegsSchema, converted));
    // Out of range: protobuf-es's own error.
    const negative = { ...create(api.RegsSchema), rax: -1n } as never;
    expect(() => codec.encode(negative)).toThrow(/invalid uint64/);
    const vcpu = { ...create(api.EventSchema), vcpu: 2 ** 32 } as never;
    expect(() => binaryCodec(api.EventSchema).encode(vcpu)).toThrow(/invalid uint32/);
    // A message of another type in a message field.
    const foreign = { ...create(api.EventArchSchema), regs: create(api.SregsSchema) } as never;
    expect(() => toBinary(api.EventArchSchema, foreign)).toThrow(/cannot use/);
    expect(() => binaryCodec(api.EventArchSchema).encode(foreign)).toThrow(/cannot use/);
  });

  it("writes strings as TextEncoder does, lone surrogates and astral code points included", () => {
    const codec = binaryCodec(api.EventSchema);
    for (const name of ["vms/é/vcpus/0", "\ud800", "a\udc00b", "😀x", "\ud83d", "€".repeat(70), "x".repeat(300)]) {
      const message = create(api.EventSchema, { name });
      const before = fallbackCount();
      expect(Buffer.from(codec.encode(message)).equals(Buffer.from(toBinary(api.EventSchema, message)))).toBe(true);
      expect(fallbackCount()).toBe(before);
    }
  });

  it("encodes messages with more 64-bit values than its scratch first holds", () => {
    const codec = binaryCodec(ALL_SCALARS);
    const many = Array.from({ length: 20_000 }, (_, i) => (BigInt(i) << 40n) | BigInt(i));
    const message = create(ALL_SCALARS, { fuint64List: many, fint64List: many.map((v) => -v), children: [{ fsint64List: many }] } as never);
    const before = fallbackCount();
    expect(Buffer.from(codec.encode(message as never)).equals(Buffer.from(toBinary(ALL_SCALARS, message)))).toBe(true);
    // The scratch shrank back after that one; the next message grows it again as needed.
    const next = create(ALL_SCALARS, { fuint64List: many.slice(0, 500), fint64One: -5n } as never);
    expect(Buffer.from(codec.encode(next as never)).equals(Buffer.from(toBinary(ALL_SCALARS, next)))).toBe(true);
    expect(fallbackCount()).toBe(before);
  });

  it("serves protobuf-es where code cannot be generated from strings", () => {
    const script = `
      import { create, toBinary } from "@bufbuild/protobuf";
      import { EventSchema } from "@kvmi/proto";
      import { binaryCodec } from "@kvmi/proto/binary";
      const codec = binaryCodec(EventSchema);
      const message = create(EventSchema, { name: "vms/a/vcpus/1", vcpu: 1, arch: { regs: { rip: 5n } } });
      const bytes = toBinary(EventSchema, message);
      console.log(JSON.stringify({ generated: codec.generated, same: Buffer.from(codec.encode(message)).equals(Buffer.from(bytes)), rip: String(codec.decode(bytes).arch.regs.rip) }));`;
    const out = execFileSync(process.execPath, ["--disallow-code-generation-from-strings", "--import", "tsx", "--input-type=module", "-e", script], { cwd: import.meta.dirname, encoding: "utf8" });
    expect(JSON.parse(out)).toEqual({ generated: false, same: true, rip: "5" });
  });

  it("writes into the buffer the caller allocates, of the exact size", () => {
    const message = create(api.EventSchema, { name: "vms/a/vcpus/0", vcpu: 3, arch: { regs: { rip: 0xffff_ffff_8100_0000n } } });
    const sizes: number[] = [];
    const bytes = binaryCodec(api.EventSchema).encode(message, (n) => {
      sizes.push(n);
      return Buffer.allocUnsafe(n);
    });
    expect(sizes).toEqual([toBinary(api.EventSchema, message).length]);
    expect(Buffer.isBuffer(bytes)).toBe(true);
    expect(fromBinary(api.EventSchema, bytes)).toEqual(message);
  });
});
