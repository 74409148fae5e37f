// SPDX-License-Identifier: Apache-2.0
/**
 * Source snippets for one scalar value, per protobuf scalar type: the check (anything protobuf-es
 * would convert or reject goes to it: `throw F`), its size, how to write it and how to read it.
 * `compile.ts` assembles them into the encoder and decoder of each message. Names the snippets use
 * are those `compile.ts` binds: `D` (scratch DataView), `D8` (its bytes), `vs32`/`vs64` (varint
 * sizes), `wv32`/`wv64` (varint writes), `u8len`/`wutf8` (UTF-8), `rv32`/`rv64`/`LO`/`HI` (varint
 * reads), `rstr` (ASCII strings), `buf`/`pos` (the decoder's input), `b`/`p` (the encoder's output).
 */
import { ScalarType } from "@bufbuild/protobuf";

/** Wire types (protobuf encoding spec). */
export const WIRE_VARINT = 0;
export const WIRE_FIXED64 = 1;
export const WIRE_LENGTH = 2;
export const WIRE_FIXED32 = 5;

export function wireTypeOf(t: ScalarType): number {
  switch (t) {
    case ScalarType.DOUBLE:
    case ScalarType.FIXED64:
    case ScalarType.SFIXED64:
      return WIRE_FIXED64;
    case ScalarType.FLOAT:
    case ScalarType.FIXED32:
    case ScalarType.SFIXED32:
      return WIRE_FIXED32;
    case ScalarType.STRING:
    case ScalarType.BYTES:
      return WIRE_LENGTH;
    default:
      return WIRE_VARINT;
  }
}

/** The implicit-presence test protobuf-es applies before writing a field (to-binary.js). */
export function notZero(t: ScalarType, v: string, enumZero: number | undefined): string {
  if (enumZero !== undefined) return `${v} !== ${enumZero}`;
  switch (t) {
    case ScalarType.BOOL:
      return `${v} !== false`;
    case ScalarType.STRING:
      return `${v} !== ""`;
    case ScalarType.BYTES:
      return `(!(${v} instanceof Uint8Array) || ${v}.byteLength > 0)`;
    case ScalarType.DOUBLE:
    case ScalarType.FLOAT:
      return `!Object.is(${v}, 0)`;
    case ScalarType.INT64:
    case ScalarType.UINT64:
    case ScalarType.SINT64:
    case ScalarType.FIXED64:
    case ScalarType.SFIXED64:
      return `${v} !== 0n`;
    default:
      return `${v} !== 0`;
  }
}

const FLOAT32_MAX = 3.4028234663852886e38;

/** Statements that throw F unless `v` is a value of type `t` protobuf-es would write as it is. */
export function check(t: ScalarType, v: string): string {
  switch (t) {
    case ScalarType.INT32:
    case ScalarType.SINT32:
    case ScalarType.SFIXED32:
      return `if ((${v} | 0) !== ${v}) throw F;`;
    case ScalarType.UINT32:
    case ScalarType.FIXED32:
      return `if ((${v} >>> 0) !== ${v}) throw F;`;
    case ScalarType.UINT64:
    case ScalarType.FIXED64:
      return `if (typeof ${v} !== "bigint" || ${v} < 0n || ${v} > U64_MAX) throw F;`;
    case ScalarType.INT64:
    case ScalarType.SINT64:
    case ScalarType.SFIXED64:
      return `if (typeof ${v} !== "bigint" || ${v} < I64_MIN || ${v} > I64_MAX) throw F;`;
    case ScalarType.BOOL:
      return `if (${v} !== true && ${v} !== false) throw F;`;
    case ScalarType.STRING:
      return `if (typeof ${v} !== "string") throw F;`;
    case ScalarType.BYTES:
      return `if (!(${v} instanceof Uint8Array)) throw F;`;
    case ScalarType.DOUBLE:
      return `if (typeof ${v} !== "number") throw F;`;
    case ScalarType.FLOAT:
      return `if (typeof ${v} !== "number" || (Number.isFinite(${v}) && (${v} > ${FLOAT32_MAX} || ${v} < -${FLOAT32_MAX}))) throw F;`;
  }
}

/**
 * The 64-bit varints' halves, split once in the size pass and kept on `H` for the write pass (the
 * split is a BigInt store and two loads; `H` grows when a message has more than it holds).
 */
const keepHalves = `lo = D.getUint32(0, true); hi = D.getUint32(4, true); if (hn + 2 > H.length) H = grow(H); H[hn++] = lo; H[hn++] = hi; n += vs64(lo, hi);`;

/**
 * Statements that add the encoded size of checked value `v` (without tag) to `n`. Strings push
 * their UTF-8 length on `Z`, 64-bit varints their halves on `H`, for the write pass.
 */
