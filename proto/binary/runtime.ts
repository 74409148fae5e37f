// SPDX-License-Identifier: Apache-2.0
/**
 * What the generated encoders and decoders of `compile.ts` call: varint sizes and writes, UTF-8
 * lengths, and the one scratch view that splits a 64-bit BigInt into two 32-bit halves without
 * allocating (DataView ≈ 15 ns a split here; `Number(v & 0xffffffffn)` and `v >> 32n` allocate a
 * BigInt each, ≈ 160 ns).
 */

/** Thrown by generated code for anything it leaves to protobuf-es (see `compile.ts`). */
export const FALLBACK: unique symbol = Symbol("protobuf-es");

/** Scratch for 64-bit splits and joins and for fixed-width floats. */
export const scratch = new DataView(new ArrayBuffer(8));

export const U64_MAX = 0xffff_ffff_ffff_ffffn;
export const I64_MIN = -0x8000_0000_0000_0000n;
export const I64_MAX = 0x7fff_ffff_ffff_ffffn;

/** Bytes of the varint of an unsigned 32-bit value. */
export function varint32Size(v: number): number {
  return v < 0x80 ? 1 : v < 0x4000 ? 2 : v < 0x20_0000 ? 3 : v < 0x1000_0000 ? 4 : 5;
}

/** Bytes of the varint of the unsigned 64-bit value `hi:lo` (each an unsigned 32-bit half). */
export function varint64Size(lo: number, hi: number): number {
  if (hi === 0) return varint32Size(lo);
  // 32 bits of lo plus the bits of hi, seven per byte.
  return hi < 0x8 ? 5 : hi < 0x400 ? 6 : hi < 0x2_0000 ? 7 : hi < 0x100_0000 ? 8 : hi < 0x8000_0000 ? 9 : 10;
}

/** Writes the varint of an unsigned 32-bit value at `p`; returns the position after it. */
export function writeVarint32(b: Uint8Array, p: number, v: number): number {
  while (v > 0x7f) {
    b[p++] = (v & 0x7f) | 0x80;
    v >>>= 7;
  }
  b[p++] = v;
  return p;
}

/** Writes the varint of the unsigned 64-bit value `hi:lo` at `p`; returns the position after it. */
export function writeVarint64(b: Uint8Array, p: number, lo: number, hi: number): number {
  while (hi !== 0 || lo > 0x7f) {
    b[p++] = (lo & 0x7f) | 0x80;
    lo = ((lo >>> 7) | (hi << 25)) >>> 0;
    hi >>>= 7;
  }
  b[p++] = lo;
  return p;
}

/** UTF-8 length of a string as TextEncoder writes it (a lone surrogate becomes U+FFFD, 3 bytes). */
export function utf8Length(s: string): number {
  let n = s.length;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) continue;
    if (c < 0x800) n += 1;
    else if (c >= 0xd800 && c < 0xdc00 && i + 1 < s.length && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      // A surrogate pair: two UTF-16 units, four bytes.
      n += 2;
      i++;
    } else n += 2;
  }
  return n;
}

const encoder = new TextEncoder();

/** Writes `s` (`bytes` long in UTF-8, from {@link utf8Length}) at `p`; returns the position after it. */
export function writeUtf8(b: Uint8Array, p: number, s: string, bytes: number): number {
  if (bytes === s.length && bytes <= 64) {
    // ASCII: one byte per unit, cheaper than a TextEncoder call for names and ids.
    for (let i = 0; i < bytes; i++) b[p + i] = s.charCodeAt(i);
    return p + bytes;
  }
  // The buffer may come from Buffer.allocUnsafe: every byte must be written, so a length that
  // disagreed with TextEncoder would leave old memory in the message. Never, as tested; checked.
  if (encoder.encodeInto(s, b.subarray(p, p + bytes)).written !== bytes) throw FALLBACK;
  return p + bytes;
}
