// SPDX-License-Identifier: Apache-2.0
/**
 * Message-level property tests (conventions §7 item 4), for every command of `V9_COMMANDS` and every
 * event of `V9_EVENTS`:
 *   - request: encodeCommand -> decodeCommand returns the input, variable tails included;
 *   - reply: encodeReply -> decodeReply returns the input; error replies carry no data (size 8);
 *   - event: encodeEvent -> decodeEvent; event reply: encodeEventReply -> decodeEventReply + decodeEventReplyData;
 *   - random bytes through decodeCommand / decodeReply / decodeEvent / decodeEventReply(Data) raise
 *     nothing but KvmiProtocolError.
 * Arbitraries are derived generically from the layout tables by walking the Field kinds, so a new
 * command or field is covered without touching this file.
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
  HEADER_BYTES,
  readMsgHdr,
  v9,
  V9_COMMANDS,
  V9_EVENTS,
} from "@kvmi/kvm-bridge/wire";
import type { BodySchema, CommandSpec, EventSpec, Field, Layout, TailSpec } from "@kvmi/kvm-bridge/wire";

type ScalarType = Extract<Field, { kind: "scalar" }>["type"];

/** KvmiProtocolError through the package's public entry point (conventions §5 brand check). */
function isKvmiProtocolError(error: unknown): boolean {
  return error instanceof KvmiProtocolError;
}

/** Bytes of one tail element, from the C widths (kvmi-abi "Conventions"). */
function tailElementBytes(tail: TailSpec): number {
  const element = tail.element;
  if (element === "bytes") return 1;
  if (typeof element === "string") return { u8: 1, u16: 2, u32: 4, s32: 4, u64: 8, s64: 8 }[element];
  return element.size;
}

type Obj = Record<string, unknown>;

/** Runs per property. Each command/event gets its own property, so the total stays in the thousands. */
const RUNS = 60;
const FUZZ_RUNS = 400;

// ---------------------------------------------------------------------------------------------
// Arbitraries from the layout tables

function scalarArb(type: ScalarType): fc.Arbitrary<number | bigint> {
  switch (type) {
    case "u8":
      return fc.integer({ min: 0, max: 0xff });
    case "u16":
      return fc.integer({ min: 0, max: 0xffff });
    case "u32":
      return fc.integer({ min: 0, max: 0xffff_ffff });
    case "s32":
      return fc.integer({ min: -0x8000_0000, max: 0x7fff_ffff });
    case "u64":
      return fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });
    case "s64":
      return fc.bigInt({ min: -(1n << 63n), max: (1n << 63n) - 1n });
  }
}

function fieldArb(field: Field): fc.Arbitrary<unknown> | undefined {
  switch (field.kind) {
    case "scalar":
      return scalarArb(field.type);
    case "bytes":
      return fc.uint8Array({ minLength: field.length, maxLength: field.length });
    case "array":
      return fc.array(scalarArb(field.type), { minLength: field.count, maxLength: field.count });
    case "struct":
      return layoutArb(field.layout);
    case "pad":
      return undefined; // padding has no value: decoders leave it out
  }
}

const layoutArbs = new Map<Layout, fc.Arbitrary<Obj>>();

/** A value of `layout`: every non-padding field, nested structs included. */
function layoutArb(layout: Layout): fc.Arbitrary<Obj> {
  let arb = layoutArbs.get(layout);
  if (arb === undefined) {
    const record: Record<string, fc.Arbitrary<unknown>> = {};
    for (const [name, field] of Object.entries(layout.fields)) {
      const inner = fieldArb(field);
      if (inner !== undefined) record[name] = inner;
    }
    arb = fc.record(record, { noNullPrototype: true }) as fc.Arbitrary<Obj>;
    layoutArbs.set(layout, arb);
  }
  return arb;
}

function setPath(value: Obj, path: string, to: number): Obj {
  const dot = path.indexOf(".");
  if (dot < 0) return { ...value, [path]: to };
  const head = path.slice(0, dot);
  return { ...value, [head]: setPath(value[head] as Obj, path.slice(dot + 1), to) };
}

