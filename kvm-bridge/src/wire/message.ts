// SPDX-License-Identifier: Apache-2.0
/**
 * Whole KVMI messages for both ends of the socket (kvmi-abi §3): commands and their replies,
 * events and event replies. Every encoder returns one buffer holding the header and the body,
 * because the kernel requires each message in one `send()` (kvmi-abi §3.1); small messages are
 * cut from shared zero-filled slabs (slab.ts), so a message costs no allocation of its own.
 */
import { KvmiArgumentError, KvmiProtocolError } from "../errors.js";
import { bodyBytes, decodeBody, encodeBodyInto } from "./body.js";
import type { DecodedBody } from "./body.js";
import { decodeFrom, encodeInto, findNonZeroPadding, viewOf, zeroValue } from "./codec.js";
import { eventById } from "./dialect.js";
import type { BodySchema, CommandSpec, Dialect, EventSpec } from "./dialect.js";
import type { Layout, LayoutValue } from "./layout.js";
import { kvmiMsgHdr } from "./layouts/common.js";
import { allocateZeroed, FRESH_PIECES } from "./slab.js";
import type { MessageAllocator } from "./slab.js";

/** Size of `kvmi_msg_hdr`, the same in every dialect (kvmi-abi §3.1, §1.4). */
export const HEADER_BYTES = kvmiMsgHdr.size;

/** A decoded `kvmi_msg_hdr`. */
export interface MsgHdr {
  readonly id: number;
  readonly size: number;
  readonly seq: number;
}

type AnyValue = Record<string, unknown>;

/**
 * Reads `kvmi_msg_hdr` at `offset` of `buf` (every dialect shares it, kvmi-abi §1.4).
 * @throws KvmiProtocolError when fewer than 8 bytes are there.
 */
export function readMsgHdr(buf: Uint8Array, offset = 0): MsgHdr {
  return decodeFrom(kvmiMsgHdr, viewOf(buf), offset) as MsgHdr;
}

/**
 * A zeroed buffer for one message with its `kvmi_msg_hdr` written: `view` and `start` (where the
 * body begins in `view`) are for the body's encoders. Small messages share zero-filled slabs
 * (slab.ts), so bytes an encoder skips (padding) are zero.
 */
function allocate(
  dialect: Dialect,
  id: number,
  seq: number,
  bodySize: number,
  into: MessageAllocator = FRESH_PIECES,
): { out: Uint8Array; view: DataView; start: number } {
  if (bodySize > dialect.maxMessageBytes) {
    throw new KvmiArgumentError("size", `message body of ${bodySize} bytes exceeds ${dialect.maxMessageBytes}`);
  }
  const hdr = dialect.layouts.msgHdr;
  const { bytes, view, at } = into.allocate(hdr.size + bodySize);
  encodeInto(hdr, { id, size: bodySize, seq }, view, at);
  return { out: bytes, view, start: at + hdr.size };
}

function writeVcpuHdr(dialect: Dialect, view: DataView, offset: number, vcpu: number): void {
  encodeInto(dialect.layouts.vcpuHdr, { vcpu } as LayoutValue<Layout>, view, offset);
}

// ---------------------------------------------------------------------------------------------
// Commands (tool -> kernel) and replies (kernel -> tool)

/**
 * Encodes a command request: `kvmi_msg_hdr`, then `kvmi_vcpu_hdr` for vCPU-scoped commands,
 * then the body (kvmi-abi §3.2). A VM command that names its vCPU in the body (`spec.vcpuField`,
 * v12 VM_PAUSE_VCPU) gets `vcpu` there instead, so callers pass the vCPU the same way everywhere.
 * @throws KvmiArgumentError when a field is out of range, `vcpu` is missing for a vCPU command,
 *   or the message would exceed KVMI_MSG_SIZE.
 */
