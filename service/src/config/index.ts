// SPDX-License-Identifier: Apache-2.0
/**
 * Configuration of the bridge (conventions §10): one schema, three spellings, every error at once.
 */

export { loadConfig, loadConfigOrThrow, ConfigError } from "./load-config.js";
export type { LoadConfigInput, LoadConfigResult } from "./load-config.js";
export { applyConfigAction, redactedConfig, renderConfig, renderHelp, REDACTED } from "./render.js";
export type { ConfigActionIo, RedactedConfig } from "./render.js";
export { readSecret } from "./secret.js";
export {
  CONTROLLER_GONE_POLICIES,
  DEFAULT_KVMI_LISTEN,
  EVENT_NAMES,
  HANDSHAKE_VARIANTS,
  LOG_LEVELS,
  MAX_TIMER_MS,
} from "./options.js";
export { splitListenDialect } from "./parsers.js";
export type { BridgeConfig, ControllerGonePolicy, EventName, HandshakeVariant, LogLevel } from "./options.js";
export {
  formatGrpcListen,
  formatHostPort,
  formatKvmiListen,
  isLoopback,
  parseGrpcListen,
  parseHostPort,
  parseKvmiListen,
  UNIX_PATH_MAX_BYTES,
} from "./address.js";
export type { ListenAddress, ParseResult, TcpAddress, UnixAddress } from "./address.js";

// ---------------------------------------------------------------------------------------------
// Schema internals, exported for tooling and tests; not semver-stable.
/** @internal */
export { OPTIONS, OPTION_KEYS, envName, flagName } from "./options.js";
/** @internal */
export type { OptionSpec } from "./options.js";
