// SPDX-License-Identifier: Apache-2.0
/**
 * Loads the bridge configuration from flags, environment and an optional YAML/JSON file
 * (conventions §10). Precedence is flags > env > file > defaults, per option (per event for
 * `eventTimeouts`). Every error is collected and returned at once; the result is deep-frozen.
 *
 * This is the only module that looks at the environment, and even it does not read
 * `process.env`: the composition root passes `env` in. The flag and file layers are read in
 * config-sources.ts, the rules across options are in cross-check.ts.
 */
import { resolve } from "node:path";
import { parseArgv, readConfigFile, suggest } from "./config-sources.js";
import type { Layer, RawValue } from "./config-sources.js";
import { crossCheck } from "./cross-check.js";
import { ENV_PREFIX, OPTION_KEYS, OPTIONS, envName } from "./options.js";
import type { BridgeConfig, DefaultContext, OptionSpec, ValueContext } from "./options.js";
import { renderHelp } from "./render.js";

/** Inputs of {@link loadConfig}; nothing is read from the process itself. */
export interface LoadConfigInput {
  /** Command-line arguments without node and script, i.e. `process.argv.slice(2)`. */
  readonly argv: readonly string[];
  /** The environment, i.e. `process.env`. */
  readonly env: Readonly<Record<string, string | undefined>>;
  /** Directory relative flag/env paths are resolved against, i.e. `process.cwd()`. */
  readonly cwd: string;
  /** Process id, used only for the embedded-mode KVMI socket directory. Default 0. */
  readonly pid?: number;
  /** Clock for certificate validity checks. Default: now. */
  readonly now?: Date;
}

/** What {@link loadConfig} found. Discriminate on `action` (or `"errors" in result`). */
export type LoadConfigResult =
  /** `--help`/`-h` was given: print `help` to stdout and exit 0. */
  | { readonly action: "help"; readonly help: string }
  /** Valid: run (or, with `--print-config`, print `redactedConfig(config)` and exit 0). */
  | {
      readonly action: "run" | "print-config";
      readonly config: BridgeConfig;
      /** Non-fatal findings to log at warn once the logger exists. */
      readonly warnings: readonly string[];
    }
  /** Invalid: print every error to stderr and exit 2. */
  | { readonly action: "fail"; readonly errors: readonly string[]; readonly warnings: readonly string[] };

/** Thrown by {@link loadConfigOrThrow}; `errors` holds every problem found, one per entry. */
export class ConfigError extends Error {
  /** Stable error code. */
  readonly code = "KVMI_BRIDGE_CONFIG_INVALID";
  constructor(readonly errors: readonly string[]) {
    super(`invalid configuration (${errors.length} ${errors.length === 1 ? "error" : "errors"}):\n  - ${errors.join("\n  - ")}`);
    this.name = "ConfigError";
  }
}

const CONFIG_ENV = `${ENV_PREFIX}CONFIG`;
/**
 * Variables Kubernetes injects for a Service named `kvmi-bridge` (service links:
 * `KVMI_BRIDGE_SERVICE_HOST`, `KVMI_BRIDGE_PORT_50051_TCP_ADDR`, ...). They share our prefix but
 * are not configuration, so they are neither errors nor warnings.
 * @see https://kubernetes.io/docs/concepts/services-networking/service/#environment-variables
 */
const K8S_SERVICE_LINK = /^KVMI_BRIDGE_(SERVICE_HOST|SERVICE_PORT(_.*)?|PORT(_\d+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)?)$/;

const byEnv = new Map(OPTION_KEYS.map((key) => [envName(key), key]));

/**
 * Loads and validates the configuration.
 *
 * - Flags: `--name value`, `--name=value`, `--switch`, `--no-switch`; list and map options may
 *   be repeated. `--config FILE` (or `KVMI_BRIDGE_CONFIG`) names a `.yaml`, `.yml` or `.json`
 *   file with camelCase keys. `--print-config` and `--help`/`-h` select the action.
 * - Env: `KVMI_BRIDGE_<OPTION>`; empty values count as unset; lists and maps are comma-separated.
 * - Relative paths are resolved against `cwd` (flags, env) or the config file's directory.
 * - Only the winning value of an option is validated (a flag can override a broken file value).
 *
 * Never throws for bad input: every problem is an entry in `errors`.
 */