export function encodeCommand(
  dialect: Dialect,
  spec: CommandSpec,
  seq: number,
  body: AnyValue,
  vcpu?: number,
): Uint8Array {
  const value = commandValue(spec, body, vcpu);
  const { out, view, start } = allocate(dialect, spec.id, seq, commandBodyBytes(dialect, spec, value));
  encodeCommandBody(dialect, spec, value, vcpu, view, start);
  return out;
}

/**
 * Encodes several commands of one kind back to back into one buffer (a burst written at once):
 * the same bytes as {@link encodeCommand} of each, without a buffer per command and a copy.
 * @throws as {@link encodeCommand}, before anything is returned.
 */
export function encodeCommands(
  dialect: Dialect,
  spec: CommandSpec,
  seqs: readonly number[],
  bodies: readonly AnyValue[],
  vcpu?: number,
): Uint8Array {
  const hdr = dialect.layouts.msgHdr;
  const values = bodies.map((body) => commandValue(spec, body, vcpu));
  const sizes = values.map((value) => {
    const size = commandBodyBytes(dialect, spec, value);
    if (size > dialect.maxMessageBytes) throw new KvmiArgumentError("size", `message body of ${size} bytes exceeds ${dialect.maxMessageBytes}`);
    return size;
  });
  let total = 0;
  for (const size of sizes) total += hdr.size + size;
  const { bytes: out, view, at: first } = allocateZeroed(total);
  let at = first;
  for (let i = 0; i < values.length; i++) {
    encodeInto(hdr, { id: spec.id, size: sizes[i]!, seq: seqs[i]! }, view, at);
    encodeCommandBody(dialect, spec, values[i]!, vcpu, view, at + hdr.size);
    at += hdr.size + sizes[i]!;
  }
  return out;
}

/** The body value of a command: `vcpu` goes into the body for a VM command with `vcpuField`. */
function commandValue(spec: CommandSpec, body: AnyValue, vcpu: number | undefined): AnyValue {
  if ((spec.scope === "vcpu" || spec.vcpuField !== undefined) && vcpu === undefined) {
    throw new KvmiArgumentError("vcpu", `${spec.name} addresses one vCPU and needs its index`);
  }
  return spec.vcpuField === undefined ? body : { ...body, [spec.vcpuField]: vcpu };
}

function commandBodyBytes(dialect: Dialect, spec: CommandSpec, value: AnyValue): number {
  return (spec.scope === "vcpu" ? dialect.layouts.vcpuHdr.size : 0) + bodyBytes(spec.request, value);
}

/** Writes `kvmi_vcpu_hdr` (vCPU commands) and the body at `offset`. */
function encodeCommandBody(dialect: Dialect, spec: CommandSpec, value: AnyValue, vcpu: number | undefined, view: DataView, offset: number): void {
  const vcpuBytes = spec.scope === "vcpu" ? dialect.layouts.vcpuHdr.size : 0;
  if (spec.scope === "vcpu") writeVcpuHdr(dialect, view, offset, vcpu!);
  encodeBodyInto(spec.request, value, view, offset + vcpuBytes);
}

/** What the kernel side learns from a command body, before it decides how to answer. */
export interface DecodedCommand extends DecodedBody {
  /** vCPU index from `kvmi_vcpu_hdr` (vCPU-scoped commands) or from the body's `vcpuField`. */
  readonly vcpu: number | undefined;
  /** True when the `kvmi_vcpu_hdr` padding is non-zero (-KVM_EINVAL at dispatch, kvmi-abi §2.9). */
  readonly vcpuHdrPadding: boolean;
}

/**
 * Decodes a command body the way the v9 kernel reads it: fixed parts zero-extended when short,
 * extra bytes ignored, declared tails required (kvmi-abi §2.7).
 * @throws KvmiProtocolError when a declared tail is truncated (the kernel then closes the socket).
 */
