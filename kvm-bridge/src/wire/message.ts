// SPDX-License-Identifier: Apache-2.0
/**
 * Whole KVMI messages for both ends of the socket (kvmi-abi §3): commands and their replies,
 * events and event replies. Every encoder returns one buffer holding the header and the body,
 * because the kernel requires each message in one `send()` (kvmi-abi §3.1); small messages are
 * cut from shared zero-filled slabs (slab.ts), so a message costs no allocation of its own.
 *
 * This file holds commands and their replies; the header every message shares is in
 * message-header.ts and events with their replies in event-message.ts, re-exported here so that
 * importers (wire/index.ts, the channel, the emulator) keep one module to import from.
 */
import { KvmiArgumentError, KvmiProtocolError } from "../errors.js";
import { bodyBytes, decodeBody, encodeBodyInto } from "./body.js";
import type { DecodedBody } from "./body.js";
import { decodeFrom, encodeInto, findNonZeroPadding, viewOf } from "./codec.js";
import type { CommandSpec, Dialect } from "./dialect.js";
import type { Layout, LayoutValue } from "./layout.js";
import { allocate, writeVcpuHdr } from "./message-header.js";
import type { AnyValue } from "./message-header.js";
import { allocateZeroed } from "./slab.js";
import type { MessageAllocator } from "./slab.js";

export { HEADER_BYTES, readMsgHdr } from "./message-header.js";
export type { MsgHdr } from "./message-header.js";
export {
  decodeEvent,
  decodeEventReply,
  decodeEventReplyData,
  encodeEvent,
  encodeEventReply,
  eventMessageId,
  isEventMessage,
  isEventReplyError,
  readReplyError,
} from "./event-message.js";
export type { DecodedEvent, DecodedEventReply } from "./event-message.js";

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
