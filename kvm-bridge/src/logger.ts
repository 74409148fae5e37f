// SPDX-License-Identifier: Apache-2.0
/**
 * The logger kvm-bridge accepts (conventions §9): a pino-compatible subset, injected by the
 * composition root and silent by default (the grpc-js `setLogger` pattern), so that this package
 * never depends on a logging library.
 */

type LogFn = (fields: Record<string, unknown>, message?: string) => void;

/** A structured logger: `log.info({ vm, vcpu }, "hooked")`. */
export interface Logger {
  readonly trace: LogFn;
  readonly debug: LogFn;
  readonly info: LogFn;
  readonly warn: LogFn;
  readonly error: LogFn;
  /**
   * A logger that adds `bindings` to every line; `options.redact` replaces the parent's redaction
   * paths (an empty list: none, for lines whose fields are known to hold no secret).
   */
  child(bindings: Record<string, unknown>, options?: { readonly redact?: string[] }): Logger;
}

const noop: LogFn = () => undefined;

/** Discards everything. */
export const silentLogger: Logger = {
  trace: noop,
  debug: noop,
  info: noop,
  warn: noop,
  error: noop,
  child: () => silentLogger,
};
