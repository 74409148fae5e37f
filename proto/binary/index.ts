// SPDX-License-Identifier: Apache-2.0
/**
 * `@kvmi/proto/binary`: the binary encoding of the kvmi.v1 messages, as `toBinary`/`fromBinary` of
 * protobuf-es give it, through code generated from the schema (compile.ts) where that is faster,
 * and through protobuf-es itself for everything the generated code leaves to it. Used for the
 * messages the bridge sends (its responses) and those the SDK sends and receives; the bridge still
 * decodes what clients send with protobuf-es (decision 0180).
 */
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import type { DescMessage, MessageShape } from "@bufbuild/protobuf";
import { generateCodec } from "./compile.js";
import type { GeneratedCodec } from "./compile.js";

export interface BinaryCodec<Desc extends DescMessage> {
  /** Whether generated code serves this message type (false: protobuf-es throughout). */
  readonly generated: boolean;
  /**
   * The bytes `toBinary(schema, message)` gives.
   * @param allocate where the bytes go (exactly their size); `Buffer.allocUnsafe` for grpc-js.
   */
  encode(message: MessageShape<Desc>, allocate?: (size: number) => Uint8Array): Uint8Array;
  /** The message `fromBinary(schema, bytes)` gives (bytes fields are views of `bytes`), or its error. */
  decode(bytes: Uint8Array): MessageShape<Desc>;
}

const newBytes = (size: number): Uint8Array => new Uint8Array(size);

let fallbacks = 0;

/** How many messages went to protobuf-es after generated code declined them (for tests). @internal */
export function fallbackCount(): number {
  return fallbacks;
}

const cache = new WeakMap<DescMessage, BinaryCodec<DescMessage>>();

/** The codec of one message type, generated on first use. */
export function binaryCodec<Desc extends DescMessage>(schema: Desc): BinaryCodec<Desc> {
  let codec = cache.get(schema);
  if (codec === undefined) {
    codec = makeCodec(schema, generateCodec(schema));
    cache.set(schema, codec);
  }
  return codec as unknown as BinaryCodec<Desc>;
}

function makeCodec(schema: DescMessage, generated: GeneratedCodec | undefined): BinaryCodec<DescMessage> {
  if (generated === undefined) {
    return {
      generated: false,
      encode: (message, allocate) => copyInto(toBinary(schema, message), allocate),
      decode: (bytes) => fromBinary(schema, bytes),
    };
  }
  return {
    generated: true,
    encode(message, allocate = newBytes) {
      try {
        return generated.encode(message, allocate);
      } catch {
        // FALLBACK, or an error protobuf-es reports in its own words: it decides either way.
        fallbacks++;
        return copyInto(toBinary(schema, message), allocate);
      }
    },
    decode(bytes) {
      try {
        return generated.decode(bytes) as MessageShape<DescMessage>;
      } catch {
        fallbacks++;
        return fromBinary(schema, bytes);
      }
    },
  };
}

function copyInto(bytes: Uint8Array, allocate: ((size: number) => Uint8Array) | undefined): Uint8Array {
  if (allocate === undefined) return bytes;
  const out = allocate(bytes.byteLength);
  out.set(bytes);
  return out;
}
