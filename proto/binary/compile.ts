// SPDX-License-Identifier: Apache-2.0
/**
 * Generates, once per root message type, straight-line JavaScript that encodes and decodes that
 * message and every message it reaches, from the protobuf-es descriptors (the schema stays the only
 * description; this turns it into code the way `kvm-bridge/src/wire/compile.ts` does for the KVMI
 * layouts).
 *
 * Why: an `Event` carries ≈ 140 fields (registers, eight segments, MSRs), most of them uint64, on
 * every event. protobuf-es 2.17 encodes one in ≈ 24 µs and decodes it in ≈ 22–28 µs here, a third of
 * an event's round trip through the bridge (docs/performance.md). The generated code reads and
 * writes each field by constant name, sizes the whole message first so that it is written once
 * into one buffer of the exact size (no growing, no forks), splits 64-bit values through one scratch
 * DataView instead of BigInt arithmetic, and builds each decoded message as one object literal.
 *
 * Exactness: the bytes are those of `toBinary` (fields in number order, implicit-presence zeros
 * skipped, packed repeated scalars) and the decoded objects those of `fromBinary` (create()'s
 * defaults and property order, bytes as views of the input). Anything else goes to protobuf-es
 * itself: generated code throws `F` and the caller runs protobuf-es on the whole message, which
 * then gives its own result or its own error. That covers unknown fields, a message field seen
 * twice (merge), non-ASCII strings on decode, values protobuf-es would convert (a number in a
 * uint64 field) or reject, and malformed input. Schemas the generator does not take at all (maps,
 * groups, proto2 or editions files, 64-bit fields as strings, wrapper and Struct fields, which
 * protobuf-es unboxes) use protobuf-es throughout.
 */
import { ScalarType } from "@bufbuild/protobuf";
import type { DescField, DescMessage } from "@bufbuild/protobuf";
import { Edition, FeatureSet_FieldPresence } from "@bufbuild/protobuf/wkt";
import * as runtime from "./runtime.js";
import { SCALARS, WIRE_LENGTH } from "./scalars.js";

/** The generated pair for one root message type. */
export interface GeneratedCodec {
  /** Returns the encoded bytes in a buffer from `allocate` of the exact size. */
  encode(message: unknown, allocate: (size: number) => Uint8Array): Uint8Array;
  decode(bytes: Uint8Array): unknown;
}

/** Well-known types protobuf-es represents as plain messages (the others it unboxes or maps to JSON). */
const PLAIN_WELL_KNOWN = new Set(["google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.Any", "google.protobuf.Empty", "google.protobuf.FieldMask"]);

/** Every message type `root` reaches, root first; undefined when one of them is not generated. */
function reachable(root: DescMessage): DescMessage[] | undefined {
  const order: DescMessage[] = [];
  const seen = new Set<string>();
  const visit = (m: DescMessage): boolean => {
    if (seen.has(m.typeName)) return true;
    seen.add(m.typeName);
    order.push(m);
    if (m.file.edition !== Edition.EDITION_PROTO3) return false;
    if (m.typeName.startsWith("google.protobuf.") && !PLAIN_WELL_KNOWN.has(m.typeName)) return false;
    for (const f of m.fields) {
      if (f.fieldKind === "map") return false;
      if ((f.fieldKind === "message" || (f.fieldKind === "list" && f.listKind === "message")) && f.delimitedEncoding) return false;
      if ((f as { longAsString?: boolean }).longAsString === true) return false;
      const child = f.fieldKind === "message" || (f.fieldKind === "list" && f.listKind === "message") ? f.message : undefined;
      if (child !== undefined && !visit(child)) return false;
    }
    return true;
  };
  return visit(root) ? order : undefined;
}

/** The varint bytes of a field's tag, as a source list of byte writes. */
function tagWrites(no: number, wireType: number): string {
  const bytes = new Uint8Array(5);
  const length = runtime.writeVarint32(bytes, 0, tagValue(no, wireType));
  return Array.from(bytes.subarray(0, length), (x) => `b[p++] = ${x};`).join(" ");
}

