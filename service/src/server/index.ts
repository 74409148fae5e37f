// SPDX-License-Identifier: Apache-2.0
/**
 * The gRPC server of the bridge: assembly, health, reflection and credentials.
 */

export { createGrpcServer, GRPC_SERVER_OPTIONS, MAX_MESSAGE_BYTES } from "./grpc-server.js";
export type { BridgeGrpcServer, GrpcServerOptions, ServiceRegistration } from "./grpc-server.js";
export { createHealth } from "./health.js";
export type { HealthController, ServingStatus } from "./health.js";
export { createReflectionService, fileDescriptorProtos } from "./reflection.js";
export { createServerCredentials } from "./credentials.js";
export type { BridgeServerCredentials, TlsMode } from "./credentials.js";