export function size(t: ScalarType, v: string): string {
  switch (t) {
    case ScalarType.INT32:
      return `n += ${v} < 0 ? 10 : vs32(${v});`;
    case ScalarType.UINT32:
      return `n += vs32(${v});`;
    case ScalarType.SINT32:
      return `n += vs32(((${v} << 1) ^ (${v} >> 31)) >>> 0);`;
    case ScalarType.UINT64:
      return `D.setBigUint64(0, ${v}, true); ${keepHalves}`;
    case ScalarType.INT64:
      return `D.setBigInt64(0, ${v}, true); ${keepHalves}`;
    case ScalarType.SINT64:
      return `D.setBigUint64(0, BigInt.asUintN(64, (${v} << 1n) ^ (${v} >> 63n)), true); ${keepHalves}`;
    case ScalarType.BOOL:
      return `n += 1;`;
    case ScalarType.FIXED32:
    case ScalarType.SFIXED32:
    case ScalarType.FLOAT:
      return `n += 4;`;
    case ScalarType.FIXED64:
    case ScalarType.SFIXED64:
    case ScalarType.DOUBLE:
      return `n += 8;`;
    case ScalarType.STRING:
      return `x = u8len(${v}); Z.push(x); n += vs32(x) + x;`;
    case ScalarType.BYTES:
      return `n += vs32(${v}.byteLength) + ${v}.byteLength;`;
  }
}

/** Statements that write checked value `v` (without tag) at `p`. */
export function write(t: ScalarType, v: string): string {
  const fixed = (setter: string, bytes: number): string =>
    `D.${setter}(0, ${v}, true); ${Array.from({ length: bytes }, (_, i) => `b[p + ${i}] = D8[${i}];`).join(" ")} p += ${bytes};`;
  switch (t) {
    case ScalarType.INT32:
      return `p = ${v} < 0 ? wv64(b, p, ${v} >>> 0, 0xffffffff) : wv32(b, p, ${v});`;
    case ScalarType.UINT32:
      return `p = wv32(b, p, ${v});`;
    case ScalarType.SINT32:
      return `p = wv32(b, p, ((${v} << 1) ^ (${v} >> 31)) >>> 0);`;
    case ScalarType.UINT64:
    case ScalarType.INT64:
    case ScalarType.SINT64:
      return `p = wv64(b, p, H[hr++], H[hr++]);`;
    case ScalarType.BOOL:
      return `b[p++] = ${v} ? 1 : 0;`;
    case ScalarType.FIXED32:
      return fixed("setUint32", 4);
    case ScalarType.SFIXED32:
      return fixed("setInt32", 4);
    case ScalarType.FLOAT:
      return fixed("setFloat32", 4);
    case ScalarType.FIXED64:
      return fixed("setBigUint64", 8);
    case ScalarType.SFIXED64:
      return fixed("setBigInt64", 8);
    case ScalarType.DOUBLE:
      return fixed("setFloat64", 8);
    case ScalarType.STRING:
      return `x = Z[zi++]; p = wv32(b, p, x); p = wutf8(b, p, ${v}, x);`;
    case ScalarType.BYTES:
      return `p = wv32(b, p, ${v}.byteLength); b.set(${v}, p); p += ${v}.byteLength;`;
  }
}

/** An expression that reads one value of type `t` at `pos` (advancing it); `end` bounds strings. */
export function read(t: ScalarType): string {
  const fixed = (getter: string, bytes: number): string =>
    `(${Array.from({ length: bytes }, (_, i) => `D8[${i}] = buf[pos + ${i}]`).join(", ")}, pos += ${bytes}, D.${getter}(0, true))`;
  switch (t) {
    case ScalarType.INT32:
      return `(rv32() | 0)`;
    case ScalarType.UINT32:
      return `rv32()`;
    case ScalarType.SINT32:
      return `(x = rv32(), (x >>> 1) ^ -(x & 1))`;
    case ScalarType.UINT64:
      return `(rv64(), HI === 0 ? BigInt(LO) : (D.setUint32(0, LO, true), D.setUint32(4, HI, true), D.getBigUint64(0, true)))`;
    case ScalarType.INT64:
      return `(rv64(), D.setUint32(0, LO, true), D.setUint32(4, HI, true), D.getBigInt64(0, true))`;
    case ScalarType.SINT64:
      // Zigzag on the two halves, as protobuf-es does, then one signed join.
      return `(rv64(), x = -(LO & 1), D.setUint32(0, ((LO >>> 1) | ((HI & 1) << 31)) ^ x, true), D.setUint32(4, (HI >>> 1) ^ x, true), D.getBigInt64(0, true))`;
    case ScalarType.BOOL:
      return `(rv64(), LO !== 0 || HI !== 0)`;
    case ScalarType.FIXED32:
      return fixed("getUint32", 4);
    case ScalarType.SFIXED32:
      return fixed("getInt32", 4);
    case ScalarType.FLOAT:
      return fixed("getFloat32", 4);
    case ScalarType.FIXED64:
      return fixed("getBigUint64", 8);
    case ScalarType.SFIXED64:
      return fixed("getBigInt64", 8);
    case ScalarType.DOUBLE:
      return fixed("getFloat64", 8);
    case ScalarType.STRING:
      return `rstr(end)`;
    case ScalarType.BYTES:
      return `(x = rv32(), e = pos + x, e > end ? fail() : (x = buf.subarray(pos, e), pos = e, x))`;
  }
}

/** The zero value protobuf-es's create() gives an implicit-presence field, as source. */
export function zeroValue(t: ScalarType): string {
  switch (t) {
    case ScalarType.BOOL:
      return "false";
    case ScalarType.STRING:
      return `""`;
    case ScalarType.BYTES:
      return "new Uint8Array(0)";
    case ScalarType.INT64:
    case ScalarType.UINT64:
    case ScalarType.SINT64:
    case ScalarType.FIXED64:
    case ScalarType.SFIXED64:
      return "0n";
    default:
      return "0";
  }
}