function tagSize(no: number): number {
  return runtime.varint32Size((no << 3) >>> 0);
}

function tagValue(no: number, wireType: number): number {
  return ((no << 3) | wireType) >>> 0;
}

const key = (name: string): string => `[${JSON.stringify(name)}]`;

/** Scalar type of a field's values (enums are int32 on the wire). */
function scalarOf(f: DescField): ScalarType {
  if (f.fieldKind === "enum" || (f.fieldKind === "list" && f.listKind === "enum")) return ScalarType.INT32;
  return (f as { scalar: ScalarType }).scalar;
}

/** Size and write statements for one message type (index `i`, message in `m`). */
function encoderOf(desc: DescMessage, index: Map<string, number>): string {
  const sizeBody: string[] = [];
  const writeBody: string[] = [];
  for (const f of [...desc.fields].sort((a, b) => a.number - b.number)) {
    const no = f.number;
    // A singular field: its value in `e` when present (a oneof's case chosen, or set).
    const singular = (present: string, sized: string, written: string): void => {
      const take = f.oneof ? `v = m${key(f.oneof.localName)}; if (v.case === ${JSON.stringify(f.localName)}) { e = v.value;` : `e = m${key(f.localName)}; if (${present}) {`;
      sizeBody.push(`${take} ${sized} }`);
      writeBody.push(`${take} ${written} }`);
    };
    if (f.fieldKind === "message") {
      const j = index.get(f.message.typeName)!;
      singular(
        "e !== undefined",
        `y = Z.length; Z.push(0); x = s${j}(e); Z[y] = x; n += ${tagSize(no)} + vs32(x) + x;`,
        `${tagWrites(no, WIRE_LENGTH)} p = wv32(b, p, Z[zi++]); p = w${j}(e, b, p);`,
      );
      continue;
    }
    if (f.fieldKind === "list") {
      const items = `m${key(f.localName)}`;
      if (f.listKind === "message") {
        const j = index.get(f.message.typeName)!;
        sizeBody.push(`v = ${items}; for (i = 0; i < v.length; i++) { e = v[i]; y = Z.length; Z.push(0); x = s${j}(e); Z[y] = x; n += ${tagSize(no)} + vs32(x) + x; }`);
        writeBody.push(`v = ${items}; for (i = 0; i < v.length; i++) { e = v[i]; ${tagWrites(no, WIRE_LENGTH)} p = wv32(b, p, Z[zi++]); p = w${j}(e, b, p); }`);
      } else if (f.packed) {
        const code = SCALARS[scalarOf(f)];
        // The payload's length is only known after sizing every item: keep n aside meanwhile.
        sizeBody.push(
          `v = ${items}; if (v.length > 0) { y = n; n = 0; for (i = 0; i < v.length; i++) { e = v[i]; ${code.check("e")} ${code.size("e")} } Z.push(n); n = y + ${tagSize(no)} + vs32(Z[Z.length - 1]) + Z[Z.length - 1]; }`,
        );
        writeBody.push(`v = ${items}; if (v.length > 0) { ${tagWrites(no, WIRE_LENGTH)} p = wv32(b, p, Z[zi++]); for (i = 0; i < v.length; i++) { e = v[i]; ${code.write("e")} } }`);
      } else {
        const code = SCALARS[scalarOf(f)];
        sizeBody.push(`v = ${items}; for (i = 0; i < v.length; i++) { e = v[i]; ${code.check("e")} n += ${tagSize(no)}; ${code.size("e")} }`);
        writeBody.push(`v = ${items}; for (i = 0; i < v.length; i++) { e = v[i]; ${tagWrites(no, code.wireType)} ${code.write("e")} }`);
      }
      continue;
    }
    const code = SCALARS[scalarOf(f)];
    const present = f.presence === FeatureSet_FieldPresence.IMPLICIT ? (f.fieldKind === "enum" ? `e !== ${f.enum.values[0]!.number}` : code.notZero("e")) : "e !== undefined";
    singular(present, `${code.check("e")} n += ${tagSize(no)}; ${code.size("e")}`, `${tagWrites(no, code.wireType)} ${code.write("e")}`);
  }
  const i = index.get(desc.typeName)!;
  return `
function s${i}(m) {
  if (m.$typeName !== ${JSON.stringify(desc.typeName)} || m.$unknown !== undefined) throw F;
  let n = 0, v, e, x, y, i, lo, hi;
  ${sizeBody.join("\n  ")}
  return n;
}
function w${i}(m, b, p) {
  let v, e, x, i;
  ${writeBody.join("\n  ")}
  return p;
}`;
}

