// SPDX-License-Identifier: Apache-2.0
/**
 * Prometheus metrics of the bridge and their HTTP endpoint.
 */

export { createBridgeMetrics, commandStatusOf } from "./metrics.js";
export type { AutoReplyReason, BridgeMetrics, BridgeMetricsOptions, CommandStatus } from "./metrics.js";
export { startMetricsServer } from "./metrics-server.js";
export type { MetricsServer } from "./metrics-server.js";

// ---------------------------------------------------------------------------------------------
// Bucket layouts, exported for dashboards and tests; not semver-stable.
/** @internal */
export { COMMAND_DURATION_BUCKETS, EVENT_ROUND_TRIP_BUCKETS, UNHOOK_TO_CLOSE_BUCKETS } from "./metrics.js";