/**
 * A body of `schema` in its decoded form: the fixed part, plus the tail with its count field set to
 * the tail's length. `budget` is how many bytes the tail may use (KVMI_MSG_SIZE minus the rest).
 */
function bodyArb(schema: BodySchema, budget: number): fc.Arbitrary<Obj> {
  const fixed = schema.layout === null ? fc.constant<Obj>({}) : layoutArb(schema.layout);
  const tail = schema.tail;
  if (tail === undefined) return fixed;
  const fitting = Math.floor(budget / tailElementBytes(tail));
  const maxCount = Math.min(tail.maxCount ?? fitting, fitting);
  // Mostly small tails, sometimes the largest one the message can hold.
  const count = fc.oneof(
    { weight: 4, arbitrary: fc.integer({ min: 0, max: Math.min(maxCount, 8) }) },
    { weight: 1, arbitrary: fc.integer({ min: 0, max: maxCount }) },
    { weight: 1, arbitrary: fc.constant(maxCount) },
  );
  const element = tail.element;
  const items = count.chain((n): fc.Arbitrary<unknown> => {
    if (element === "bytes") return fc.uint8Array({ minLength: n, maxLength: n });
    if (typeof element === "string") return fc.array(scalarArb(element), { minLength: n, maxLength: n });
    return fc.array(layoutArb(element), { minLength: n, maxLength: n });
  });
  return fc.tuple(fixed, items).map(([value, list]) => {
    const length = (list as { length: number }).length;
    const withTail: Obj = { ...value, [tail.name]: list };
    return tail.countField === undefined ? withTail : setPath(withTail, tail.countField, length);
  });
}

const seqArb = fc.integer({ min: 0, max: 0xffff_ffff });
const vcpuArb = fc.integer({ min: 0, max: 0xffff });

const COMMANDS: readonly CommandSpec[] = Object.values(V9_COMMANDS);
const EVENTS: readonly EventSpec[] = Object.values(V9_EVENTS);
const MAX_BODY = v9.maxMessageBytes;
const VCPU_HDR = v9.layouts.vcpuHdr.size;
const ERROR_CODE = v9.layouts.errorCode.size;

function fixedBytes(schema: BodySchema): number {
  return schema.layout?.size ?? 0;
}

// ---------------------------------------------------------------------------------------------

describe("the tables cover the whole v9 message set", () => {
  it("has 25 commands (ids 1..25) and 11 events (ids 0..10)", () => {
    expect(COMMANDS.map((c) => c.id).sort((a, b) => a - b)).toEqual(Array.from({ length: 25 }, (_, i) => i + 1));
    expect(EVENTS.map((e) => e.id).sort((a, b) => a - b)).toEqual(Array.from({ length: 11 }, (_, i) => i));
  });
});

describe("command requests: encodeCommand -> decodeCommand", () => {
  for (const spec of COMMANDS) {
    it(`${spec.name} (id ${spec.id}, ${spec.scope})`, () => {
      const vcpuBytes = spec.scope === "vcpu" ? VCPU_HDR : 0;
      const budget = MAX_BODY - vcpuBytes - fixedBytes(spec.request);
      fc.assert(
        fc.property(seqArb, vcpuArb, bodyArb(spec.request, budget), (seq, vcpu, body) => {
          const message = encodeCommand(v9, spec, seq, body, spec.scope === "vcpu" ? vcpu : undefined);
          expect(readMsgHdr(message)).toStrictEqual({ id: spec.id, size: message.length - HEADER_BYTES, seq });
          expect(message.length - HEADER_BYTES).toBeLessThanOrEqual(MAX_BODY);
          expect(decodeCommand(v9, spec, message.subarray(HEADER_BYTES))).toStrictEqual({
            value: body,
            nonZeroPadding: undefined,
            extraBytes: 0,
            vcpu: spec.scope === "vcpu" ? vcpu : undefined,
            vcpuHdrPadding: false,
          });
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
          const message = encodeReply(v9, spec, seq, 0, value);
          expect(readMsgHdr(message)).toStrictEqual({ id: spec.id, size: message.length - HEADER_BYTES, seq });
          expect(decodeReply(v9, spec, message.subarray(HEADER_BYTES))).toStrictEqual({ err: 0, value });
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
          const message = encodeReply(v9, spec, seq, err, value);
          expect(readMsgHdr(message)).toStrictEqual({ id: spec.id, size: ERROR_CODE, seq });
          expect(message.length).toBe(HEADER_BYTES + ERROR_CODE);
          expect(decodeReply(v9, spec, message.subarray(HEADER_BYTES))).toStrictEqual({ err });
        }),
        { numRuns: RUNS },
      );
    });
  }
});