/** The read function for one message type: reads fields at `pos` until `end`. */
function decoderOf(desc: DescMessage, index: Map<string, number>): string {
  const init: string[] = [`$typeName: ${JSON.stringify(desc.typeName)}`];
  for (const member of desc.members) {
    if (member.kind === "oneof") init.push(`${JSON.stringify(member.localName)}: { case: undefined }`);
    else if (member.fieldKind === "list") init.push(`${JSON.stringify(member.localName)}: []`);
    else if (member.fieldKind === "enum" && member.presence === FeatureSet_FieldPresence.IMPLICIT) {
      init.push(`${JSON.stringify(member.localName)}: ${member.enum.values[0]!.number}`);
    } else if (member.fieldKind === "scalar" && member.presence === FeatureSet_FieldPresence.IMPLICIT) {
      init.push(`${JSON.stringify(member.localName)}: ${SCALARS[member.scalar].zero}`);
    }
  }
  const cases: string[] = [];
  for (const f of desc.fields) {
    const no = f.number;
    const name = JSON.stringify(f.localName);
    if (f.fieldKind === "message" || (f.fieldKind === "list" && f.listKind === "message")) {
      const j = index.get(f.message!.typeName)!;
      const bounded = `x = rv32(); e = pos + x; if (e > end) throw F;`;
      if (f.fieldKind === "list") cases.push(`case ${tagValue(no, WIRE_LENGTH)}: ${bounded} m[${name}].push(d${j}(e)); break;`);
      else if (f.oneof) {
        const o = JSON.stringify(f.oneof.localName);
        // A second occurrence merges into the first (protobuf-es does it): left to protobuf-es.
        cases.push(`case ${tagValue(no, WIRE_LENGTH)}: ${bounded} if (m[${o}].case === ${name}) throw F; m[${o}] = { case: ${name}, value: d${j}(e) }; break;`);
      } else cases.push(`case ${tagValue(no, WIRE_LENGTH)}: ${bounded} if (m[${name}] !== undefined) throw F; m[${name}] = d${j}(e); break;`);
      continue;
    }
    const code = SCALARS[scalarOf(f)];
    const wt = code.wireType;
    if (f.fieldKind === "list") {
      cases.push(`case ${tagValue(no, wt)}: m[${name}].push(${code.read}); break;`);
      // Packed and unpacked are both accepted for packable types (protobuf encoding spec).
      if (wt !== WIRE_LENGTH) {
        cases.push(`case ${tagValue(no, WIRE_LENGTH)}: { x = rv32(); const stop = pos + x; if (stop > end) throw F; v = m[${name}]; while (pos < stop) v.push(${code.read}); if (pos !== stop) throw F; break; }`);
      }
    } else if (f.oneof) {
      cases.push(`case ${tagValue(no, wt)}: m[${JSON.stringify(f.oneof.localName)}] = { case: ${name}, value: ${code.read} }; break;`);
    } else {
      cases.push(`case ${tagValue(no, wt)}: m[${name}] = ${code.read}; break;`);
    }
  }
  const i = index.get(desc.typeName)!;
  return `
function d${i}(end) {
  const m = { ${init.join(", ")} };
  let t, v, e, x;
  while (pos < end) {
    t = buf[pos++];
    if (t > 0x7f) { pos--; t = rv32(); }
    switch (t) {
      ${cases.join("\n      ")}
      default: throw F;
    }
  }
  if (pos !== end) throw F;
  return m;
}`;
}

