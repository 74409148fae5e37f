// SPDX-License-Identifier: Apache-2.0
/**
 * Message-level property tests (conventions §7 item 4), for every command and every event of every
 * dialect (v9, v12, kvmi-v7), each framed as its dialect frames it:
 *   - request: encodeCommand -> decodeCommand returns the input, variable tails included;
 *   - reply: encodeReply -> decodeReply returns the input; error replies carry no data (size 8);
 *   - event: encodeEvent -> decodeEvent; event reply: encodeEventReply -> decodeEventReply + decodeEventReplyData;
 *   - random bytes through decodeCommand / decodeReply / decodeEvent / decodeEventReply(Data) raise
 *     nothing but KvmiProtocolError.
 * Arbitraries are derived generically from the layout tables (test/support/arbitraries.ts), so a
 * new command, field or dialect is covered without touching this file.
 */
import fc from "fast-check";
import { KvmiProtocolError } from "@kvmi/kvm-bridge";
import { describe, expect, it } from "vitest";
import {
  decodeCommand,
  decodeEvent,
  decodeEventReply,
  decodeEventReplyData,
  decodeReply,
  encodeCommand,
  encodeEvent,
  encodeEventReply,
  encodeReply,
  eventMessageId,
  HEADER_BYTES,
  kvmiV7,
  readMsgHdr,
  v12,
  v9,
  zeroValue,
} from "@kvmi/kvm-bridge/wire";
import type { BodySchema, Dialect, Field, Layout } from "@kvmi/kvm-bridge/wire";
import { bodyArb, comparable, layoutArb } from "../support/arbitraries.js";
import type { Obj } from "../support/arbitraries.js";

/** KvmiProtocolError through the package's public entry point (conventions §5 brand check). */
function isKvmiProtocolError(error: unknown): boolean {
  return error instanceof KvmiProtocolError;
}

/** Runs per property. Each command/event gets its own property, so the total stays in the thousands. */
const RUNS = 60;
const FUZZ_RUNS = 400;

const seqArb = fc.integer({ min: 0, max: 0xffff_ffff });
const vcpuArb = fc.integer({ min: 0, max: 0xffff });

const DIALECTS: ReadonlyArray<readonly [string, Dialect]> = [v9, v12, kvmiV7].map((d) => [d.name, d] as const);

function fixedBytes(schema: BodySchema): number {
  return schema.layout?.size ?? 0;
}

function archOf(dialect: Dialect): Layout {
  return (dialect.layouts.event.fields["arch"] as Extract<Field, { kind: "struct" }>).layout;
}

// ---------------------------------------------------------------------------------------------

describe("the tables cover the whole v9 message set", () => {
  it("has 25 commands (ids 1..25) and 11 events (ids 0..10)", () => {
    expect(v9.commands.map((c) => c.id).sort((a, b) => a - b)).toEqual(Array.from({ length: 25 }, (_, i) => i + 1));
    expect(v9.events.map((e) => e.id).sort((a, b) => a - b)).toEqual(Array.from({ length: 11 }, (_, i) => i));
  });
});

