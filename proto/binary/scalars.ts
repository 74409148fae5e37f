// SPDX-License-Identifier: Apache-2.0
/**
 * Source snippets for one scalar value, one table row per protobuf scalar type: its wire type, its
 * zero, the implicit-presence test, the check (anything protobuf-es would convert or reject goes to
 * it: `throw F`), its size, how to write it and how to read it. `compile.ts` assembles them into the
 * encoder and decoder of each message. Names the snippets use are those `compile.ts` binds: `D`
 * (scratch DataView), `D8` (its bytes), `vs32`/`vs64` (varint sizes), `wv32`/`wv64` (varint
 * writes), `u8len`/`wutf8` (UTF-8), `rv32`/`rv64`/`LO`/`HI` (varint reads), `rstr` (ASCII strings),
 * `buf`/`pos` (the decoder's input), `b`/`p` (the encoder's output).
 */
import { ScalarType } from "@bufbuild/protobuf";

/** Wire types (protobuf encoding spec). */
export const WIRE_VARINT = 0;
export const WIRE_FIXED64 = 1;
export const WIRE_LENGTH = 2;
export const WIRE_FIXED32 = 5;

/** The code of one scalar type; `v` is the source of a value (a variable name). */
export interface ScalarCode {
  readonly wireType: number;
  /** The zero value protobuf-es's create() gives an implicit-presence field, as source. */
  readonly zero: string;
  /** The implicit-presence test protobuf-es applies before writing a field (to-binary.js). */
  notZero(v: string): string;
  /** Statements that throw F unless `v` is a value protobuf-es would write as it is. */
  check(v: string): string;
  /**
   * Statements that add the encoded size of checked value `v` (without tag) to `n`. Strings push
   * their UTF-8 length on `Z`, 64-bit varints their halves on `H`, for the write pass.
   */
  size(v: string): string;
  /** Statements that write checked value `v` (without tag) at `p`. */
  write(v: string): string;
  /** An expression that reads one value at `pos` (advancing it); `end` bounds strings and bytes. */
  readonly read: string;
}

const FLOAT32_MAX = 3.4028234663852886e38;

/**
 * The 64-bit varints' halves, split once in the size pass and kept on `H` for the write pass (the
 * split is a BigInt store and two loads; `H` grows when a message has more than it holds).
 */
const keepHalves = `lo = D.getUint32(0, true); hi = D.getUint32(4, true); if (hn + 2 > H.length) H = grow(H); H[hn++] = lo; H[hn++] = hi; n += vs64(lo, hi);`;

const numberZero = { zero: "0", notZero: (v: string) => `${v} !== 0` };
const bigintZero = { zero: "0n", notZero: (v: string) => `${v} !== 0n` };
const floatZero = { zero: "0", notZero: (v: string) => `!Object.is(${v}, 0)` };
const int32Check = (v: string): string => `if ((${v} | 0) !== ${v}) throw F;`;
const uint32Check = (v: string): string => `if ((${v} >>> 0) !== ${v}) throw F;`;
const uint64Check = (v: string): string => `if (typeof ${v} !== "bigint" || ${v} < 0n || ${v} > U64_MAX) throw F;`;
const int64Check = (v: string): string => `if (typeof ${v} !== "bigint" || ${v} < I64_MIN || ${v} > I64_MAX) throw F;`;
const floatCheck = (v: string): string =>
  `if (typeof ${v} !== "number" || (Number.isFinite(${v}) && (${v} > ${FLOAT32_MAX} || ${v} < -${FLOAT32_MAX}))) throw F;`;
/** A 64-bit varint's write: its halves, kept by the size pass. */
const writeHalves = (): string => `p = wv64(b, p, H[hr++], H[hr++]);`;

/** Fixed-width values go through the scratch DataView, byte by byte (little-endian). */
function fixed(wireType: number, bytes: number, setter: string, getter: string): Pick<ScalarCode, "wireType" | "size" | "write" | "read"> {
  const indexes = Array.from({ length: bytes }, (_, i) => i);
  return {
    wireType,
    size: () => `n += ${bytes};`,
    write: (v) => `D.${setter}(0, ${v}, true); ${indexes.map((i) => `b[p + ${i}] = D8[${i}];`).join(" ")} p += ${bytes};`,
    read: `(${indexes.map((i) => `D8[${i}] = buf[pos + ${i}]`).join(", ")}, pos += ${bytes}, D.${getter}(0, true))`,
  };
}

