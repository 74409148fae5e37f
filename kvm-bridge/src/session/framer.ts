// SPDX-License-Identifier: Apache-2.0
/**
 * Splits a KVMI byte stream into messages (kvmi-abi §3.1). A message is `kvmi_msg_hdr` and `size`
 * body bytes; `size` above the dialect's KVMI_MSG_SIZE is a protocol error, on which the kernel
 * closes the socket and so do we. Header offsets and the size limit come from the dialect table.
 *
 * Like pg-protocol's parser, this keeps one growable buffer with cursors and never concatenates
 * per chunk. A message that lies wholly inside one socket chunk is handed out as a view of that
 * chunk (no copy: Node never reuses a chunk it gave us); only a message split across chunks is
 * assembled in the buffer and copied out once.
 */
import { KvmiArgumentError, KvmiProtocolError } from "../errors.js";
import type { Dialect } from "../wire/dialect.js";
import type { Layout } from "../wire/layout.js";
import type { MsgHdr } from "../wire/message.js";

const INITIAL_BUFFER_BYTES = 16 * 1024;

/** Receives each complete message. `body` stays valid after the callback returns. */
export type FrameHandler = (hdr: MsgHdr, body: Uint8Array) => void;

/** A framer for one byte stream. */
export interface Framer {
  /**
   * Feeds bytes; calls `onFrame` for every message they complete, in order.
   * @throws KvmiProtocolError on an oversize header; the framer is unusable afterwards.
   */
  push(chunk: Uint8Array, onFrame: FrameHandler): void;
  /** Bytes of an incomplete message held back. */
  readonly pendingBytes: number;
}

/** Options of {@link createFramer}. */
export interface FramerOptions {
  /** Largest accepted body; defaults to the dialect's KVMI_MSG_SIZE (`maxMessageBytes`). */
  readonly maxBodyBytes?: number;
}

/** Where the three header fields sit (all dialects share `kvmi_msg_hdr`, but it is read from the table). */
interface HeaderOffsets {
  readonly bytes: number;
  readonly id: number;
  readonly size: number;
  readonly seq: number;
}

function headerOffsets(layout: Layout): HeaderOffsets {
  const field = (name: string, type: string): number => {
    const f = layout.fields[name];
    if (f?.kind !== "scalar" || f.type !== type) {
      throw new KvmiArgumentError("dialect", `${layout.name}.${name} must be a ${type} for the framer`);
    }
    return f.offset;
  };
  return { bytes: layout.size, id: field("id", "u16"), size: field("size", "u16"), seq: field("seq", "u32") };
}

/** Creates a framer for `dialect`'s streams (conventions §4: a state machine with named constants). */
export function createFramer(dialect: Dialect, options: FramerOptions = {}): Framer {
  return new StreamFramer(headerOffsets(dialect.layouts.msgHdr), options.maxBodyBytes ?? dialect.maxMessageBytes);
}

class StreamFramer implements Framer {
  private buffer = new Uint8Array(INITIAL_BUFFER_BYTES);
  /** Bytes of the held-back partial message, from `buffer[0]`. */
  private held = 0;
  private failure: KvmiProtocolError | undefined;

  constructor(
    private readonly hdr: HeaderOffsets,
    private readonly maxBodyBytes: number,
  ) {}

  get pendingBytes(): number {
    return this.held;
  }

  push(chunk: Uint8Array, onFrame: FrameHandler): void {
    if (this.failure !== undefined) throw this.failure;
    let source = chunk;
    let start = 0;
    let end = chunk.length;
    let copyBodies = false;
    if (this.held > 0) {
      // Complete the held message first; everything after it is parsed straight from `chunk`.
      const needed = this.messageBytes(this.buffer, 0, this.held);
      const take = needed === undefined ? Math.min(chunk.length, this.hdr.bytes - this.held) : needed - this.held;
      const taken = Math.min(take, chunk.length);
      this.append(chunk.subarray(0, taken));
      if (needed === undefined) {
        if (this.held < this.hdr.bytes) return;
        this.push(chunk.subarray(taken), onFrame);
        return;
      }
      if (this.held < needed) return;
      source = this.buffer;
      start = 0;
      end = this.held;
      copyBodies = true;
      this.held = 0;
      this.emit(source, start, end, copyBodies, onFrame);
      if (taken < chunk.length) this.push(chunk.subarray(taken), onFrame);
      return;
    }
    this.emit(source, start, end, copyBodies, onFrame);
  }

  /** Emits every whole message of `source[start, end)` and holds back the trailing partial one. */
  private emit(source: Uint8Array, start: number, end: number, copyBodies: boolean, onFrame: FrameHandler): void {
    let at = start;
    while (at < end) {
      const total = this.messageBytes(source, at, end - at);
      if (total === undefined || at + total > end) {
        this.append(source.subarray(at, end));
        return;
      }
      const { bytes, id, seq } = this.hdr;
      // Read in place (little-endian, kvmi-abi §3.1): a DataView per message showed in bulk profiles.
      const s = at + seq;
      const hdr: MsgHdr = {
        id: source[at + id]! | (source[at + id + 1]! << 8),
        size: total - bytes,
        seq: (source[s]! | (source[s + 1]! << 8) | (source[s + 2]! << 16) | (source[s + 3]! << 24)) >>> 0,
      };
      const bodyStart = at + bytes;
      const body = copyBodies
        ? source.slice(bodyStart, bodyStart + hdr.size)
        : source.subarray(bodyStart, bodyStart + hdr.size);
      at += total;
      onFrame(hdr, body);
    }
  }

  /** Whole-message length if the header is available, validating `size`; undefined otherwise. */
  private messageBytes(source: Uint8Array, at: number, available: number): number | undefined {
    const { bytes, id, size: sizeAt } = this.hdr;
    if (available < bytes) return undefined;
    const size = source[at + sizeAt]! | (source[at + sizeAt + 1]! << 8);
    if (size > this.maxBodyBytes) {
      this.failure = new KvmiProtocolError(
        `message id ${source[at + id]! | (source[at + id + 1]! << 8)} declares ${size} body bytes, more than ${this.maxBodyBytes}`,
      );
      throw this.failure;
    }
    return bytes + size;
  }

  private append(bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    if (this.held + bytes.length > this.buffer.length) {
      const grown = new Uint8Array(Math.max(this.buffer.length * 2, this.held + bytes.length));
      grown.set(this.buffer.subarray(0, this.held));
      this.buffer = grown;
    }
    this.buffer.set(bytes, this.held);
    this.held += bytes.length;
  }
}