export function decodeCommand(dialect: Dialect, spec: CommandSpec, body: Uint8Array): DecodedCommand {
  const view = viewOf(body);
  let vcpu: number | undefined;
  let vcpuHdrPadding = false;
  let offset = 0;
  if (spec.scope === "vcpu") {
    const hdrLayout = dialect.layouts.vcpuHdr;
    const hdrBytes = new Uint8Array(hdrLayout.size);
    hdrBytes.set(body.subarray(0, hdrLayout.size));
    const hdrView = viewOf(hdrBytes);
    vcpu = (decodeFrom(hdrLayout, hdrView) as { vcpu: number }).vcpu;
    vcpuHdrPadding = findNonZeroPadding(hdrLayout, hdrView) !== undefined;
    offset = hdrLayout.size;
  }
  const decoded = decodeBody(spec.request, view, offset, Math.max(0, body.length - offset), { zeroExtendFixed: true });
  if (spec.vcpuField !== undefined) vcpu = decoded.value[spec.vcpuField] as number;
  // A literal, not a spread: this runs per command in the emulator (and per page of a dump).
  return { value: decoded.value, nonZeroPadding: decoded.nonZeroPadding, extraBytes: decoded.extraBytes, vcpu, vcpuHdrPadding };
}

/**
 * Encodes a reply: `kvmi_msg_hdr{id, seq}`, `kvmi_error_code`, and the reply data only when
 * `err == 0` (kvmi-abi §3.2). `err` is the wire value: 0 or a negative KVM errno. `into` is where
 * the buffer comes from (the emulated kernel's Outbox, slab.ts); a fresh piece by default.
 */
export function encodeReply(
  dialect: Dialect,
  spec: Pick<CommandSpec, "id" | "reply">,
  seq: number,
  err: number,
  value?: AnyValue,
  into?: MessageAllocator,
): Uint8Array {
  const errBytes = dialect.layouts.errorCode.size;
  const withData = err === 0 && (spec.reply.layout !== null || spec.reply.tail !== undefined);
  if (withData && value === undefined) throw new KvmiArgumentError("reply", "a successful reply needs its data");
  const { out, view, start } = allocate(dialect, spec.id, seq, errBytes + (withData ? bodyBytes(spec.reply, value!) : 0), into);
  encodeInto(dialect.layouts.errorCode, { err } as LayoutValue<Layout>, view, start);
  if (withData) encodeBodyInto(spec.reply, value!, view, start + errBytes);
  return out;
}

/** A decoded reply: `err` (0 or negative KVM errno) and, on success, the reply data. */
export type DecodedReply = { readonly err: 0; readonly value: AnyValue } | { readonly err: number; readonly value?: undefined };

/**
 * Decodes a reply body (after `kvmi_msg_hdr`).
 * @throws KvmiProtocolError when the body is shorter than `kvmi_error_code` or than the reply data.
 */
export function decodeReply(dialect: Dialect, spec: Pick<CommandSpec, "reply">, body: Uint8Array): DecodedReply {
  const reply = spec.reply;
  const errBytes = dialect.layouts.errorCode.size;
  // A reply whose data is only bytes (READ_PHYSICAL's page, one per page of a bulk read) needs no
  // DataView and no decoder objects: its error code is read in place, its data is a view.
  if (reply.layout === null && reply.tail?.element === "bytes" && reply.tail.countField === undefined && body.length >= errBytes) {
    const err = readS32(body, errOffset(dialect));
    if (err !== 0) return { err };
    const count = body.length - errBytes;
    return { err: 0, value: { [reply.tail.name]: count === 0 ? new Uint8Array(0) : new Uint8Array(body.buffer, body.byteOffset + errBytes, count) } };
  }
  const view = viewOf(body);
  const { err } = decodeFrom(dialect.layouts.errorCode, view) as { err: number };
  if (err !== 0) return { err };
  return { err: 0, value: decodeBody(reply, view, errBytes, body.length - errBytes).value };
}

