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

/**
 * The codec of one message type. Its code is generated on first use, not here: the service
 * definition and the SDK ask for the codec of every method at start-up (≈ 60 ms for all of them)
 * and a process calls few.
 */
export function binaryCodec<Desc extends DescMessage>(schema: Desc): BinaryCodec<Desc> {
  let codec = cache.get(schema);
  if (codec === undefined) {
    codec = new SchemaCodec(schema);
    cache.set(schema, codec);
  }
  return codec as unknown as BinaryCodec<Desc>;
}

class SchemaCodec implements BinaryCodec<DescMessage> {
  /** Undefined until first use; null where protobuf-es serves the type throughout. */
  private code: GeneratedCodec | null | undefined;

  constructor(private readonly schema: DescMessage) {}

  get generated(): boolean {
    return this.generatedCode() !== null;
  }

  encode(message: MessageShape<DescMessage>, allocate?: (size: number) => Uint8Array): Uint8Array {
    const code = this.generatedCode();
    if (code !== null) {
      try {
        return code.encode(message, allocate ?? newBytes);
      } catch {
        // FALLBACK, or an error protobuf-es reports in its own words: it decides either way.
        fallbacks++;
      }
    }
    return copyInto(toBinary(this.schema, message), allocate);
  }

  decode(bytes: Uint8Array): MessageShape<DescMessage> {
    const code = this.generatedCode();
    if (code !== null) {
      try {
        return code.decode(bytes) as MessageShape<DescMessage>;
      } catch {
        fallbacks++;
      }
    }
    return fromBinary(this.schema, bytes);
  }

  private generatedCode(): GeneratedCodec | null {
    if (this.code === undefined) this.code = generateCodec(this.schema) ?? null;
    return this.code;
  }
}

function copyInto(bytes: Uint8Array, allocate: ((size: number) => Uint8Array) | undefined): Uint8Array {
  if (allocate === undefined) return bytes;
  const out = allocate(bytes.byteLength);
  out.set(bytes);
  return out;
}
