// SPDX-License-Identifier: Apache-2.0
/**
 * `@kvmi/kvm-bridge/wire`: the table-driven KVMI codec (conventions §4). Dialect tables, layouts,
 * the generic encoder/decoder, whole messages, the QEMU handshake and the stream framer.
 */

// Dialects: the v9 table and the shared KVM error numbers.
export { v9, V9_COMMANDS, V9_EVENTS } from "./dialects/v9.js";
export type { V9CommandName, V9EventName } from "./dialects/v9.js";
export * as v9Ids from "./dialects/v9.js";
export * as errno from "./dialects/errno.js";
export { commandById, commandByName, eventById, EVENT_ACTION_VALUES } from "./dialect.js";
export type {
  BodyInput,
  BodySchema,
  BodyValue,
  CommandSpec,
  Dialect,
  EventActionName,
  EventSpec,
  TailSpec,
} from "./dialect.js";

// Layouts and the generic codec.
export { V9_LAYOUTS } from "./layouts/index.js";
export * as layouts from "./layouts/index.js";
export { decode, decodeFrom, encode, encodeInto, findNonZeroPadding, viewOf, zeroValue } from "./codec.js";
export { bodyBytes, decodeBody, encodeBodyInto } from "./body.js";
export { defineLayout, fieldBytes, orderedFields } from "./layout.js";
export type { Field, Layout, LayoutValue } from "./layout.js";

// Whole messages.
export {
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
  isEventReplyError,
  readMsgHdr,
} from "./message.js";
export type { DecodedCommand, DecodedEvent, DecodedEventReply, DecodedReply, MsgHdr } from "./message.js";

// The QEMU handshake.
export {
  checkHandshakeReply,
  checkHandshakeSize,
  cookieHash,
  encodeHandshake,
  encodeHandshakeReply,
  formatUuid,
  parseHandshake,
  parseUuid,
  HANDSHAKE_MAX_BYTES,
  HANDSHAKE_MIN_BYTES,
  HANDSHAKE_REPLY_BYTES,
} from "./handshake.js";
export type { E820Entry, HandshakeRequest, HandshakeVariant, VmIdentity } from "./handshake.js";

// The byte-stream framer (it lives with the session, but is pure codec).
export { createFramer, MAX_BODY_BYTES } from "../session/framer.js";
export type { FrameHandler, Framer } from "../session/framer.js";
