// SPDX-License-Identifier: Apache-2.0
/**
 * `@kvmi/kvm-bridge`: the KVMI tool side without gRPC (conventions §2). The codec is under
 * `@kvmi/kvm-bridge/wire`, the emulator under `@kvmi/kvm-bridge/emulator`, the ioctls under
 * `@kvmi/kvm-bridge/ioctl`.
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
} from "./errors.js";
export type { KvmiErrorContext } from "./errors.js";

// Logging seam.
export { silentLogger } from "./logger.js";
export type { Logger } from "./logger.js";

// The per-VM channel.
export { createKvmiChannel } from "./session/channel.js";
export type {
  CancelSignal,
  CommandOptions,
  CommandReply,
  CommandRequest,
  EventSink,
  KvmiChannel,
  KvmiChannelOptions,
  KvmiEvent,
} from "./session/channel.js";

// Accepting device managers and the VM registry.
export { acceptKvmiConnection, createKvmiListener } from "./session/listener.js";
export { readExactly } from "./session/read-exactly.js";
export type { AcceptedVm, ForwardedConnection, KvmiListener, KvmiListenerOptions, ListenEndpoint, VmOrigin } from "./session/listener.js";
export { createVmRegistry } from "./session/registry.js";
export type { HookedVm, VmChange, VmExpectation, VmRecord, VmRegistry, VmRegistryOptions, VmState } from "./session/registry.js";