describe("events: encodeEvent -> decodeEvent", () => {
  const archLayout = (v9.layouts.event.fields["arch"] as Extract<Field, { kind: "struct" }>).layout;
  for (const spec of EVENTS) {
    it(`${spec.name} (id ${spec.id})`, () => {
      const payloadArb = spec.payload === null ? fc.constant(undefined) : layoutArb(spec.payload);
      fc.assert(
        fc.property(seqArb, vcpuArb, layoutArb(archLayout), payloadArb, (seq, vcpu, arch, payload) => {
          const message = encodeEvent(v9, spec, seq, vcpu, arch, payload);
          const size = v9.layouts.event.size + (spec.payload?.size ?? 0);
          expect(readMsgHdr(message)).toStrictEqual({ id: v9.eventFraming.vcpuEventMessageId, size, seq });
          expect(message.length).toBe(HEADER_BYTES + size);
          expect(decodeEvent(v9, message.subarray(HEADER_BYTES))).toStrictEqual({
            spec,
            eventId: spec.id,
            vcpu,
            arch,
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
          const message = encodeEventReply(v9, spec, seq, vcpu, action, replyData);
          const dataBytes = spec.replyData?.size ?? 0;
          const size = VCPU_HDR + v9.layouts.eventReply.size + dataBytes;
          expect(readMsgHdr(message)).toStrictEqual({ id: v9.eventFraming.vcpuEventMessageId, size, seq });
          expect(message.length).toBe(HEADER_BYTES + size);
          const decoded = decodeEventReply(v9, message.subarray(HEADER_BYTES));
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
          onlyProtocolErrors(`decodeCommand(v9, ${spec.name})`, body, () => decodeCommand(v9, spec, body));
        }),
        { numRuns: FUZZ_RUNS, examples: SHORT_BODIES },
      );
    });

    it(`decodeReply for ${spec.name}`, () => {
      fc.assert(
        fc.property(randomBody, (body) => {
          onlyProtocolErrors(`decodeReply(v9, ${spec.name})`, body, () => decodeReply(v9, spec, body));
        }),
        { numRuns: FUZZ_RUNS, examples: SHORT_BODIES },
      );
    });
  }

  it("decodeEvent", () => {
    fc.assert(
      fc.property(randomBody, (body) => {
        onlyProtocolErrors("decodeEvent(v9)", body, () => decodeEvent(v9, body));
      }),
      { numRuns: FUZZ_RUNS * 4, examples: SHORT_BODIES },
    );
  });

  it("decodeEventReply and decodeEventReplyData", () => {
    fc.assert(
      fc.property(randomBody, fc.constantFrom(...EVENTS), (body, spec) => {
        onlyProtocolErrors("decodeEventReply(v9)", body, () => decodeEventReply(v9, body));
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
    return { value: fn() };
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
          expect(outcome(() => decodeCommand(v9, spec, own)), `${spec.name} body [${Buffer.from(raw).toString("hex")}]`).toStrictEqual(
            outcome(() => decodeCommand(v9, spec, view)),
          );
        }),
        { numRuns: FUZZ_RUNS },
      );
    });
  }
});