/** Where `kvmi_error_code.err` (an s32) sits, from the dialect's table. */
function errOffset(dialect: Dialect): number {
  const field = dialect.layouts.errorCode.fields["err"];
  if (field?.kind !== "scalar" || field.type !== "s32") throw new KvmiProtocolError(`${dialect.layouts.errorCode.name}.err must be an s32`);
  return field.offset;
}

/** A little-endian s32 at `at` (`|` keeps JavaScript's result signed 32-bit). */
function readS32(bytes: Uint8Array, at: number): number {
  return bytes[at]! | (bytes[at + 1]! << 8) | (bytes[at + 2]! << 16) | (bytes[at + 3]! << 24);
}

// ---------------------------------------------------------------------------------------------
// Events (kernel -> tool) and event replies (tool -> kernel)

/** True when an event of `spec`'s scope carries the common part (`layouts.event`) in `dialect`. */
function carriesCommon(dialect: Dialect, scope: EventSpec["scope"]): boolean {
  return scope === "vcpu" || dialect.eventFraming.vmEventsCarryCommon;
}

/** The message id an event of `scope` arrives with in `dialect`. */
export function eventMessageId(dialect: Dialect, scope: EventSpec["scope"]): number {
  return scope === "vm" ? dialect.eventFraming.vmEventMessageId : dialect.eventFraming.vcpuEventMessageId;
}

/** True when a kernel -> tool message with this id is an event in `dialect` (docs/protocol/). */
export function isEventMessage(dialect: Dialect, hdr: MsgHdr): boolean {
  const framing = dialect.eventFraming;
  return (hdr.id === framing.vmEventMessageId || hdr.id === framing.vcpuEventMessageId) && !isEventReplyError(dialect, hdr);
}

/**
 * Encodes an event as `dialect` frames it (docs/protocol/): `kvmi_msg_hdr{id, seq}`, then the
 * event header if the dialect has one (v12 `kvmi_event_hdr`), then the common part with `size`,
 * `vcpu` and `arch` (v9/kvmi-v7 `kvmi_event`, which also holds the event id; v12 `kvmi_vcpu_event`,
 * for vCPU events only), then the payload. UNHOOK carries vcpu 0 and an all-zero arch where the
 * dialect sends a common part for VM events.
 */
export function encodeEvent(
  dialect: Dialect,
  spec: EventSpec,
  seq: number,
  vcpu: number,
  arch: AnyValue,
  payload?: AnyValue,
): Uint8Array {
  const { eventHdr, event: common } = dialect.layouts;
  const withCommon = carriesCommon(dialect, spec.scope);
  const hdrBytes = eventHdr?.size ?? 0;
  const commonBytes = withCommon ? common.size : 0;
  const payloadSize = spec.payload?.size ?? 0;
  const { out, view, start } = allocate(dialect, eventMessageId(dialect, spec.scope), seq, hdrBytes + commonBytes + payloadSize);
  if (eventHdr !== null) encodeInto(eventHdr, { event: spec.id } as LayoutValue<Layout>, view, start);
  // `event` is ignored by a common part that has no such field (v12).
  if (withCommon) {
    encodeInto(common, { size: common.size, vcpu, event: spec.id, arch } as LayoutValue<Layout>, view, start + hdrBytes);
  }
  if (spec.payload !== null) {
    if (payload === undefined) throw new KvmiArgumentError("payload", `${spec.name} needs its payload`);
    encodeInto(spec.payload, payload as LayoutValue<Layout>, view, start + hdrBytes + commonBytes);
  }
  return out;
}

/** A decoded event. */
export interface DecodedEvent {
  /** The event's table entry, or undefined for an id this dialect does not know. */
  readonly spec: EventSpec | undefined;
  readonly eventId: number;
  /** The vCPU index; 0 for VM events. */
  readonly vcpu: number;
  /**
   * The vCPU state at the event (`kvmi_event_arch`); all zero for a VM event, also where the
   * dialect sends none for it (v12), so consumers see the same shape as v9's UNHOOK.
   */
  readonly arch: AnyValue;
  readonly payload: AnyValue | undefined;
}

