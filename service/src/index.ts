// SPDX-License-Identifier: Apache-2.0
/**
 * `@kvmi/service`: the kvmi-bridge gRPC server as a library. `main.ts` (the `kvmi-bridge` binary)
 * composes the same parts; tests and embedders start a bridge with {@link startBridge} and talk to
 * it over real sockets with any gRPC client.
 */

// The bridge.
export { startBridge } from "./bridge.js";
export type { Bridge, StartBridgeOptions } from "./bridge.js";

// Configuration (one schema, three spellings).
export { ConfigError, loadConfig, loadConfigOrThrow, readSecret } from "./config/index.js";
export type { BridgeConfig, ControllerGonePolicy, EventName, LoadConfigInput, LoadConfigResult } from "./config/index.js";

// The error model: decoding `google.rpc.Status` details of any error the bridge returns.
export { ERROR_DOMAIN, parseStatusDetails, STATUS_DETAILS_KEY } from "./mapping/index.js";
export type { StatusDetails } from "./mapping/index.js";

// gRPC plumbing for clients: the grpc-js definition of a protobuf-es service, and the metadata
// key that carries the controller's session id on mutating unary RPCs.
export { createServiceDefinition } from "./rpc/service-definition.js";
export type { HandlerFor, ServiceDefinitionFor, ServiceImplementationFor } from "./rpc/service-definition.js";
export { SESSION_ID_METADATA } from "./rpc/call-context.js";
export { startForwarder } from "./forward/forwarder.js";
export type { Forwarder, ForwarderOptions, Upstream } from "./forward/forwarder.js";
export { MAX_INFLIGHT_COMMANDS } from "./rpc/session-rpc.js";
export { MUTATING_COMMANDS } from "./vm/vm-host.js";

// The audit trail's hash chain, as `kvmi-bridge audit verify FILE` checks it.
export { auditFileSet, verifyAuditFiles } from "./audit/audit-verify.js";
export type { AuditVerifyResult } from "./audit/audit-verify.js";
