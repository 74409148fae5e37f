// SPDX-License-Identifier: Apache-2.0
/**
 * A tiny JSON-lines {@link Logger} for `kvmi-sim` (kvm-bridge must not depend on pino, conventions
 * §2): one object per line with `time`, `level`, `msg` and the bound fields.
 */
import type { Writable } from "node:stream";
import type { Logger } from "../logger.js";

const LEVELS = ["trace", "debug", "info", "warn", "error"] as const;
export type LogLevel = (typeof LEVELS)[number];

function serialise(value: unknown): unknown {
  if (typeof value === "bigint") return value.toString();
  if (value instanceof Error) return { type: value.name, message: value.message };
  if (value instanceof Uint8Array) return `<${value.length} bytes>`;
  return value;
}

/** Creates a logger writing JSON lines of `level` and above to `out`. */
export function createJsonLinesLogger(out: Writable, level: LogLevel = "info", bindings: Record<string, unknown> = {}): Logger {
  const threshold = LEVELS.indexOf(level);
  const write = (lineLevel: LogLevel) => (fields: Record<string, unknown>, message?: string) => {
    if (LEVELS.indexOf(lineLevel) < threshold) return;
    const line = { time: new Date().toISOString(), level: lineLevel, ...bindings, ...fields, ...(message && { msg: message }) };
    out.write(`${JSON.stringify(line, (_key, value: unknown) => serialise(value))}\n`);
  };
  return {
    trace: write("trace"),
    debug: write("debug"),
    info: write("info"),
    warn: write("warn"),
    error: write("error"),
    child: (more) => createJsonLinesLogger(out, level, { ...bindings, ...more }),
  };
}

/** Parses a level name, or undefined when unknown. */
export function parseLogLevel(text: string): LogLevel | undefined {
  return (LEVELS as readonly string[]).includes(text) ? (text as LogLevel) : undefined;
}