/** Varint readers shared by every decoder: they read `buf` at `pos`, past the end as zeros (checked after). */
const READERS = `
let buf, pos = 0, LO = 0, HI = 0;
function fail() { throw F; }
function rv32() {
  let c = buf[pos++], r = c & 0x7f;
  if (c < 0x80) return r;
  c = buf[pos++]; r |= (c & 0x7f) << 7; if (c < 0x80) return r >>> 0;
  c = buf[pos++]; r |= (c & 0x7f) << 14; if (c < 0x80) return r >>> 0;
  c = buf[pos++]; r |= (c & 0x7f) << 21; if (c < 0x80) return r >>> 0;
  c = buf[pos++]; r |= (c & 0x0f) << 28; if (c < 0x80) return r >>> 0;
  // Bytes 6 to 10 of a 64-bit varint (a negative int32): their bits lie above 32.
  for (let k = 0; k < 5; k++) if (buf[pos++] < 0x80) return r >>> 0;
  throw F;
}
function rv64() {
  let lo = 0, hi = 0, c, s;
  for (s = 0; s < 28; s += 7) { c = buf[pos++]; lo |= (c & 0x7f) << s; if (c < 0x80) { LO = lo >>> 0; HI = 0; return; } }
  c = buf[pos++]; lo |= (c & 0x0f) << 28; hi = (c & 0x7f) >> 4;
  if (c < 0x80) { LO = lo >>> 0; HI = hi; return; }
  for (s = 3; s <= 31; s += 7) { c = buf[pos++]; hi |= (c & 0x7f) << s; if (c < 0x80) { LO = lo >>> 0; HI = hi >>> 0; return; } }
  throw F;
}
function rstr(end) {
  const len = rv32(), start = pos, stop = pos + len;
  if (stop > end) throw F;
  for (let k = start; k < stop; k++) if (buf[k] > 0x7f) throw F;
  pos = stop;
  return len <= 256 ? String.fromCharCode.apply(null, buf.subarray(start, stop)) : ascii.decode(buf.subarray(start, stop));
}`;

/**
 * Generates the codec of `root`, or returns undefined when its schema is not one the generator
 * takes (see the file comment) or code cannot be generated from strings here.
 */
export function generateCodec(root: DescMessage): GeneratedCodec | undefined {
  const messages = reachable(root);
  if (messages === undefined) return undefined;
  const index = new Map(messages.map((m, i) => [m.typeName, i]));
  const source = `"use strict";
const { FALLBACK: F, scratch: D, U64_MAX, I64_MIN, I64_MAX, varint32Size: vs32, varint64Size: vs64, writeVarint32: wv32, writeVarint64: wv64, utf8Length: u8len, writeUtf8: wutf8 } = runtime;
const D8 = new Uint8Array(D.buffer);
const ascii = new TextDecoder();
const Z = [];
let zi = 0, H = new Uint32Array(256), hn = 0, hr = 0;
function grow(halves) {
  const more = new Uint32Array(halves.length * 2);
  more.set(halves);
  return more;
}
${READERS}
${messages.map((m) => encoderOf(m, index)).join("\n")}
${messages.map((m) => decoderOf(m, index)).join("\n")}
return {
  encode(m, allocate) {
    Z.length = 0;
    zi = 0;
    hn = 0;
    hr = 0;
    const n = s0(m);
    const b = allocate(n);
    const written = w0(m, b, 0);
    // A rare huge message (a million 64-bit values) does not keep its scratch for good.
    if (H.length > 65536) H = new Uint32Array(256);
    if (written !== n) throw F;
    return b;
  },
  decode(bytes) {
    buf = bytes;
    pos = 0;
    try {
      return d0(bytes.length);
    } finally {
      buf = undefined;
    }
  },
};`;
  try {
    return new Function("runtime", source)(runtime) as GeneratedCodec;
  } catch (err) {
    // Code generation from strings disallowed (CSP, --disallow-code-generation-from-strings).
    if (err instanceof EvalError) return undefined;
    throw err;
  }
}
