// SPDX-License-Identifier: Apache-2.0
/**
 * GDB remote serial protocol framing (docs/qemu-backend.md "gdbstub"): `$payload#cs` with a
 * modulo-256 checksum, `}` escaping of `$ # } *`, `*` run-length encoding in replies, `+`/`-`
 * acknowledgements until QStartNoAckMode, and the bare 0x03 byte that interrupts a running target.
 */
import { KvmiProtocolError } from "../errors.js";

/** Largest payload we send; QEMU's gdbstub buffer is 4096 bytes (MAX_PACKET_LENGTH). */
export const MAX_PACKET_PAYLOAD = 4000;
/** Largest `m`/`M` transfer per packet: hex doubles the size and the reply must fit the stub's buffer. */
export const MAX_MEMORY_CHUNK = 2047;
export const INTERRUPT_BYTE = 0x03;

function checksum(bytes: Uint8Array | string): number {
  let sum = 0;
  if (typeof bytes === "string") for (let i = 0; i < bytes.length; i++) sum = (sum + bytes.charCodeAt(i)) & 0xff;
  else for (const byte of bytes) sum = (sum + byte) & 0xff;
  return sum;
}

/** Frames one packet; `payload` is latin1 text (binary `X` data is escaped here). */
export function encodePacket(payload: string): Buffer {
  let escaped = "";
  for (let i = 0; i < payload.length; i++) {
    const c = payload[i]!;
    escaped += c === "$" || c === "#" || c === "}" || c === "*" ? `}${String.fromCharCode(c.charCodeAt(0) ^ 0x20)}` : c;
  }
  return Buffer.from(`$${escaped}#${checksum(escaped).toString(16).padStart(2, "0")}`, "latin1");
}

/** What the parser found in the byte stream. */
export type RspItem =
  | { readonly kind: "packet"; readonly payload: string }
  | { readonly kind: "ack" }
  | { readonly kind: "nack" }
  | { readonly kind: "bad-checksum"; readonly payload: string };

/** Incremental parser: feed socket chunks, get whole items; keeps at most one partial packet. */
export class RspParser {
  private pending = "";

  constructor(private readonly maxPacketBytes = 1 << 20) {}

  push(chunk: Buffer): RspItem[] {
    this.pending += chunk.toString("latin1");
    const items: RspItem[] = [];
    for (;;) {
      let i = 0;
      while (i < this.pending.length && this.pending[i] !== "$") {
        const c = this.pending[i];
        if (c === "+") items.push({ kind: "ack" });
        else if (c === "-") items.push({ kind: "nack" });
        i++;
      }
      this.pending = this.pending.slice(i);
      const hash = this.pending.indexOf("#");
      if (hash < 0 || this.pending.length < hash + 3) {
        if (this.pending.length > this.maxPacketBytes) throw new KvmiProtocolError(`gdbstub packet over ${this.maxPacketBytes} bytes`);
        return items;
      }
      const raw = this.pending.slice(1, hash);
      const sum = Number.parseInt(this.pending.slice(hash + 1, hash + 3), 16);
      this.pending = this.pending.slice(hash + 3);
      const payload = decodePayload(raw);
      items.push(checksum(raw) === sum ? { kind: "packet", payload } : { kind: "bad-checksum", payload });
    }
  }
}

/** Undoes `}` escapes and expands `*` run-length encoding (`X*n` repeats X n-29 more times). */
export function decodePayload(raw: string): string {
  let out = "";
  for (let i = 0; i < raw.length; i++) {
    const c = raw[i]!;
    if (c === "}") {
      out += String.fromCharCode(raw.charCodeAt(++i) ^ 0x20);
    } else if (c === "*") {
      const repeat = raw.charCodeAt(++i) - 29;
      out += out[out.length - 1]!.repeat(repeat);
    } else {
      out += c;
    }
  }
  return out;
}

export function toHex(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("hex");
}

export function fromHex(hex: string): Uint8Array {
  return new Uint8Array(Buffer.from(hex, "hex"));
}

/** A little-endian register value as gdb sends it (hex of the target's bytes) → bigint. */
export function hexLeToBigint(hex: string): bigint {
  let value = 0n;
  for (let i = hex.length - 2; i >= 0; i -= 2) value = (value << 8n) | BigInt(Number.parseInt(hex.slice(i, i + 2), 16));
  return value;
}

export function bigintToHexLe(value: bigint, bytes: number): string {
  let out = "";
  for (let i = 0; i < bytes; i++) {
    out += Number((value >> BigInt(8 * i)) & 0xffn).toString(16).padStart(2, "0");
  }
  return out;
}

/** A stop reply (`S`, `T`, `W`, `X`), decoded. */
export interface StopReply {
  readonly kind: "signal" | "exited";
  readonly signal: number;
  /** The thread (vCPU) that stopped, as `pP.T` or `T` text. */
  readonly thread?: string;
  /** `watch`/`rwatch`/`awatch` address for watchpoint stops. */
  readonly watch?: { readonly kind: "watch" | "rwatch" | "awatch"; readonly address: bigint };
  readonly raw: string;
}

export function isStopReply(payload: string): boolean {
  return /^(S[0-9a-f]{2}|T[0-9a-f]{2}|W[0-9a-f]{2}|X[0-9a-f]{2})/i.test(payload);
}

export function parseStopReply(payload: string): StopReply {
  const signal = Number.parseInt(payload.slice(1, 3), 16);
  if (payload[0] === "W" || payload[0] === "X") return { kind: "exited", signal, raw: payload };
  let thread: string | undefined;
  let watch: StopReply["watch"];
  for (const field of payload.slice(3).split(";")) {
    const colon = field.indexOf(":");
    if (colon < 0) continue;
    const key = field.slice(0, colon);
    const value = field.slice(colon + 1);
    if (key === "thread") thread = value;
    else if (key === "watch" || key === "rwatch" || key === "awatch") watch = { kind: key, address: BigInt(`0x${value}`) };
  }
  return { kind: "signal", signal, thread, watch, raw: payload };
}
