// SPDX-License-Identifier: Apache-2.0
/**
 * Events (kernel -> tool) and event replies (tool -> kernel) as each dialect frames them
 * (kvmi-abi §3.3, §3.4, docs/protocol/), and the kernel's error reply to a rejected event reply.
 * Separate from message.ts (commands and their replies) because event framing differs per dialect
 * (event header, common part, message ids) where commands do not; message.ts re-exports its names.
 */
import { KvmiArgumentError, KvmiProtocolError } from "../errors.js";
import { decodeBody } from "./body.js";
import { decodeFrom, encodeInto, findNonZeroPadding, viewOf, zeroValue } from "./codec.js";
import { eventById } from "./dialect.js";
import type { BodySchema, Dialect, EventSpec } from "./dialect.js";
import type { Layout, LayoutValue } from "./layout.js";
import { allocate, writeVcpuHdr } from "./message-header.js";
import type { AnyValue, MsgHdr } from "./message-header.js";

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
