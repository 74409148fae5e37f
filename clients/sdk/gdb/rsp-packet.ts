// SPDX-License-Identifier: Apache-2.0
/**
 * The framing of the GDB Remote Serial Protocol: `$payload#cs` packets with a modulo-256 checksum,
 * `+`/`-` acknowledgements (until `QStartNoAckMode`), the out-of-band interrupt byte 0x03, binary
 * escaping (`}` then the byte XOR 0x20, for `$ # } *`) and run-length encoding (`X*n`: repeat the
 * previous character `n - 29` more times). gdb never sends run-length encoded packets, but a peer
 * may; the reader expands them and the writer never produces them.
 *
 * @see ../../README.md ("GDB gateway": the packets served)
 */

/** The byte gdb sends to interrupt a running target (Ctrl-C). */
export const INTERRUPT_BYTE = 0x03;
/** Largest packet payload the reader accepts (and the gateway advertises as PacketSize). */
export const MAX_PACKET_BYTES = 0x4000;

const DOLLAR = 0x24;
const HASH = 0x23;
const ESCAPE = 0x7d;
const STAR = 0x2a;
const PLUS = 0x2b;
const MINUS = 0x2d;

/** One thing the reader found in the byte stream. */
export type RspItem =
  | { readonly kind: "packet"; readonly payload: Uint8Array }
  | { readonly kind: "interrupt" }
  | { readonly kind: "ack" }
  | { readonly kind: "nack" }
  /** A packet whose checksum did not match (answered with `-` in ack mode). */
  | { readonly kind: "corrupt" };

/** Sum of the bytes modulo 256. */
export function checksum(bytes: Uint8Array): number {
  let sum = 0;
  for (const b of bytes) sum = (sum + b) & 0xff;
  return sum;
}

/** Escapes the bytes a binary payload (`X`, `qXfer` replies) may not carry as is. */
export function escapeBinary(data: Uint8Array): Uint8Array {
  let extra = 0;
  for (const b of data) if (b === DOLLAR || b === HASH || b === ESCAPE || b === STAR) extra++;
  if (extra === 0) return data;
  const out = new Uint8Array(data.length + extra);
  let j = 0;
  for (const b of data) {
    if (b === DOLLAR || b === HASH || b === ESCAPE || b === STAR) {
      out[j++] = ESCAPE;
      out[j++] = b ^ 0x20;
    } else out[j++] = b;
  }
  return out;
}

/** Undoes {@link escapeBinary}. @throws RangeError for a payload that ends in the middle of an escape */
export function unescapeBinary(data: Uint8Array): Uint8Array {
  if (!data.includes(ESCAPE)) return data;
  const out = new Uint8Array(data.length);
  let j = 0;
  for (let i = 0; i < data.length; i++) {
    const b = data[i]!;
    if (b !== ESCAPE) out[j++] = b;
    else {
      if (i + 1 >= data.length) throw new RangeError("binary data ends with an escape byte");
      out[j++] = data[++i]! ^ 0x20;
    }
  }
  return out.subarray(0, j);
}

/** Expands run-length encoding (`c*n` = `c` repeated `n - 29` more times). @throws RangeError for a malformed run */
export function expandRunLength(data: Uint8Array): Uint8Array {
  if (!data.includes(STAR)) return data;
  const out: number[] = [];
  for (let i = 0; i < data.length; i++) {
    const b = data[i]!;
    if (b !== STAR) {
      out.push(b);
      continue;
    }
    const count = data[i + 1];
    if (out.length === 0 || count === undefined || count < 29 + 3 || count > 126) throw new RangeError("malformed run-length encoding");
    const last = out[out.length - 1]!;
    for (let n = 0; n < count - 29; n++) out.push(last);
    i++;
  }
  return Uint8Array.from(out);
}

/** `$payload#cs` for a payload that is already escaped where it needs to be. */
export function encodePacket(payload: Uint8Array | string): Uint8Array {
  // Strings carry one byte per character (latin1), so escaped binary survives.
  const body = typeof payload === "string" ? Uint8Array.from(Buffer.from(payload, "latin1")) : payload;
  const out = new Uint8Array(body.length + 4);
  out[0] = DOLLAR;
  out.set(body, 1);
  out[body.length + 1] = HASH;
  out.set(new TextEncoder().encode(checksum(body).toString(16).padStart(2, "0")), body.length + 2);
  return out;
}

/**
 * Splits the byte stream from gdb into packets, acks and interrupts. Bytes between packets other
 * than `+ - 0x03` are line noise and skipped, as gdbserver does. A packet longer than
 * {@link MAX_PACKET_BYTES} is dropped as corrupt instead of growing the buffer without bound.
 */
export class RspReader {
  private body: number[] = [];
  private state: "idle" | "body" | "sum1" | "sum2" = "idle";
  private sumText = "";
  private overflow = false;

  /** Feeds bytes; returns what they completed. */
  feed(bytes: Uint8Array): RspItem[] {
    const items: RspItem[] = [];
    for (const b of bytes) {
      switch (this.state) {
        case "idle":
          if (b === DOLLAR) {
            this.state = "body";
            this.body = [];
            this.overflow = false;
          } else if (b === INTERRUPT_BYTE) items.push({ kind: "interrupt" });
          else if (b === PLUS) items.push({ kind: "ack" });
          else if (b === MINUS) items.push({ kind: "nack" });
          break;
        case "body":
          if (b === HASH) this.state = "sum1";
          else if (this.body.length < MAX_PACKET_BYTES) this.body.push(b);
          else this.overflow = true;
          break;
        case "sum1":
          this.sumText = String.fromCharCode(b);
          this.state = "sum2";
          break;
        case "sum2": {
          this.state = "idle";
          const expected = parseInt(this.sumText + String.fromCharCode(b), 16);
          const payload = Uint8Array.from(this.body);
          this.body = [];
          if (this.overflow || Number.isNaN(expected) || expected !== checksum(payload)) {
            items.push({ kind: "corrupt" });
            break;
          }
          try {
            items.push({ kind: "packet", payload: expandRunLength(payload) });
          } catch {
            items.push({ kind: "corrupt" });
          }
          break;
        }
      }
    }
    return items;
  }
}

/** Lowercase hex of bytes. */
export function toHex(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("hex");
}

/** Bytes of a hex string. @throws RangeError for odd length or a non-hex digit */
export function fromHex(text: string): Uint8Array {
  if (text.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(text)) throw new RangeError(`"${text.slice(0, 32)}" is not hex bytes`);
  return Uint8Array.from(Buffer.from(text, "hex"));
}

/** A value as `bytes` little-endian bytes (the target byte order of every x86 register in RSP). */
export function littleEndian(value: bigint, bytes: number): Uint8Array {
  const out = new Uint8Array(bytes);
  let v = value;
  for (let i = 0; i < bytes; i++) {
    out[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  return out;
}

/** The unsigned value of little-endian bytes. */
export function fromLittleEndian(bytes: Uint8Array): bigint {
  let v = 0n;
  for (let i = bytes.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(bytes[i]!);
  return v;
}
