// SPDX-License-Identifier: Apache-2.0
/**
 * `@kvmi/kvm-bridge/codec` (also `@kvmi/kvm-bridge/wire`): the table-driven KVMI codec
 * (conventions §4). Dialect tables and their lookups by op and kind, layouts, the generic
 * encoder/decoder, whole messages, the QEMU handshake, the stream framer and the errors they throw.
 * Nothing here opens a socket, runs the emulator or loads ffi-rs, so `clients/` may import it
 * (README, design notes; `codec-entry.test.ts` checks the module graph).
 */

// Errors (conventions §5).
export {
  KvmiArgumentError,
  KvmiError,
  KvmiNotInDialectError,
  KvmiProtocolError,
  KvmiRemoteError,
  KvmiTimeoutError,
  KvmiTransportError,
  KvmiUnsupportedError,
} from "../errors.js";
export type { KvmiErrorContext } from "../errors.js";

// Dialects: the v9 table and the shared KVM error numbers.
export { v9, V9_COMMANDS, V9_EVENTS } from "./dialects/v9.js";
export type { V9CommandName, V9EventName } from "./dialects/v9.js";
export * as v9Ids from "./dialects/v9.js";
export * as errno from "./dialects/errno.js";
export type { V9CommandReply, V9CommandRequest } from "./dialects/v9.js";
export { v12 } from "./dialects/v12.js";
export { kvmiV7 } from "./dialects/kvmi-v7.js";
export { dialectByName, KNOWN_DIALECT_NAMES, KNOWN_DIALECTS } from "./dialects/known.js";
export {
  commandById,
  commandByName,
  commandByOp,
  eventById,
  eventByKind,
  EVENT_ACTION_VALUES,
  requireCommand,
  requireEvent,
} from "./dialect.js";
export type {
  BodyInput,
  BodySchema,
  BodyValue,
  CommandSpec,
  Dialect,
  DialectIoctls,
  DialectLimits,
  EventActionName,
  EventFraming,
  EventSpec,
  TailSpec,
} from "./dialect.js";
export { COMMON_COMMAND_OPS, EVENT_KINDS, KVMI_V7_ONLY_OPS } from "./ops.js";
export type {
  CommandOp,
  EventArch,
  EventKind,
  EventPayloads,
  EventReplyShapes,
  KvmiFeatures,
  LooseIntegers,
  OpReply,
  OpRequest,
  OpShapes,
  PageAccessEntry,
} from "./ops.js";

// Layouts and the generic codec.
export { V9_LAYOUTS } from "./layouts/index.js";
export { KVMI_V7_LAYOUTS } from "./layouts/kvmi-v7.js";
export { V12_LAYOUTS } from "./layouts/v12.js";
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
  eventMessageId,
  encodeCommand,
  encodeEvent,
  encodeEventReply,
  encodeReply,
  HEADER_BYTES,
  isEventMessage,
  isEventReplyError,
  readMsgHdr,
  readReplyError,
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
export { createFramer } from "../session/framer.js";
export type { FrameHandler, Framer, FramerOptions } from "../session/framer.js";
