// SPDX-License-Identifier: Apache-2.0
/**
 * The only errors kvm-bridge throws (conventions §5). Each class carries a stable `code` and a
 * `Symbol.for` brand so that `instanceof` works across duplicated copies of this package (the
 * undici `errors.js` technique): a copy loaded twice by a bundler still recognises its errors.
 */

const kKvmiError = Symbol.for("kvmi-bridge.error");
const kRemote = Symbol.for("kvmi-bridge.error.remote");
const kProtocol = Symbol.for("kvmi-bridge.error.protocol");
const kTransport = Symbol.for("kvmi-bridge.error.transport");
const kTimeout = Symbol.for("kvmi-bridge.error.timeout");
const kUnsupported = Symbol.for("kvmi-bridge.error.unsupported");
const kArgument = Symbol.for("kvmi-bridge.error.argument");
const kNotInDialect = Symbol.for("kvmi-bridge.error.not-in-dialect");

function branded(value: unknown, brand: symbol): boolean {
  return typeof value === "object" && value !== null && (value as Record<symbol, unknown>)[brand] === true;
}

/** Where a failed KVMI exchange happened, kept for logs and for `google.rpc.ErrorInfo` metadata. */
export interface KvmiErrorContext {
  /** Kernel command name, e.g. `KVMI_VM_READ_PHYSICAL`. */
  readonly command?: string;
  /** VM UUID. */
  readonly vm?: string;
  /** vCPU index. */
  readonly vcpu?: number;
}

/** Base class of every error thrown by kvm-bridge. */
export abstract class KvmiError extends Error {
  /** Stable, UPPER_SNAKE identifier of the failure class. */
  abstract readonly code: string;
  readonly context: KvmiErrorContext;

  constructor(message: string, context: KvmiErrorContext = {}, options?: { cause?: unknown }) {
    super(message, options);
    this.context = context;
    Object.defineProperty(this, kKvmiError, { value: true });
  }

  static override [Symbol.hasInstance](value: unknown): boolean {
    return branded(value, kKvmiError);
  }
}

/**
 * The kernel answered a command with `kvmi_error_code.err != 0` (kvmi-abi §3.2, §7).
 * `errno` is the positive KVM error number (e.g. 22 for KVM_EINVAL), kept exactly as the kernel sent it.
 */
export class KvmiRemoteError extends KvmiError {
  readonly code = "KVMI_REMOTE_ERROR";
  readonly errno: number;

  constructor(errno: number, context: KvmiErrorContext = {}) {
    super(`${context.command ?? "command"} failed with KVM errno ${errno}`, context);
    this.name = "KvmiRemoteError";
    this.errno = errno;
    Object.defineProperty(this, kRemote, { value: true });
  }

  static override [Symbol.hasInstance](value: unknown): boolean {
    return branded(value, kRemote);
  }
}

/** A malformed frame, an unexpected id or seq, or a message the dialect table cannot decode. */
export class KvmiProtocolError extends KvmiError {
  readonly code = "KVMI_PROTOCOL_ERROR";

  constructor(message: string, context: KvmiErrorContext = {}, options?: { cause?: unknown }) {
    super(message, context, options);
    this.name = "KvmiProtocolError";
    Object.defineProperty(this, kProtocol, { value: true });
  }

  static override [Symbol.hasInstance](value: unknown): boolean {
    return branded(value, kProtocol);
  }
}

/** The KVMI socket closed, reset, or could not be written while an exchange was in flight. */
export class KvmiTransportError extends KvmiError {
  readonly code: string = "KVMI_SESSION_LOST";

  constructor(message: string, context: KvmiErrorContext = {}, options?: { cause?: unknown }) {
    super(message, context, options);
    this.name = "KvmiTransportError";
    Object.defineProperty(this, kTransport, { value: true });
  }

  static override [Symbol.hasInstance](value: unknown): boolean {
    return branded(value, kTransport);
  }
}

/** A command's reply did not arrive before its deadline; its pending entry has been removed. */
export class KvmiTimeoutError extends KvmiTransportError {
  override readonly code = "KVMI_TIMEOUT";

  constructor(message: string, context: KvmiErrorContext = {}) {
    super(message, context);
    this.name = "KvmiTimeoutError";
    Object.defineProperty(this, kTimeout, { value: true });
  }

  static override [Symbol.hasInstance](value: unknown): boolean {
    return branded(value, kTimeout);
  }
}

/** The kernel does not offer a command or event (`KVMI_VM_CHECK_COMMAND`/`_EVENT` said no). */
export class KvmiUnsupportedError extends KvmiError {
  readonly code: string = "KVMI_UNSUPPORTED";

  constructor(message: string, context: KvmiErrorContext = {}) {
    super(message, context);
    this.name = "KvmiUnsupportedError";
    Object.defineProperty(this, kUnsupported, { value: true });
  }

  static override [Symbol.hasInstance](value: unknown): boolean {
    return branded(value, kUnsupported);
  }
}

/**
 * The dialect lacks a command or event that exists in another dialect (v12 has no GET_MAX_GFN,
 * only kvmi-v7 has CONTROL_CMD_RESPONSE). The service maps it to FAILED_PRECONDITION
 * `NOT_IN_DIALECT`; `dialect` and `op` name what was asked.
 */
export class KvmiNotInDialectError extends KvmiUnsupportedError {
  override readonly code = "KVMI_NOT_IN_DIALECT";
  readonly dialect: string;
  /** The op or event kind the dialect lacks. */
  readonly op: string;

  constructor(dialect: string, op: string, what: "command" | "event") {
    super(`the ${dialect} dialect has no ${op} ${what}`, { command: op });
    this.name = "KvmiNotInDialectError";
    this.dialect = dialect;
    this.op = op;
    Object.defineProperty(this, kNotInDialect, { value: true });
  }

  static override [Symbol.hasInstance](value: unknown): boolean {
    return branded(value, kNotInDialect);
  }
}

/**
 * A value rejected before it reached the socket: out of range for its wire field, or outside what the
 * kernel would accept (so the guest never sees a request we already know is wrong).
 */
export class KvmiArgumentError extends KvmiError {
  readonly code = "KVMI_INVALID_ARGUMENT";
  /** The offending field, as named in the layout table or the request. */
  readonly field: string;

  constructor(field: string, message: string, context: KvmiErrorContext = {}) {
    super(message, context);
    this.name = "KvmiArgumentError";
    this.field = field;
    Object.defineProperty(this, kArgument, { value: true });
  }

  static override [Symbol.hasInstance](value: unknown): boolean {
    return branded(value, kArgument);
  }
}
