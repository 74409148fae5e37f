// SPDX-License-Identifier: Apache-2.0
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { KvmiProtocolError } from "../errors.js";
import { v9 } from "../wire/dialects/v9.js";
import { createFramer } from "./framer.js";

const MAX_BODY_BYTES = v9.maxMessageBytes;

function message(id: number, seq: number, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(8 + body.length);
  const view = new DataView(out.buffer);
  view.setUint16(0, id, true);
  view.setUint16(2, body.length, true);
  view.setUint32(4, seq, true);
  out.set(body, 8);
  return out;
}

function collect(chunks: Uint8Array[]): Array<{ id: number; seq: number; body: number[] }> {
  const framer = createFramer(v9);
  const out: Array<{ id: number; seq: number; body: number[] }> = [];
  for (const chunk of chunks) framer.push(chunk, (hdr, body) => out.push({ id: hdr.id, seq: hdr.seq, body: [...body] }));
  expect(framer.pendingBytes).toBe(0);
  return out;
}

const arbMessage = fc.record({
  id: fc.integer({ min: 0, max: 0xffff }),
  seq: fc.integer({ min: 0, max: 0xffff_ffff }),
  body: fc.uint8Array({ maxLength: 600 }),
});

describe("framer", () => {
  it("decodes back-to-back messages in one chunk, zero-length bodies included", () => {
    const stream = Buffer.concat([message(1, 7, new Uint8Array()), message(6, 8, new Uint8Array([1, 2, 3]))]);
    expect(collect([stream])).toEqual([
      { id: 1, seq: 7, body: [] },
      { id: 6, seq: 8, body: [1, 2, 3] },
    ]);
  });

  it("accepts a body of exactly KVMI_MSG_SIZE and rejects one byte more", () => {
    expect(collect([message(6, 1, new Uint8Array(MAX_BODY_BYTES))])[0]!.body.length).toBe(MAX_BODY_BYTES);
    const oversize = new Uint8Array(8);
    new DataView(oversize.buffer).setUint16(2, MAX_BODY_BYTES + 1, true);
    const framer = createFramer(v9);
    expect(() => framer.push(oversize, () => undefined)).toThrow(KvmiProtocolError);
    // A failed framer stays failed: the session must be closed, not resynchronised.
    expect(() => framer.push(new Uint8Array(8), () => undefined)).toThrow(KvmiProtocolError);
  });

  it("decodes the same messages however the stream is split (every offset)", () => {
    fc.assert(
      fc.property(fc.array(arbMessage, { minLength: 1, maxLength: 4 }), (messages) => {
        const stream = Buffer.concat(messages.map((m) => message(m.id, m.seq, m.body)));
        const expected = messages.map((m) => ({ id: m.id, seq: m.seq, body: [...m.body] }));
        for (let cut = 0; cut <= stream.length; cut++) {
          expect(collect([stream.subarray(0, cut), stream.subarray(cut)])).toEqual(expected);
        }
        expect(collect([...stream].map((b) => new Uint8Array([b])))).toEqual(expected);
      }),
      { numRuns: 40 },
    );
  });

  it("hands out bodies that survive later pushes (split messages are copied out)", () => {
    const framer = createFramer(v9);
    const bodies: Uint8Array[] = [];
    const stream = Buffer.concat([message(1, 1, new Uint8Array([9, 9])), message(2, 2, new Uint8Array([8, 8]))]);
    framer.push(stream.subarray(0, 9), (_h, b) => bodies.push(b));
    framer.push(stream.subarray(9, 14), (_h, b) => bodies.push(b));
    framer.push(stream.subarray(14), (_h, b) => bodies.push(b));
    expect(bodies.map((b) => [...b])).toEqual([
      [9, 9],
      [8, 8],
    ]);
  });

  it("raises only KvmiProtocolError on random bytes", () => {
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 20_000 }), { maxLength: 5 }), (chunks) => {
        const framer = createFramer(v9);
        try {
          for (const chunk of chunks) framer.push(chunk, () => undefined);
        } catch (err) {
          expect(err).toBeInstanceOf(KvmiProtocolError);
        }
      }),
      { numRuns: 200 },
    );
  });
});
