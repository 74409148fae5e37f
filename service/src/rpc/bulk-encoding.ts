// SPDX-License-Identifier: Apache-2.0
/**
 * Protobuf encoding of the two bulk responses (DumpMemoryResponse, BatchReadMemoryResponse) straight
 * from the KVMI reply buffers (docs/decisions/0161-bulk-responses-from-reply-buffers.md).
 *
 * A READ_PHYSICAL reply carries at most one page (docs/protocol/v9.md, KVMI_VM_READ_PHYSICAL), and
 * the framer hands each reply's data out as a view of the socket's receive buffer. Building a
 * protobuf-es message first would copy every page into a chunk, then protobuf-es would copy the
 * chunk again into its writer's buffers and concatenate them (a third copy with grpc-js's own). Here
 * a response is a list of parts (the few bytes of protobuf framing, then the page views as they came)
 * that are written straight into grpc-js's framed message ({@link PreEncodedMessage.copy},
 * docs/decisions/0170-bulk-reads-without-fresh-memory.md): one copy per page, as a bare server
 * stream of the same bytes pays.
 *
 * The byte layout is what protobuf-es writes for the same message (fields in number order, proto3
 * zero scalars left out, oneof members always written): bulk-encoding.test.ts compares the two.
 */
import { toBinary } from "@bufbuild/protobuf";
import { StatusSchema } from "@kvmi/proto";
import type { HoleReason, Status } from "@kvmi/proto";

/**
 * A response message the bridge encoded itself: `parts` back to back are its protobuf bytes.
 *
 * grpc-js frames a serialized message by allocating the framed buffer and calling
 * `serialized.copy(framed, 5)` (`serializeMessage` in its server-interceptors.js); it reads nothing
 * else of it but `byteLength`. So the service definition's serializer hands this object over as it
 * is, and {@link copy} writes the parts straight into grpc-js's buffer: the pages are copied once,
 * where joining them into a buffer of our own first cost a second copy and a fresh multi-MiB
 * allocation per response (docs/decisions/0170-bulk-reads-without-fresh-memory.md).
 * test/e2e/memory.test.ts runs it through a real grpc-js server.
 */
export class PreEncodedMessage {
  constructor(
    readonly parts: readonly Uint8Array[],
    readonly byteLength: number,
  ) {}

  /** Writes the message's bytes into `target` from `targetStart` (Buffer#copy's contract); returns the bytes written. */
  copy(target: Uint8Array, targetStart = 0): number {
    if (targetStart + this.byteLength > target.byteLength) {
      throw new RangeError(`a ${this.byteLength}-byte message does not fit ${target.byteLength - targetStart} bytes`);
    }
    let at = targetStart;
    for (const part of this.parts) {
      target.set(part, at);
      at += part.byteLength;
    }
    return this.byteLength;
  }

  /** The message in one buffer of its own. */
  toBuffer(): Buffer {
    const out = Buffer.allocUnsafe(this.byteLength);
    this.copy(out);
    return out;
  }
}

/** A range of guest memory the bridge could not read (MemoryHole's fields). */
export interface HoleFields {
  address: bigint;
  length: bigint;
  reason: HoleReason;
}

// Wire types (protobuf encoding): 0 varint, 2 length-delimited.
const VARINT = 0;
const LEN = 2;

/** Bytes of `value` as a varint. */
function varintSize(value: number | bigint): number {
  if (typeof value === "number") {
    let size = 1;
    while (value >= 0x80) {
      value = Math.floor(value / 128);
      size++;
    }
    return size;
  }
  let size = 1;
  while (value >= 0x80n) {
    value >>= 7n;
    size++;
  }
  return size;
}

/**
 * Collects the parts of one message: small framing bytes go into a scratch buffer, large payloads
 * (page views) are referenced as they are. Sizes of nested messages are computed before they are
 * written, so nothing is encoded twice.
 */
class PartsWriter {
  private readonly parts: Uint8Array[] = [];
  private scratch: Uint8Array;
  private start = 0;
  private at = 0;
  private total = 0;

  constructor(scratchBytes = 256) {
    this.scratch = new Uint8Array(scratchBytes);
  }

  private room(bytes: number): void {
    if (this.at + bytes <= this.scratch.length) return;
    this.flushScratch();
    this.scratch = new Uint8Array(Math.max(bytes, 2 * this.scratch.length));
    this.start = this.at = 0;
  }

  private flushScratch(): void {
    if (this.at > this.start) this.parts.push(this.scratch.subarray(this.start, this.at));
    this.start = this.at;
  }

