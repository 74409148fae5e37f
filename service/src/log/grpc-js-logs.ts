// SPDX-License-Identifier: Apache-2.0
/**
 * Routes grpc-js' own diagnostics (bind failures, tracer output under `GRPC_TRACE`) into the JSON
 * log instead of raw `console.error` lines on stderr, the way kvm-bridge takes an injected
 * logger (grpc-js `setLogger`). grpc-js keeps reading `GRPC_VERBOSITY`/`GRPC_TRACE` itself.
 *
 * @see https://github.com/grpc/grpc-node/blob/master/doc/environment_variables.md
 */
import { format } from "node:util";
import { setLogger } from "@grpc/grpc-js";
import type { Logger } from "@kvmi/kvm-bridge";

/**
 * Sends every grpc-js log call to `logger` with `component: "grpc-js"`: grpc-js ERROR lines at
 * `warn` (the failures they describe also surface as errors we handle and log ourselves), INFO
 * and DEBUG lines at `debug`. Process-wide: call once, from the composition root.
 */
export function routeGrpcJsLogs(logger: Logger): void {
  const log = logger.child({ component: "grpc-js" });
  const at =
    (level: "warn" | "debug") =>
    (message?: unknown, ...rest: unknown[]): void =>
      log[level]({}, format(message, ...rest));
  setLogger({ error: at("warn"), info: at("debug"), debug: at("debug") });
}
