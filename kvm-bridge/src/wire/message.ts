// SPDX-License-Identifier: Apache-2.0
/**
 * Whole KVMI messages for both ends of the socket (kvmi-abi §3): commands and their replies,
 * events and event replies. Every encoder allocates exactly one buffer holding the header and the
 * body, because the kernel requires each message in one `send()` (kvmi-abi §3.1) and a single
 * allocation is what keeps the hot path cheap.
 */
import { KvmiArgumentError, KvmiProtocolError } from "../errors.js";
import { bodyBytes, decodeBody, encodeBodyInto } from "./body.js";
import type { DecodedBody } from "./body.js";
import { decodeFrom, encodeInto, findNonZeroPadding, viewOf } from "./codec.js";
import { eventById } from "./dialect.js";
import type { BodySchema, CommandSpec, Dialect, EventSpec } from "./dialect.js";
import type { Layout, LayoutValue } from "./layout.js";

/** Size of `kvmi_msg_hdr` (kvmi-abi §3.1). */
export const HEADER_BYTES = 8;

/** A decoded `kvmi_msg_hdr`. */
export interface MsgHdr {
  readonly id: number;
  readonly size: number;
  readonly seq: number;
}

type AnyValue = Record<string, unknown>;

/** Reads `kvmi_msg_hdr` at the start of `buf` (which must hold at least 8 bytes). */
export function readMsgHdr(buf: Uint8Array, offset = 0): MsgHdr {
  const view = viewOf(buf);
  return {
    id: view.getUint16(offset, true),
    size: view.getUint16(offset + 2, true),
    seq: view.getUint32(offset + 4, true),
  };
}

function allocate(dialect: Dialect, id: number, seq: number, bodySize: number): { out: Uint8Array; view: DataView } {
  if (bodySize > dialect.maxMessageBytes) {
    throw new KvmiArgumentError("size", `message body of ${bodySize} bytes exceeds ${dialect.maxMessageBytes}`);
  }
  const out = new Uint8Array(HEADER_BYTES + bodySize);
  const view = viewOf(out);
  encodeInto(dialect.layouts.msgHdr, { id, size: bodySize, seq }, view, 0);
  return { out, view };
}

function writeVcpuHdr(dialect: Dialect, view: DataView, offset: number, vcpu: number): void {
  encodeInto(dialect.layouts.vcpuHdr, { vcpu } as LayoutValue<Layout>, view, offset);
}

// ---------------------------------------------------------------------------------------------
// Commands (tool -> kernel) and replies (kernel -> tool)

/**
 * Encodes a command request: `kvmi_msg_hdr`, then `kvmi_vcpu_hdr` for vCPU-scoped commands,
 * then the body (kvmi-abi §3.2).
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
  const vcpuBytes = spec.scope === "vcpu" ? dialect.layouts.vcpuHdr.size : 0;
  if (spec.scope === "vcpu" && vcpu === undefined) {
    throw new KvmiArgumentError("vcpu", `${spec.name} is vCPU-scoped and needs a vCPU index`);
  }
  const { out, view } = allocate(dialect, spec.id, seq, vcpuBytes + bodyBytes(spec.request, body));
  if (spec.scope === "vcpu") writeVcpuHdr(dialect, view, HEADER_BYTES, vcpu!);
  encodeBodyInto(spec.request, body, view, HEADER_BYTES + vcpuBytes);
  return out;
}

/** What the kernel side learns from a command body, before it decides how to answer. */
export interface DecodedCommand extends DecodedBody {
  /** vCPU index from `kvmi_vcpu_hdr`, for vCPU-scoped commands. */
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
  // A literal, not a spread: this runs per command in the emulator (and per page of a dump).
  return { value: decoded.value, nonZeroPadding: decoded.nonZeroPadding, extraBytes: decoded.extraBytes, vcpu, vcpuHdrPadding };
}

/**
 * Encodes a reply: `kvmi_msg_hdr{id, seq}`, `kvmi_error_code`, and the reply data only when
 * `err == 0` (kvmi-abi §3.2). `err` is the wire value: 0 or a negative KVM errno.
 */
export function encodeReply(
  dialect: Dialect,
  spec: Pick<CommandSpec, "id" | "reply">,
  seq: number,
  err: number,
  value?: AnyValue,
): Uint8Array {
  const errBytes = dialect.layouts.errorCode.size;
  const withData = err === 0 && (spec.reply.layout !== null || spec.reply.tail !== undefined);
  if (withData && value === undefined) throw new KvmiArgumentError("reply", "a successful reply needs its data");
  const { out, view } = allocate(dialect, spec.id, seq, errBytes + (withData ? bodyBytes(spec.reply, value!) : 0));
  encodeInto(dialect.layouts.errorCode, { err } as LayoutValue<Layout>, view, HEADER_BYTES);
  if (withData) encodeBodyInto(spec.reply, value!, view, HEADER_BYTES + errBytes);
  return out;
}