export function loadConfig(input: LoadConfigInput): LoadConfigResult {
  const errors: string[] = [];
  const warnings: string[] = [];
  const layers = new Map<keyof BridgeConfig, RawValue[]>(OPTION_KEYS.map((key) => [key, []]));
  const cwdCtx: ValueContext = { baseDir: input.cwd };

  // 1. Flags.
  const flags = parseArgv(input.argv, cwdCtx, errors);
  if (flags.help) return { action: "help", help: renderHelp() };
  for (const [key, raw] of flags.values) layers.get(key)!.push(raw);

  // 2. Environment.
  for (const [name, value] of Object.entries(input.env)) {
    if (!name.startsWith(ENV_PREFIX) || value === undefined || value === "") continue;
    const key = byEnv.get(name);
    if (key !== undefined) {
      layers.get(key)!.push({ layer: "env", value, label: name, ctx: cwdCtx });
    } else if (name !== CONFIG_ENV && !K8S_SERVICE_LINK.test(name)) {
      warnings.push(`${name}: not a kvmi-bridge option, ignored${suggest(name, [...byEnv.keys(), CONFIG_ENV])}`);
    }
  }

  // 3. File.
  const envConfig = input.env[CONFIG_ENV];
  const configPath = flags.configPath ?? (envConfig ? resolve(input.cwd, envConfig) : undefined);
  if (configPath !== undefined) {
    const label = flags.configPath !== undefined ? "--config" : CONFIG_ENV;
    for (const [key, raw] of readConfigFile(configPath, label, errors)) layers.get(key)!.push(raw);
  }

  // 4. Resolve each option: the highest layer wins, maps merge per entry.
  const values: Record<string, unknown> = {};
  const origin: Record<string, string> = {};
  const failed = new Set<string>();
  const precedence: Record<Layer, number> = { file: 0, env: 1, flag: 2 };
  const resolveOption = (key: keyof BridgeConfig, defaults: DefaultContext): void => {
    const spec = OPTIONS[key] as OptionSpec<unknown>;
    const raws = [...layers.get(key)!].sort((a, b) => precedence[a.layer] - precedence[b.layer]);
    const report = (raw: RawValue, error: string): void => {
      failed.add(key);
      errors.push(`${raw.label}: ${spec.secret ? "invalid value (not shown: secret)" : error}`);
    };
    if (spec.shape === "map") {
      let merged: Record<string, unknown> = {};
      for (const raw of raws) {
        const parsed = spec.parse(raw.value, raw.ctx);
        if (parsed.ok) merged = { ...merged, ...(parsed.value as Record<string, unknown>) };
        else report(raw, parsed.error);
      }
      values[key] = raws.length > 0 ? merged : defaultOf(spec, defaults);
      origin[key] = raws.at(-1)?.label ?? `${key} (default)`;
      return;
    }
    const winner = raws.at(-1);
    if (winner === undefined) {
      values[key] = defaultOf(spec, defaults);
      origin[key] = `${key} (default)`;
      return;
    }
    const parsed = spec.parse(winner.value, winner.ctx);
    if (parsed.ok) values[key] = parsed.value;
    else report(winner, parsed.error);
    origin[key] = winner.label;
  };
  const preliminary: DefaultContext = { embedded: false, tmpDir: input.env.TMPDIR || "/tmp", pid: input.pid ?? 0 };
  resolveOption("embedded", preliminary);
  const defaults: DefaultContext = { ...preliminary, embedded: values.embedded === true };
  for (const key of OPTION_KEYS) if (key !== "embedded") resolveOption(key, defaults);

  // 5. Rules across options, only over options that parsed.
  crossCheck(values as Partial<BridgeConfig>, failed, origin, input.now ?? new Date(), errors, warnings);

  if (errors.length > 0) return { action: "fail", errors, warnings };
  const config = deepFreeze(values) as unknown as BridgeConfig;
  return { action: flags.printConfig ? "print-config" : "run", config, warnings };
}

/**
 * {@link loadConfig} for callers that prefer exceptions: returns the config for `run` and
 * `print-config`, throws {@link ConfigError} on invalid input. `--help` yields a config error
 * too, so use {@link loadConfig} when you honour `--help`.
 */
export function loadConfigOrThrow(input: LoadConfigInput): BridgeConfig {
  const result = loadConfig(input);
  if (result.action === "fail") throw new ConfigError(result.errors);
  if (result.action === "help") throw new ConfigError(["--help is not supported here"]);
  return result.config;
}

function defaultOf(spec: OptionSpec<unknown>, ctx: DefaultContext): unknown {
  return typeof spec.defaultValue === "function" ? (spec.defaultValue as (c: DefaultContext) => unknown)(ctx) : spec.defaultValue;
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === "object" && !Object.isFrozen(value)) {
    for (const inner of Object.values(value)) deepFreeze(inner);
    Object.freeze(value);
  }
  return value;
}