export const SCALARS: Readonly<Record<ScalarType, ScalarCode>> = {
  [ScalarType.INT32]: {
    ...numberZero,
    wireType: WIRE_VARINT,
    check: int32Check,
    size: (v) => `n += ${v} < 0 ? 10 : vs32(${v});`,
    write: (v) => `p = ${v} < 0 ? wv64(b, p, ${v} >>> 0, 0xffffffff) : wv32(b, p, ${v});`,
    read: `(rv32() | 0)`,
  },
  [ScalarType.UINT32]: {
    ...numberZero,
    wireType: WIRE_VARINT,
    check: uint32Check,
    size: (v) => `n += vs32(${v});`,
    write: (v) => `p = wv32(b, p, ${v});`,
    read: `rv32()`,
  },
  [ScalarType.SINT32]: {
    ...numberZero,
    wireType: WIRE_VARINT,
    check: int32Check,
    size: (v) => `n += vs32(((${v} << 1) ^ (${v} >> 31)) >>> 0);`,
    write: (v) => `p = wv32(b, p, ((${v} << 1) ^ (${v} >> 31)) >>> 0);`,
    read: `(x = rv32(), (x >>> 1) ^ -(x & 1))`,
  },
  [ScalarType.UINT64]: {
    ...bigintZero,
    wireType: WIRE_VARINT,
    check: uint64Check,
    size: (v) => `D.setBigUint64(0, ${v}, true); ${keepHalves}`,
    write: writeHalves,
    read: `(rv64(), HI === 0 ? BigInt(LO) : (D.setUint32(0, LO, true), D.setUint32(4, HI, true), D.getBigUint64(0, true)))`,
  },
  [ScalarType.INT64]: {
    ...bigintZero,
    wireType: WIRE_VARINT,
    check: int64Check,
    size: (v) => `D.setBigInt64(0, ${v}, true); ${keepHalves}`,
    write: writeHalves,
    read: `(rv64(), D.setUint32(0, LO, true), D.setUint32(4, HI, true), D.getBigInt64(0, true))`,
  },
  [ScalarType.SINT64]: {
    ...bigintZero,
    wireType: WIRE_VARINT,
    check: int64Check,
    size: (v) => `D.setBigUint64(0, BigInt.asUintN(64, (${v} << 1n) ^ (${v} >> 63n)), true); ${keepHalves}`,
    write: writeHalves,
    // Zigzag on the two halves, as protobuf-es does, then one signed join.
    read: `(rv64(), x = -(LO & 1), D.setUint32(0, ((LO >>> 1) | ((HI & 1) << 31)) ^ x, true), D.setUint32(4, (HI >>> 1) ^ x, true), D.getBigInt64(0, true))`,
  },
  [ScalarType.BOOL]: {
    zero: "false",
    notZero: (v) => `${v} !== false`,
    wireType: WIRE_VARINT,
    check: (v) => `if (${v} !== true && ${v} !== false) throw F;`,
    size: () => `n += 1;`,
    write: (v) => `b[p++] = ${v} ? 1 : 0;`,
    read: `(rv64(), LO !== 0 || HI !== 0)`,
  },
  [ScalarType.FIXED32]: { ...numberZero, check: uint32Check, ...fixed(WIRE_FIXED32, 4, "setUint32", "getUint32") },
  [ScalarType.SFIXED32]: { ...numberZero, check: int32Check, ...fixed(WIRE_FIXED32, 4, "setInt32", "getInt32") },
  [ScalarType.FLOAT]: { ...floatZero, check: floatCheck, ...fixed(WIRE_FIXED32, 4, "setFloat32", "getFloat32") },
  [ScalarType.FIXED64]: { ...bigintZero, check: uint64Check, ...fixed(WIRE_FIXED64, 8, "setBigUint64", "getBigUint64") },
  [ScalarType.SFIXED64]: { ...bigintZero, check: int64Check, ...fixed(WIRE_FIXED64, 8, "setBigInt64", "getBigInt64") },
  [ScalarType.DOUBLE]: { ...floatZero, check: (v) => `if (typeof ${v} !== "number") throw F;`, ...fixed(WIRE_FIXED64, 8, "setFloat64", "getFloat64") },
  [ScalarType.STRING]: {
    zero: `""`,
    notZero: (v) => `${v} !== ""`,
    wireType: WIRE_LENGTH,
    check: (v) => `if (typeof ${v} !== "string") throw F;`,
    size: (v) => `x = u8len(${v}); Z.push(x); n += vs32(x) + x;`,
    write: (v) => `x = Z[zi++]; p = wv32(b, p, x); p = wutf8(b, p, ${v}, x);`,
    read: `rstr(end)`,
  },
  [ScalarType.BYTES]: {
    zero: "new Uint8Array(0)",
    notZero: (v) => `(!(${v} instanceof Uint8Array) || ${v}.byteLength > 0)`,
    wireType: WIRE_LENGTH,
    check: (v) => `if (!(${v} instanceof Uint8Array)) throw F;`,
    size: (v) => `n += vs32(${v}.byteLength) + ${v}.byteLength;`,
    write: (v) => `p = wv32(b, p, ${v}.byteLength); b.set(${v}, p); p += ${v}.byteLength;`,
    read: `(x = rv32(), e = pos + x, e > end ? fail() : (x = buf.subarray(pos, e), pos = e, x))`,
  },
};