function archLayout(dialect: Dialect): Layout {
  const field = dialect.layouts.event.fields["arch"];
  if (field?.kind !== "struct") throw new KvmiProtocolError(`${dialect.layouts.event.name} has no arch struct`);
  return field.layout;
}

/**
 * Decodes an event body as `dialect` frames it. The payload is located with the common part's
 * `size`, not with our own sizeof, as the kernel asks for forward compatibility (kvmi-abi §3.3, §10).
 * `messageId` (the header's id) decides whether an event id the table does not know carries the
 * common part; known events are decided by their scope.
 * @throws KvmiProtocolError when the body is shorter than its framing or its payload.
 */
export function decodeEvent(dialect: Dialect, body: Uint8Array, messageId?: number): DecodedEvent {
  const view = viewOf(body);
  const { eventHdr, event: common } = dialect.layouts;
  let at = 0;
  let eventId: number | undefined;
  if (eventHdr !== null) {
    eventId = (decodeFrom(eventHdr, view) as { event: number }).event;
    at = eventHdr.size;
  }
  let head: { size: number; vcpu: number; event?: number; arch: AnyValue } | undefined;
  const known = eventId === undefined ? undefined : eventById(dialect, eventId);
  const { vmEventMessageId, vcpuEventMessageId } = dialect.eventFraming;
  if (known !== undefined && messageId !== undefined && vmEventMessageId !== vcpuEventMessageId) {
    // Where VM and vCPU events have message ids of their own (v12, docs/protocol/v12.md), the event
    // id must fit the message id: a short vCPU-event message whose header reads 0 is malformed, not
    // the VM's UNHOOK.
    const expected = known.scope === "vm" ? vmEventMessageId : vcpuEventMessageId;
    if (messageId !== expected) {
      throw new KvmiProtocolError(`${known.name} arrived in message id ${messageId}; ${known.scope === "vm" ? "VM" : "vCPU"} events use ${expected}`);
    }
  }
  const withCommon =
    eventHdr === null ||
    (known !== undefined ? carriesCommon(dialect, known.scope) : messageId === dialect.eventFraming.vcpuEventMessageId);
  if (withCommon) {
    head = decodeFrom(common, view, at) as typeof head & object;
    if (head.size < common.size || at + head.size > body.length) {
      throw new KvmiProtocolError(`${common.name}.size ${head.size} is inconsistent with a ${body.length}-byte event`);
    }
    eventId ??= head.event!;
    at += head.size;
  }
  const spec = eventById(dialect, eventId!);
  let payload: AnyValue | undefined;
  if (spec?.payload != null) {
    payload = decodeBody({ layout: spec.payload }, view, at, body.length - at).value;
  }
  return { spec, eventId: eventId!, vcpu: head?.vcpu ?? 0, arch: head?.arch ?? zeroValue(archLayout(dialect)), payload };
}

/**
 * Encodes an event reply: `kvmi_msg_hdr{id = the dialect's reply id, seq = event seq}`,
 * `kvmi_vcpu_hdr`, `kvmi_event_reply`, and the event's reply data (kvmi-abi §3.4, docs/protocol/).
 */
export function encodeEventReply(
  dialect: Dialect,
  spec: EventSpec,
  seq: number,
  vcpu: number,
  action: number,
  replyData?: AnyValue,
): Uint8Array {
  const { vcpuHdr, eventReply } = dialect.layouts;
  const dataSize = spec.replyData?.size ?? 0;
  const { out, view, start } = allocate(dialect, dialect.eventFraming.replyMessageId, seq, vcpuHdr.size + eventReply.size + dataSize);
  writeVcpuHdr(dialect, view, start, vcpu);
  encodeInto(eventReply, { action, event: spec.id } as LayoutValue<Layout>, view, start + vcpuHdr.size);
  if (spec.replyData !== null) {
    // Missing reply data is written as zero: the kernel zero-fills short reply data too (kvmi-abi §3.4).
    const data = replyData ?? zeroValue(spec.replyData);
    encodeInto(spec.replyData, data as LayoutValue<Layout>, view, start + vcpuHdr.size + eventReply.size);
  }
  return out;
}

