// SPDX-License-Identifier: Apache-2.0
/**
 * Human-facing views of the configuration schema: `--help`, `--print-config` and the redacted
 * object that is logged at start-up (conventions §10).
 */
import { ENV_PREFIX, OPTION_KEYS, OPTIONS, envName, flagName } from "./options.js";
import type { BridgeConfig, OptionSpec } from "./options.js";
import type { LoadConfigResult } from "./load-config.js";

/** What secrets are replaced with in printed config and logs. */
export const REDACTED = "[REDACTED]";

/** The printable, JSON-safe form of a config: every key present, unset values `null`. */
export type RedactedConfig = { readonly [K in keyof BridgeConfig]: unknown };

/**
 * Returns the config with secrets replaced by `[REDACTED]`, unset options as `null` and values
 * in their file spelling (e.g. `kvmiSocketMode: "0660"`), so that the output of
 * `--print-config` can be saved as a `.json` config file and loaded again.
 */
export function redactedConfig(config: BridgeConfig): RedactedConfig {
  const out: Record<string, unknown> = {};
  for (const key of OPTION_KEYS) {
    const spec = OPTIONS[key] as OptionSpec<unknown>;
    const value: unknown = config[key];
    if (value === undefined) out[key] = null;
    else if (spec.secret) out[key] = REDACTED;
    else out[key] = spec.print ? spec.print(value) : value;
  }
  return out as RedactedConfig;
}

/** The text `--print-config` writes: the redacted config as pretty JSON plus a newline. */
export function renderConfig(config: BridgeConfig): string {
  return `${JSON.stringify(redactedConfig(config), null, 2)}\n`;
}

function defaultText(spec: OptionSpec<unknown>): string {
  if (spec.defaultHelp !== undefined) return spec.defaultHelp;
  const value = spec.defaultValue;
  if (value === undefined) return "unset";
  const printed = spec.print ? spec.print(value) : value;
  return Array.isArray(printed) ? printed.join(",") : String(printed);
}

/** The text of `--help`: usage, precedence rules and every option in its three spellings. */
export function renderHelp(): string {
  const lines = [
    "Usage: kvmi-bridge [options]",
    "       kvmi-bridge doctor                   report whether this host's kernel offers KVMI",
    "       kvmi-bridge health [--target ...]    probe a running bridge's gRPC health (containers)",
    "       kvmi-bridge audit verify FILE        check an audit trail's hash chain (and its rotated files)",
    "       kvmi-bridge --version                print the version",
    "       kvmi-bridge policy check FILE        validate an authorization policy file (every error listed)",
    "",
    "Serves KVM introspection (KVMI) sockets from QEMU as the gRPC service kvmi.v1.IntrospectionService.",
    "",
    "Every option has three spellings: a flag (--request-timeout-ms 5000), an environment variable",
    `(${ENV_PREFIX}REQUEST_TIMEOUT_MS=5000) and a key of the config file (requestTimeoutMs: 5000).`,
    "Precedence: flags > environment > config file > defaults. Relative paths in the file are resolved",
    "against the file's directory. Lists and maps are comma-separated in flags and environment; list and",
    "map flags may be repeated. Empty environment variables count as unset.",
    "",
    "General:",
    `  --config <file>            YAML (.yaml/.yml) or JSON (.json) config file [env ${ENV_PREFIX}CONFIG]`,
    "  --print-config             Print the effective configuration (secrets redacted) as JSON and exit",
    "  -h, --help                 Print this help and exit",
    "",
    "Options:",
  ];
  for (const key of OPTION_KEYS) {
    const spec = OPTIONS[key] as OptionSpec<unknown>;
    const flag = spec.shape === "bool" ? `--[no-]${flagName(key)}` : `--${flagName(key)} ${spec.valueName}`;
    lines.push(`  ${flag}`);
    lines.push(`      ${spec.description}`);
    lines.push(`      default: ${defaultText(spec)}; env: ${envName(key)}; file: ${key}${spec.shape === "list" || spec.shape === "map" ? " (repeatable flag)" : ""}`);
  }
  lines.push(
    "",
    "Exit status: 0 on success, --help and --print-config; 2 when the configuration is invalid (every",
    "problem is listed on stderr).",
    "",
  );
  return lines.join("\n");
}

/** Where {@link applyConfigAction} writes. */
export interface ConfigActionIo {
  readonly stdout: (text: string) => void;
  readonly stderr: (text: string) => void;
}

/**
 * Carries out the non-run actions of a `loadConfig` result for the composition root: prints help
 * (exit 0), the redacted config (exit 0) or every error (exit 2). Returns `{ config, warnings }`
 * when the bridge should start.
 *
 * @example
 * const outcome = applyConfigAction(loadConfig({ argv: process.argv.slice(2), env: process.env, cwd: process.cwd() }), io);
 * if ("exitCode" in outcome) process.exit(outcome.exitCode);
 */
export function applyConfigAction(
  result: LoadConfigResult,
  io: ConfigActionIo,
): { readonly exitCode: number } | { readonly config: BridgeConfig; readonly warnings: readonly string[] } {
  switch (result.action) {
    case "help":
      io.stdout(result.help);
      return { exitCode: 0 };
    case "print-config":
      for (const warning of result.warnings) io.stderr(`warning: ${warning}\n`);
      io.stdout(renderConfig(result.config));
      return { exitCode: 0 };
    case "fail":
      io.stderr(
        `kvmi-bridge: invalid configuration (${result.errors.length} ${result.errors.length === 1 ? "error" : "errors"}):\n` +
          result.errors.map((error) => `  - ${error}\n`).join("") +
          result.warnings.map((warning) => `  warning: ${warning}\n`).join("") +
          "Run kvmi-bridge --help for every option.\n",
      );
      return { exitCode: 2 };
    case "run":
      return { config: result.config, warnings: result.warnings };
    default:
      return result satisfies never;
  }
}
