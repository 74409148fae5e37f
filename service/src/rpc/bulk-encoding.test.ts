// SPDX-License-Identifier: Apache-2.0
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  BatchReadMemoryResponseSchema,
  DumpMemoryResponseSchema,
  HoleReason,
  MemoryRangeResultSchema,
  StatusSchema,
} from "@kvmi/proto";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { encodeBatchReadResponse, encodeDumpChunk, PreEncodedMessage } from "./bulk-encoding.js";
import type { HoleFields, RangeOutcome } from "./bulk-encoding.js";
import { createServiceDefinition } from "./service-definition.js";
import { IntrospectionService } from "@kvmi/proto";

/** Pages of `count` × `size` bytes, each filled with its own index so misplaced parts show. */
function pagesOf(count: number, size: number): Uint8Array[] {
  return Array.from({ length: count }, (_, i) => new Uint8Array(size).fill((i * 7 + 1) & 0xff));
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  return new Uint8Array(Buffer.concat(parts));
}

const holeArb = fc.record({
  address: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
  length: fc.bigInt({ min: 0n, max: 1n << 40n }),
  reason: fc.constantFrom(HoleReason.UNSPECIFIED, HoleReason.NOT_PRESENT, HoleReason.NOT_MAPPED),
});

describe("bulk response encoding", () => {
  it("writes a DumpMemoryResponse byte for byte as protobuf-es does, for any gpa, progress and holes", () => {
    fc.assert(
      fc.property(
        fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
        fc.nat({ max: 5 }),
        fc.constantFrom(1, 100, 4096),
        fc.bigInt({ min: 0n, max: 1n << 50n }),
        fc.bigInt({ min: 0n, max: 1n << 50n }),
        fc.array(holeArb, { maxLength: 4 }),
        (gpa, count, size, bytesDone, bytesTotal, holes: HoleFields[]) => {
          const data = pagesOf(count, size);
          const encoded = encodeDumpChunk({ gpa, data, dataBytes: count * size, bytesDone, bytesTotal, holes });
          const expected = toBinary(
            DumpMemoryResponseSchema,
            create(DumpMemoryResponseSchema, { gpa, data: concat(data), progress: { bytesDone, bytesTotal }, holes }),
          );
          const bytes = encoded.toBuffer();
          expect(bytes.byteLength).toBe(encoded.byteLength);
          // Buffer.equals, not toEqual: a deep compare of megabytes per run would dominate the test.
          expect(bytes.equals(expected)).toBe(true);
        },
      ),
      { numRuns: 100 },
    );
  });

  it("references the page buffers instead of copying them until the message is written", () => {
    const data = pagesOf(3, 4096);
    const encoded = encodeDumpChunk({ gpa: 0x1000n, data, dataBytes: 3 * 4096, bytesDone: 1n, bytesTotal: 2n, holes: [] });
    for (const page of data) expect(encoded.parts).toContain(page);
    // The parts are the message: a later change of a page would show in the output.
    data[1]!.fill(0xee);
    const decoded = fromBinary(DumpMemoryResponseSchema, encoded.toBuffer());
    expect(decoded.data.subarray(4096, 8192).every((b) => b === 0xee)).toBe(true);
  });

  it("writes a BatchReadMemoryResponse byte for byte as protobuf-es does: data (also empty), holes and errors", () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.oneof(
            fc.record({ count: fc.nat({ max: 4 }), size: fc.constantFrom(1, 17, 4096), holes: fc.array(holeArb, { maxLength: 3 }) }),
            fc.record({ code: fc.integer({ min: 1, max: 16 }), message: fc.string({ maxLength: 40 }) }),
          ),
          { minLength: 0, maxLength: 5 },
        ),
        (specs) => {
          const outcomes: RangeOutcome[] = specs.map((spec) =>
            "code" in spec
              ? { error: create(StatusSchema, { code: spec.code, message: spec.message }) }
              : { data: pagesOf(spec.count, spec.size), dataBytes: spec.count * spec.size, holes: spec.holes },
          );
          const expected = toBinary(
            BatchReadMemoryResponseSchema,
            create(BatchReadMemoryResponseSchema, {
              results: outcomes.map((o) =>
                "error" in o
                  ? create(MemoryRangeResultSchema, { result: { case: "error", value: o.error } })
                  : create(MemoryRangeResultSchema, { result: { case: "data", value: concat(o.data) }, holes: [...o.holes] }),
              ),
            }),
          );
          expect(encodeBatchReadResponse(outcomes).toBuffer().equals(expected)).toBe(true);
        },
      ),
      { numRuns: 100 },
    );
  });

  it("goes through the service definition's serializer as it is; other messages are protobuf-es encoded", () => {
    const definition = createServiceDefinition(IntrospectionService);
    const encoded = encodeDumpChunk({ gpa: 0x2000n, data: pagesOf(1, 4096), dataBytes: 4096, bytesDone: 4096n, bytesTotal: 8192n, holes: [] });
    expect(encoded).toBeInstanceOf(PreEncodedMessage);
    // What grpc-js does with a serialized message (serializeMessage): allocate the framed buffer,
    // write the 5-byte gRPC prefix, and copy the message in after it.
    const serialized = definition.dumpMemory.responseSerialize(encoded as never);
    const framed = Buffer.alloc(serialized.byteLength + 5, 0xee);
    framed.writeUInt8(0, 0);
    framed.writeUInt32BE(serialized.byteLength, 1);
    serialized.copy(framed, 5);
    expect(framed.subarray(5).equals(encoded.toBuffer())).toBe(true);
    const back = definition.dumpMemory.responseDeserialize(framed.subarray(5));
    expect(back.gpa).toBe(0x2000n);
    expect(back.data.length).toBe(4096);
    expect(back.progress?.bytesTotal).toBe(8192n);
    const plain = definition.dumpMemory.responseSerialize(create(DumpMemoryResponseSchema, { gpa: 5n }));
    expect(definition.dumpMemory.responseDeserialize(plain).gpa).toBe(5n);
  });

  it("copies its parts into a target at an offset, and refuses a target too small", () => {
    const encoded = encodeDumpChunk({ gpa: 0x3000n, data: pagesOf(3, 4096), dataBytes: 3 * 4096, bytesDone: 0n, bytesTotal: 0n, holes: [] });
    const target = new Uint8Array(encoded.byteLength + 9).fill(0xee);
    expect(encoded.copy(target, 7)).toBe(encoded.byteLength);
    expect(Buffer.from(target.subarray(7, 7 + encoded.byteLength)).equals(encoded.toBuffer())).toBe(true);
    expect([...target.subarray(0, 7), ...target.subarray(7 + encoded.byteLength)]).toEqual(new Array(9).fill(0xee));
    expect(() => encoded.copy(new Uint8Array(encoded.byteLength + 3), 4)).toThrow(RangeError);
  });
});
