// SPDX-License-Identifier: Apache-2.0
/**
 * The root logger of the bridge (conventions §9): pino, one JSON object per line on stdout,
 * created once in the composition root and handed down as children (`{ component, vm, vcpu }`).
 * A pino logger satisfies kvm-bridge's `Logger` seam, so it is injected there unchanged.
 */
import { hostname } from "node:os";
import { pino } from "pino";
import type { DestinationStream, Logger as PinoLogger } from "pino";
import type { BridgeConfig } from "../config/index.js";

/**
 * The logger type of the service: pino, and therefore also a kvm-bridge `Logger` (checked in
 * logger.test.ts by assigning one to the other).
 */
export type BridgeLogger = PinoLogger;

/**
 * Stable field names (conventions §9). Use these keys, in camelCase, for the same facts
 * everywhere so that one query finds them across components.
 */
export const LOG_KEYS = {
  component: "component",
  vm: "vm",
  vcpu: "vcpu",
  seq: "seq",
  msgId: "msgId",
  errno: "errno",
  grpcCode: "grpcCode",
  durationMs: "durationMs",
  err: "err",
} as const;

/**
 * Paths pino replaces with `[REDACTED]` wherever they appear in a log line (one level deep, plus
 * the logged config and gRPC metadata). Guest memory is never logged at all (conventions §9).
 * @see https://getpino.io/#/docs/redaction
 */
export const REDACT_PATHS: readonly string[] = [
  "secret",
  "*.secret",
  "config.secret",
  "cookie",
  "*.cookie",
  "password",
  "*.password",
  "token",
  "*.token",
  "authorization",
  "*.authorization",
  'metadata["authorization"]',
  "privateKey",
  "*.privateKey",
];

/** Options of {@link createRootLogger}, mostly for tests. */
export interface RootLoggerOptions {
  /** Where lines go. Default: stdout (fd 1), written synchronously so a crash loses nothing. */
  readonly destination?: DestinationStream;
  /** Fields on every line. Default: `{ service: "kvmi-bridge" }` plus pino's pid and hostname. */
  readonly base?: Record<string, unknown>;
}

/**
 * Creates the one root logger of the process.
 *
 * `base` replaces pino's defaults, so pid and hostname are set here explicitly. Lines look like
 * `{"level":"info","time":"2025-01-01T00:00:00.000Z","pid":1,"hostname":"node-1","service":"kvmi-bridge","component":"kvmi","vm":"vms/a","msg":"hooked"}`:
 * the level as a label (not pino's number), ISO time, `err` serialized with its `cause` chain and
 * the error's own fields (`code`, `errno`), and secrets redacted by {@link REDACT_PATHS}.
 */
export function createRootLogger(config: Pick<BridgeConfig, "logLevel">, options: RootLoggerOptions = {}): BridgeLogger {
  return pino(
    {
      level: config.logLevel,
      base: { pid: process.pid, hostname: hostname(), service: "kvmi-bridge", ...options.base },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      serializers: { err: pino.stdSerializers.errWithCause },
      redact: { paths: [...REDACT_PATHS], censor: "[REDACTED]" },
    },
    options.destination ?? pino.destination({ dest: 1, sync: true }),
  );
}