/** A decoded reply: `err` (0 or negative KVM errno) and, on success, the reply data. */
export type DecodedReply = { readonly err: 0; readonly value: AnyValue } | { readonly err: number; readonly value?: undefined };

/**
 * Decodes a reply body (after `kvmi_msg_hdr`).
 * @throws KvmiProtocolError when the body is shorter than `kvmi_error_code` or than the reply data.
 */
export function decodeReply(dialect: Dialect, spec: Pick<CommandSpec, "reply">, body: Uint8Array): DecodedReply {
  const view = viewOf(body);
  const { err } = decodeFrom(dialect.layouts.errorCode, view) as { err: number };
  if (err !== 0) return { err };
  const errBytes = dialect.layouts.errorCode.size;
  return { err: 0, value: decodeBody(spec.reply, view, errBytes, body.length - errBytes).value };
}

// ---------------------------------------------------------------------------------------------
// Events (kernel -> tool) and event replies (tool -> kernel)

/**
 * Encodes an event: `kvmi_msg_hdr{id=0, seq}`, `kvmi_event{size, vcpu, event, arch}`, payload
 * (kvmi-abi §3.3). UNHOOK carries vcpu 0 and an all-zero arch.
 */
export function encodeEvent(
  dialect: Dialect,
  spec: EventSpec,
  seq: number,
  vcpu: number,
  arch: AnyValue,
  payload?: AnyValue,
): Uint8Array {
  const eventLayout = dialect.layouts.event;
  const payloadSize = spec.payload?.size ?? 0;
  const { out, view } = allocate(dialect, dialect.eventMessageId, seq, eventLayout.size + payloadSize);
  encodeInto(
    eventLayout,
    { size: eventLayout.size, vcpu, event: spec.id, arch } as LayoutValue<Layout>,
    view,
    HEADER_BYTES,
  );
  if (spec.payload !== null) {
    if (payload === undefined) throw new KvmiArgumentError("payload", `${spec.name} needs its payload`);
    encodeInto(spec.payload, payload as LayoutValue<Layout>, view, HEADER_BYTES + eventLayout.size);
  }
  return out;
}

/** A decoded event. */
export interface DecodedEvent {
  /** The event's table entry, or undefined for an id this dialect does not know. */
  readonly spec: EventSpec | undefined;
  readonly eventId: number;
  readonly vcpu: number;
  readonly arch: AnyValue;
  readonly payload: AnyValue | undefined;
}

/**
 * Decodes an event body. The payload is located with `kvmi_event.size`, not with our own sizeof,
 * as the kernel asks for forward compatibility (kvmi-abi §3.3, §10).
 * @throws KvmiProtocolError when the body is shorter than `kvmi_event` or than its payload.
 */
export function decodeEvent(dialect: Dialect, body: Uint8Array): DecodedEvent {
  const view = viewOf(body);
  const head = decodeFrom(dialect.layouts.event, view) as { size: number; vcpu: number; event: number; arch: AnyValue };
  if (head.size < dialect.layouts.event.size || head.size > body.length) {
    throw new KvmiProtocolError(`kvmi_event.size ${head.size} is inconsistent with a ${body.length}-byte event`);
  }
  const spec = eventById(dialect, head.event);
  let payload: AnyValue | undefined;
  if (spec?.payload != null) {
    payload = decodeBody({ layout: spec.payload }, view, head.size, body.length - head.size).value;
  }
  return { spec, eventId: head.event, vcpu: head.vcpu, arch: head.arch, payload };
}

/**
 * Encodes an event reply: `kvmi_msg_hdr{id=0, seq=event seq}`, `kvmi_vcpu_hdr`, `kvmi_event_reply`,
 * and the event's reply data (kvmi-abi §3.4).
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
  const { out, view } = allocate(dialect, dialect.eventMessageId, seq, vcpuHdr.size + eventReply.size + dataSize);
  writeVcpuHdr(dialect, view, HEADER_BYTES, vcpu);
  encodeInto(eventReply, { action, event: spec.id } as LayoutValue<Layout>, view, HEADER_BYTES + vcpuHdr.size);
  if (spec.replyData !== null) {
    encodeInto(
      spec.replyData,
      (replyData ?? {}) as LayoutValue<Layout>,
      view,
      HEADER_BYTES + vcpuHdr.size + eventReply.size,
    );
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
 * True for the one kernel -> tool message with id 0 that is not an event: the error reply to an
 * event reply rejected at dispatch, `id == 0 && size == 8` (kvmi-abi §3.1). Real events are ≥ 544 bytes.
 */
export function isEventReplyError(dialect: Dialect, hdr: MsgHdr): boolean {
  return hdr.id === dialect.eventMessageId && hdr.size === dialect.layouts.errorCode.size;
}