  varint(value: number | bigint): this {
    this.room(10);
    const s = this.scratch;
    let at = this.at;
    if (typeof value === "number" && value < 0x80000000) {
      while (value >= 0x80) {
        s[at++] = (value & 0x7f) | 0x80;
        value >>>= 7;
      }
      s[at++] = value;
    } else {
      let big = BigInt(value);
      while (big >= 0x80n) {
        s[at++] = Number(big & 0x7fn) | 0x80;
        big >>= 7n;
      }
      s[at++] = Number(big);
    }
    this.total += at - this.at;
    this.at = at;
    return this;
  }

  tag(field: number, wireType: number): this {
    return this.varint((field << 3) | wireType);
  }

  /** A scalar field, left out when zero (proto3 implicit presence). */
  scalar(field: number, value: number | bigint): this {
    if (value === 0 || value === 0n) return this;
    return this.tag(field, VARINT).varint(value);
  }

  /** The tag and length of a length-delimited field whose `length` bytes follow. */
  lengthDelimited(field: number, length: number): this {
    return this.tag(field, LEN).varint(length);
  }

  /** Bytes referenced, not copied. */
  raw(bytes: Uint8Array): this {
    if (bytes.byteLength === 0) return this;
    this.flushScratch();
    this.parts.push(bytes);
    this.total += bytes.byteLength;
    return this;
  }

  finish(): PreEncodedMessage {
    this.flushScratch();
    return new PreEncodedMessage(this.parts, this.total);
  }
}

const scalarSize = (field: number, value: number | bigint): number => (value === 0 || value === 0n ? 0 : varintSize(field << 3) + varintSize(value));
const fieldSize = (field: number, length: number): number => varintSize(field << 3) + varintSize(length) + length;

function holeSize(hole: HoleFields): number {
  return scalarSize(1, hole.address) + scalarSize(2, hole.length) + scalarSize(3, hole.reason);
}

function writeHoles(w: PartsWriter, field: number, holes: readonly HoleFields[]): void {
  for (const hole of holes) {
    w.lengthDelimited(field, holeSize(hole)).scalar(1, hole.address).scalar(2, hole.length).scalar(3, hole.reason);
  }
}

/** What one DumpMemoryResponse carries. */
export interface DumpChunkFields {
  readonly gpa: bigint;
  /** The chunk's bytes as the page views they came in, in address order. */
  readonly data: readonly Uint8Array[];
  readonly dataBytes: number;
  readonly bytesDone: bigint;
  readonly bytesTotal: bigint;
  readonly holes: readonly HoleFields[];
}

/** Encodes a DumpMemoryResponse (memory.proto) around the chunk's page views. */
export function encodeDumpChunk(chunk: DumpChunkFields): PreEncodedMessage {
  const w = new PartsWriter(64 + 32 * chunk.holes.length);
  w.scalar(1, chunk.gpa);
  if (chunk.dataBytes > 0) {
    w.lengthDelimited(2, chunk.dataBytes);
    for (const page of chunk.data) w.raw(page);
  }
  w.lengthDelimited(3, scalarSize(1, chunk.bytesDone) + scalarSize(2, chunk.bytesTotal)).scalar(1, chunk.bytesDone).scalar(2, chunk.bytesTotal);
  writeHoles(w, 4, chunk.holes);
  return w.finish();
}

/** One range's outcome: its data as views (holes as zeros) and holes, or a Status for the range. */
export type RangeOutcome =
  | { readonly data: readonly Uint8Array[]; readonly dataBytes: number; readonly holes: readonly HoleFields[] }
  | { readonly error: Status };

/** Encodes a BatchReadMemoryResponse (memory.proto), results in request order. */
export function encodeBatchReadResponse(results: readonly RangeOutcome[]): PreEncodedMessage {
  const w = new PartsWriter(64 + 16 * results.length);
  for (const result of results) {
    if ("error" in result) {
      const status = toBinary(StatusSchema, result.error);
      w.lengthDelimited(1, fieldSize(2, status.byteLength)).lengthDelimited(2, status.byteLength).raw(status);
      continue;
    }
    let size = fieldSize(1, result.dataBytes);
    for (const hole of result.holes) size += fieldSize(3, holeSize(hole));
    // `data` is a oneof member: written even when empty (explicit presence).
    w.lengthDelimited(1, size).lengthDelimited(1, result.dataBytes);
    for (const piece of result.data) w.raw(piece);
    writeHoles(w, 3, result.holes);
  }
  return w.finish();
}