describe.each(DIALECTS)("%s", (_name, dialect) => {
const COMMANDS = dialect.commands;
const EVENTS = dialect.events;
const MAX_BODY = dialect.maxMessageBytes;
const VCPU_HDR = dialect.layouts.vcpuHdr.size;
const ERROR_CODE = dialect.layouts.errorCode.size;

describe("command requests: encodeCommand -> decodeCommand", () => {
  for (const spec of COMMANDS) {
    it(`${spec.name} (id ${spec.id}, ${spec.scope})`, () => {
      const vcpuBytes = spec.scope === "vcpu" ? VCPU_HDR : 0;
      const budget = MAX_BODY - vcpuBytes - fixedBytes(spec.request);
      fc.assert(
        fc.property(seqArb, vcpuArb, bodyArb(spec.request, budget), (seq, vcpu, generated) => {
          // A VM command that names its vCPU in the body (v12 VM_PAUSE_VCPU) takes it from `vcpu`.
          const addressed = spec.scope === "vcpu" || spec.vcpuField !== undefined;
          const body: Obj = spec.vcpuField === undefined ? generated : { ...generated, [spec.vcpuField]: vcpu };
          const message = encodeCommand(dialect, spec, seq, body, addressed ? vcpu : undefined);
          expect(readMsgHdr(message)).toStrictEqual({ id: spec.id, size: message.length - HEADER_BYTES, seq });
          expect(message.length - HEADER_BYTES).toBeLessThanOrEqual(MAX_BODY);
          // comparable(): byte arrays as hex, which vitest compares far faster than element by element.
          expect(comparable(decodeCommand(dialect, spec, message.subarray(HEADER_BYTES)))).toStrictEqual(
            comparable({ value: body, nonZeroPadding: undefined, extraBytes: 0, vcpu: addressed ? vcpu : undefined, vcpuHdrPadding: false }),
          );
        }),
        { numRuns: RUNS },
      );
    });
  }
});

describe("command replies: encodeReply -> decodeReply", () => {
  for (const spec of COMMANDS) {
    it(`${spec.name}: success carries the reply data`, () => {
      const budget = MAX_BODY - ERROR_CODE - fixedBytes(spec.reply);
      fc.assert(
        fc.property(seqArb, bodyArb(spec.reply, budget), (seq, value) => {
          const message = encodeReply(dialect, spec, seq, 0, value);
          expect(readMsgHdr(message)).toStrictEqual({ id: spec.id, size: message.length - HEADER_BYTES, seq });
          expect(comparable(decodeReply(dialect, spec, message.subarray(HEADER_BYTES)))).toStrictEqual(comparable({ err: 0, value }));
        }),
        { numRuns: RUNS },
      );
    });

    it(`${spec.name}: an error carries no data (size 8)`, () => {
      const budget = MAX_BODY - ERROR_CODE - fixedBytes(spec.reply);
      const errArb = fc.oneof(
        fc.constantFrom(-1, -2, -7, -11, -12, -14, -16, -22, -95, -1000),
        fc.integer({ min: -0x8000_0000, max: -1 }),
        fc.integer({ min: 1, max: 0x7fff_ffff }),
      );
      fc.assert(
        fc.property(seqArb, errArb, fc.option(bodyArb(spec.reply, budget), { nil: undefined }), (seq, err, value) => {
          // Data passed along with an error must not reach the wire.
          const message = encodeReply(dialect, spec, seq, err, value);
          expect(readMsgHdr(message)).toStrictEqual({ id: spec.id, size: ERROR_CODE, seq });
          expect(message.length).toBe(HEADER_BYTES + ERROR_CODE);
          expect(decodeReply(dialect, spec, message.subarray(HEADER_BYTES))).toStrictEqual({ err });
        }),
        { numRuns: RUNS },
      );
    });
  }
});

describe("events: encodeEvent -> decodeEvent", () => {
  const archLayout = archOf(dialect);
  for (const spec of EVENTS) {
    it(`${spec.name} (id ${spec.id}, ${spec.scope})`, () => {
      const payloadArb = spec.payload === null ? fc.constant(undefined) : layoutArb(spec.payload);
      // Where a VM event carries no vCPU part (v12), the decoder reports vcpu 0 and a zero arch.
      const withCommon = spec.scope === "vcpu" || dialect.eventFraming.vmEventsCarryCommon;
      fc.assert(
        fc.property(seqArb, vcpuArb, layoutArb(archLayout), payloadArb, (seq, vcpu, arch, payload) => {
          const message = encodeEvent(dialect, spec, seq, vcpu, arch, payload);
          const size = (dialect.layouts.eventHdr?.size ?? 0) + (withCommon ? dialect.layouts.event.size : 0) + (spec.payload?.size ?? 0);
          expect(readMsgHdr(message)).toStrictEqual({ id: eventMessageId(dialect, spec.scope), size, seq });
          expect(message.length).toBe(HEADER_BYTES + size);
          expect(decodeEvent(dialect, message.subarray(HEADER_BYTES), eventMessageId(dialect, spec.scope))).toStrictEqual({
            spec,
            eventId: spec.id,
            vcpu: withCommon ? vcpu : 0,
            arch: withCommon ? arch : zeroValue(archLayout),
            payload,
          });
        }),
        { numRuns: RUNS },
      );
    });
  }
});

describe("event replies: encodeEventReply -> decodeEventReply + decodeEventReplyData", () => {
  for (const spec of EVENTS) {
    it(`${spec.name} (id ${spec.id})`, () => {
      const dataArb = spec.replyData === null ? fc.constant(undefined) : layoutArb(spec.replyData);
      const actionArb = fc.oneof(fc.constantFrom(0, 1, 2), fc.integer({ min: 0, max: 0xff }));
      fc.assert(
        fc.property(seqArb, vcpuArb, actionArb, dataArb, (seq, vcpu, action, replyData) => {
          const message = encodeEventReply(dialect, spec, seq, vcpu, action, replyData);
          const dataBytes = spec.replyData?.size ?? 0;
          const size = VCPU_HDR + dialect.layouts.eventReply.size + dataBytes;
          expect(readMsgHdr(message)).toStrictEqual({ id: dialect.eventFraming.replyMessageId, size, seq });
          expect(message.length).toBe(HEADER_BYTES + size);
          const decoded = decodeEventReply(dialect, message.subarray(HEADER_BYTES));
          expect({ ...decoded, data: decoded.data.length }).toStrictEqual({
            vcpu,
            vcpuHdrPadding: false,
            action,
            event: spec.id,
            replyPadding: false,
            data: dataBytes,
          });
          expect(decodeEventReplyData(spec, decoded.data)).toStrictEqual(replyData);
        }),
        { numRuns: RUNS },
      );
    });
  }
});

// ---------------------------------------------------------------------------------------------
// Random bytes: only KvmiProtocolError may escape a decoder (conventions §7 item 4).

/** Calls `fn`; anything thrown that is not a KvmiProtocolError fails with a precise description. */
function onlyProtocolErrors(what: string, input: Uint8Array, fn: () => unknown): void {
  try {
    fn();
  } catch (error) {
    if (isKvmiProtocolError(error)) return;
    const name = error instanceof Error ? `${error.constructor.name}: ${error.message}` : String(error);
    throw new Error(
      `${what} threw ${name} (not KvmiProtocolError) for ${input.length} bytes ` +
        `[${Buffer.from(input).toString("hex")}] (byteOffset ${input.byteOffset}, buffer ${input.buffer.byteLength} bytes)`,
      { cause: error },
    );
  }
}

/**
 * Random bodies: fully random, plus ones with small u16 values at offsets 0 and 8 (where
 * SET_PAGE_ACCESS `count`, WRITE_PHYSICAL `size` and, after the vCPU header, GET_REGISTERS `nmsrs`
 * live) and ones with a plausible kvmi_event header, so that the deeper paths (tails, payloads) are reached. Some are views into a larger buffer and
 * some own their buffer exactly, as the framer hands out both.
 */
const randomBody = fc
  .tuple(
    fc.oneof(
      fc.uint8Array({ maxLength: 64 }),
      fc.uint8Array({ minLength: 0, maxLength: 700 }),
      fc
        .tuple(fc.uint8Array({ minLength: 0, maxLength: 200 }), fc.integer({ min: 0, max: 12 }), fc.integer({ min: 0, max: 12 }))
        .map(([b, at0, at8]) => {
          const out = Uint8Array.from(b);
          if (out.length > 1) [out[0], out[1]] = [at0, 0];
          if (out.length > 9) [out[8], out[9]] = [at8, 0];
          return out;
        }),
      fc.uint8Array({ minLength: 544, maxLength: 600 }).chain((b) =>
        fc.tuple(fc.integer({ min: 540, max: b.length + 4 }), fc.integer({ min: 0, max: 15 })).map(([size, event]) => {
          const out = Uint8Array.from(b);
          out[0] = size & 0xff;
          out[1] = size >> 8;
          out[4] = event;
          return out;
        }),
      ),
    ),
    fc.boolean(),
    fc.integer({ min: 0, max: 16 }),
  )
  .map(([body, asView, slack]) => {
    if (!asView) return body;
    const host = new Uint8Array(body.length + slack + 3);
    host.set(body, 3);
    return host.subarray(3, 3 + body.length);
  });

/** Always tried first: empty and short bodies, each owning its ArrayBuffer exactly (as a framer copy does). */
const SHORT_BODIES: Array<[Uint8Array]> = [[new Uint8Array(0)], [new Uint8Array(7)], [new Uint8Array(15)], [new Uint8Array(8).fill(0xff)]];

describe("random bytes only raise KvmiProtocolError", () => {
  for (const spec of COMMANDS) {
    it(`decodeCommand for ${spec.name}`, () => {
      fc.assert(
        fc.property(randomBody, (body) => {
          onlyProtocolErrors(`decodeCommand(${dialect.name}, ${spec.name})`, body, () => decodeCommand(dialect, spec, body));
        }),
        { numRuns: FUZZ_RUNS, examples: SHORT_BODIES },
      );
    });

    it(`decodeReply for ${spec.name}`, () => {
      fc.assert(
        fc.property(randomBody, (body) => {
          onlyProtocolErrors(`decodeReply(${dialect.name}, ${spec.name})`, body, () => decodeReply(dialect, spec, body));
        }),
        { numRuns: FUZZ_RUNS, examples: SHORT_BODIES },
      );
    });
  }

  it("decodeEvent", () => {
    fc.assert(
      fc.property(randomBody, (body) => {
        onlyProtocolErrors(`decodeEvent(${dialect.name})`, body, () => decodeEvent(dialect, body));
        onlyProtocolErrors(`decodeEvent(${dialect.name}, vCPU id)`, body, () => decodeEvent(dialect, body, dialect.eventFraming.vcpuEventMessageId));
      }),
      { numRuns: FUZZ_RUNS * 4, examples: SHORT_BODIES },
    );
  });

  it("decodeEventReply and decodeEventReplyData", () => {
    fc.assert(
      fc.property(randomBody, fc.constantFrom(...EVENTS), (body, spec) => {
        onlyProtocolErrors(`decodeEventReply(${dialect.name})`, body, () => decodeEventReply(dialect, body));
        onlyProtocolErrors(`decodeEventReplyData(${spec.name})`, body.subarray(0, 32), () =>
          decodeEventReplyData(spec, body.subarray(0, 32)),
        );
      }),
      { numRuns: FUZZ_RUNS },
    );
  });
});

/** The outcome of a decoder call, comparable across runs: its value, or the class of what it threw. */
function outcome(fn: () => unknown): unknown {
  try {
    return { value: comparable(fn()) };
  } catch (error) {
    return { threw: error instanceof Error ? error.constructor.name : typeof error };
  }
}

describe("decoders do not depend on what lies around the body", () => {
  // The framer hands out bodies both as views into a socket chunk and as exact copies (a message
  // split across chunks): the same bytes must decode the same either way.
  for (const spec of COMMANDS) {
    it(`decodeCommand for ${spec.name}: own buffer vs view into a larger one`, () => {
      fc.assert(
        fc.property(fc.uint8Array({ maxLength: 48 }), fc.integer({ min: 1, max: 32 }), (raw, slack) => {
          const own = Uint8Array.from(raw);
          const host = new Uint8Array(raw.length + slack).fill(0xa5);
          host.set(raw);
          const view = host.subarray(0, raw.length);
          expect(outcome(() => decodeCommand(dialect, spec, own)), `${spec.name} body [${Buffer.from(raw).toString("hex")}]`).toStrictEqual(
            outcome(() => decodeCommand(dialect, spec, view)),
          );
        }),
        { numRuns: FUZZ_RUNS },
      );
    });
  }
});
});
