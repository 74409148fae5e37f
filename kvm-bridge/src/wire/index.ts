// SPDX-License-Identifier: Apache-2.0
/**
 * `@kvmi/kvm-bridge/codec` (also `@kvmi/kvm-bridge/wire`): the table-driven KVMI codec
 * (conventions §4). Dialect tables and their lookups by op and kind, layouts, the generic
 * encoder/decoder, whole messages, the QEMU handshake, the stream framer and the errors they throw.
 * Nothing here opens a socket, runs the emulator or loads ffi-rs, so `clients/` may import it
 * (README, design notes; `codec-entry.test.ts` checks the module graph).
 *
 * Named re-exports only (conventions §2): what a user needs first, then, after the divider, what
 * is exported for kvmi-bridge's own tests and tools and is not semver-stable.
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

// Dialects (docs/protocol/, docs/decisions/0010-dialect-model.md) and their lookups.
export { v9 } from "./dialects/v9.js";
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
export { KVM_ERRNO as errno } from "./dialects/errno.js";

// Whole messages.
export {
  decodeCommand,
  decodeEvent,
  decodeEventReply,
  decodeEventReplyData,
  decodeReply,
  encodeCommand,
  encodeCommands,
  encodeEvent,
  encodeEventReply,
  encodeReply,
  eventMessageId,
  HEADER_BYTES,
  isEventMessage,
  isEventReplyError,
  readMsgHdr,
  readReplyError,
} from "./message.js";
export type { DecodedCommand, DecodedEvent, DecodedEventReply, DecodedReply, MsgHdr } from "./message.js";

// The byte-stream framer (it lives with the session, but is pure codec).
export { createFramer } from "../session/framer.js";
export type { FrameHandler, Framer, FramerOptions } from "../session/framer.js";

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

// Layouts and the generic codec.
export { LAYOUTS as layouts, V9_LAYOUTS } from "./layouts/index.js";
export { KVMI_V7_LAYOUTS } from "./layouts/kvmi-v7.js";
export { V12_LAYOUTS } from "./layouts/v12.js";
export { decode, decodeFrom, encode, encodeInto, findNonZeroPadding, viewOf, withZeroDefaults, zeroValue } from "./codec.js";
export { bodyBytes, decodeBody, encodeBodyInto } from "./body.js";
export { defineLayout, fieldBytes, orderedFields } from "./layout.js";
export type { Field, Layout, LayoutValue } from "./layout.js";

// ---------------------------------------------------------------------------------------------
// @internal: exported for kvmi-bridge's own service, tests and tools; not semver-stable.

/** @internal The v9 table by kernel name, for code that still names commands that way. */
export { V9_COMMANDS, V9_EVENTS, V9_IDS as v9Ids } from "./dialects/v9.js";
/** @internal */
export type { V9CommandName, V9CommandReply, V9CommandRequest, V9EventName } from "./dialects/v9.js";
/** @internal Chooses generated code or the interpreter for the codec (tests run suites on both). */
export { setCodeGeneration, usesCodeGeneration } from "./compile.js";
