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

// The metadata key that carries the controller's session id on mutating unary RPCs. Clients decode
// the rich error model with `@kvmi/proto/status-details` (the SDK does); test helpers, such as a
// grpc-js client built from the service definition, are in `@kvmi/service/testing`.
export { SESSION_ID_METADATA } from "./rpc/call-context.js";
export { startForwarder } from "./forward/forwarder.js";
export type { Forwarder, ForwarderOptions, Upstream } from "./forward/forwarder.js";

// The audit trail's hash chain, as `kvmi-bridge audit verify FILE` checks it.
export { auditFileSet, verifyAuditFiles } from "./audit/audit-verify.js";
export type { AuditVerifyResult } from "./audit/audit-verify.js";