/** What the kernel learns from an event reply before validating it (kvmi-abi §2.7, §3.4). */
export interface DecodedEventReply {
  readonly vcpu: number;
  readonly vcpuHdrPadding: boolean;
  readonly action: number;
  readonly event: number;
  /** True when `kvmi_event_reply` padding is non-zero: the kernel closes the socket. */
  readonly replyPadding: boolean;
  /** The raw reply data after `kvmi_event_reply` (validated against the pending event by the caller). */
  readonly data: Uint8Array;
}

/**
 * Decodes an event reply body. Short headers are zero-extended, like the kernel's zero-filled buffer.
 */
export function decodeEventReply(dialect: Dialect, body: Uint8Array): DecodedEventReply {
  const { vcpuHdr, eventReply } = dialect.layouts;
  const fixedBytes = vcpuHdr.size + eventReply.size;
  const fixed = new Uint8Array(fixedBytes);
  fixed.set(body.subarray(0, fixedBytes));
  const view = viewOf(fixed);
  const hdr = decodeFrom(vcpuHdr, view) as { vcpu: number };
  const reply = decodeFrom(eventReply, view, vcpuHdr.size) as { action: number; event: number };
  return {
    vcpu: hdr.vcpu,
    vcpuHdrPadding: findNonZeroPadding(vcpuHdr, view) !== undefined,
    action: reply.action,
    event: reply.event,
    replyPadding: findNonZeroPadding(eventReply, view, vcpuHdr.size) !== undefined,
    data: body.subarray(Math.min(body.length, fixedBytes)),
  };
}

/**
 * Decodes event reply data against the event's reply layout: less data than expected is
 * zero-filled, more is a protocol error (kvmi-abi §3.4: the kernel closes the socket).
 */
export function decodeEventReplyData(spec: EventSpec, data: Uint8Array): AnyValue | undefined {
  const layout = spec.replyData;
  const expected = layout?.size ?? 0;
  if (data.length > expected) {
    throw new KvmiProtocolError(`${spec.name} reply carries ${data.length} bytes of data, at most ${expected} expected`);
  }
  if (layout === null) return undefined;
  return decodeBody({ layout } satisfies BodySchema, viewOf(data), 0, data.length, { zeroExtendFixed: true }).value;
}

/**
 * True for the kernel's error reply to an event reply it rejected at dispatch: the reply id with a
 * body of exactly `kvmi_error_code` (kvmi-abi §3.1; v9 id 0, v12 id 1, kvmi-v7 id 0). No event is
 * that short where it shares the reply's id: v9 and v12 vCPU events are at least 544 bytes.
 */
export function isEventReplyError(dialect: Dialect, hdr: MsgHdr): boolean {
  return hdr.id === dialect.eventFraming.replyMessageId && hdr.size === dialect.layouts.errorCode.size;
}

/** The `err` of an error reply body (0 or a negative KVM errno), read through the dialect's layout. */
export function readReplyError(dialect: Dialect, body: Uint8Array): number {
  const layout = dialect.layouts.errorCode;
  const bytes = body.length >= layout.size ? body : zeroExtended(body, layout.size);
  return (decodeFrom(layout, viewOf(bytes)) as { err: number }).err;
}

function zeroExtended(body: Uint8Array, size: number): Uint8Array {
  const out = new Uint8Array(size);
  out.set(body.subarray(0, size));
  return out;
}
