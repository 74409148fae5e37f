// SPDX-License-Identifier: Apache-2.0
/**
 * Logging of the bridge (conventions §9): the pino root logger, a rate-limited wrapper for
 * guest-triggered paths, and the gRPC access log.
 */

export { createRootLogger, LOG_KEYS, REDACT_PATHS } from "./logger.js";
export type { BridgeLogger, RootLoggerOptions } from "./logger.js";
export { createRateLimitedLogger } from "./rate-limited.js";
export type { RateLimitedLogger, RateLimitOptions } from "./rate-limited.js";
export { createAccessLogInterceptor, grpcCodeName, writeAccessLog } from "./access-log.js";
export type { AccessLogCaller, AccessLogEntry, AccessLogOptions, CallerAuth } from "./access-log.js";
export { routeGrpcJsLogs } from "./grpc-js-logs.js";
