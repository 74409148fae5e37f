// SPDX-License-Identifier: Apache-2.0
/**
 * Loads the bridge configuration from flags, environment and an optional YAML/JSON file
 * (conventions §10). Precedence is flags > env > file > defaults, per option (per event for
 * `eventTimeouts`). Every error is collected and returned at once; the result is deep-frozen.
 *
 * This is the only module that looks at the environment, and even it does not read
 * `process.env`: the composition root passes `env` in.
 */
import { X509Certificate, createPrivateKey } from "node:crypto";
import { readFileSync } from "node:fs";
import { dirname, extname, resolve } from "node:path";
import { parse as parseYaml } from "yaml";
import { isLoopback, isWildcardHost, parseGrpcListen, parseHostPort, parseKvmiListen } from "./address.js";
import type { ListenAddress } from "./address.js";
import { checkAuthOptions } from "./auth-options.js";
import { ENV_PREFIX, OPTION_KEYS, OPTIONS, envName, flagName } from "./options.js";
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

type Layer = "flag" | "env" | "file";

/** One raw value from one layer. */
interface RawValue {
  readonly layer: Layer;
  readonly value: unknown;
  /** How the user spelled it, for error messages. */
  readonly label: string;
  readonly ctx: ValueContext;
}

const META_FLAGS = new Set(["help", "print-config", "config"]);
const CONFIG_ENV = `${ENV_PREFIX}CONFIG`;
/**
 * Variables Kubernetes injects for a Service named `kvmi-bridge` (service links:
 * `KVMI_BRIDGE_SERVICE_HOST`, `KVMI_BRIDGE_PORT_50051_TCP_ADDR`, ...). They share our prefix but
 * are not configuration, so they are neither errors nor warnings.
 * @see https://kubernetes.io/docs/concepts/services-networking/service/#environment-variables
 */
const K8S_SERVICE_LINK = /^KVMI_BRIDGE_(SERVICE_HOST|SERVICE_PORT(_.*)?|PORT(_\d+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)?)$/;

const byFlag = new Map(OPTION_KEYS.map((key) => [flagName(key), key]));
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

interface ParsedArgv {
  readonly help: boolean;
  readonly printConfig: boolean;
  readonly configPath: string | undefined;
  readonly values: ReadonlyArray<readonly [keyof BridgeConfig, RawValue]>;
}

function parseArgv(argv: readonly string[], ctx: ValueContext, errors: string[]): ParsedArgv {
  let help = false;
  let printConfig = false;
  let configPath: string | undefined;
  const scalars = new Map<keyof BridgeConfig, RawValue>();
  const repeated = new Map<keyof BridgeConfig, { label: string; items: string[] }>();
  for (let i = 0; i < argv.length; i++) {
    const token = argv[i]!;
    if (token === "-h") {
      help = true;
      continue;
    }
    if (token === "--") {
      for (const rest of argv.slice(i + 1)) errors.push(`unexpected argument "${rest}"`);
      break;
    }
    if (!token.startsWith("--")) {
      errors.push(`unexpected argument "${token}" (options start with --; see --help)`);
      continue;
    }
    const eq = token.indexOf("=");
    const name = token.slice(2, eq < 0 ? undefined : eq);
    const inline = eq < 0 ? undefined : token.slice(eq + 1);
    const label = `--${name}`;
    const takeValue = (): string | undefined => {
      if (inline !== undefined) return inline;
      const next = argv[i + 1];
      if (next === undefined || next.startsWith("--")) {
        errors.push(`${label}: needs a value`);
        return undefined;
      }
      i++;
      return next;
    };

    if (META_FLAGS.has(name)) {
      if (name === "config") {
        const value = takeValue();
        if (value !== undefined) {
          if (configPath !== undefined) errors.push(`--config: given more than once`);
          configPath = resolve(ctx.baseDir, value);
        }
      } else if (inline !== undefined) {
        errors.push(`${label}: takes no value`);
      } else if (name === "help") help = true;
      else printConfig = true;
      continue;
    }

    const negated = name.startsWith("no-") ? byFlag.get(name.slice(3)) : undefined;
    if (negated !== undefined && OPTIONS[negated].shape === "bool") {
      if (inline !== undefined) errors.push(`${label}: takes no value`);
      else setScalar(negated, { layer: "flag", value: false, label, ctx });
      continue;
    }
    const key = byFlag.get(name);
    if (key === undefined) {
      errors.push(`${label}: unknown option${suggest(label, [...[...byFlag.keys()].map((f) => `--${f}`), "--config", "--print-config", "--help"])}`);
      continue;
    }
    const shape = OPTIONS[key].shape;
    if (shape === "bool") {
      setScalar(key, { layer: "flag", value: inline ?? true, label, ctx });
    } else if (shape === "list" || shape === "map") {
      const value = takeValue();
      if (value === undefined) continue;
      const entry = repeated.get(key) ?? { label, items: [] };
      entry.items.push(value);
      repeated.set(key, entry);
    } else {
      const value = takeValue();
      if (value !== undefined) setScalar(key, { layer: "flag", value, label, ctx });
    }
  }
  function setScalar(key: keyof BridgeConfig, raw: RawValue): void {
    if (scalars.has(key)) errors.push(`${raw.label}: given more than once (as ${scalars.get(key)!.label})`);
    scalars.set(key, raw);
  }
  const values: Array<readonly [keyof BridgeConfig, RawValue]> = [...scalars];
  for (const [key, { label, items }] of repeated) values.push([key, { layer: "flag", value: items, label, ctx }]);
  return { help, printConfig, configPath, values };
}

function readConfigFile(path: string, source: string, errors: string[]): Array<readonly [keyof BridgeConfig, RawValue]> {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    errors.push(`${source}: cannot read "${path}" (${code === "ENOENT" ? "no such file" : (code ?? String(error))})`);
    return [];
  }
  const ext = extname(path).toLowerCase();
  let document: unknown;
  try {
    if (ext === ".json") document = JSON.parse(text);
    else if (ext === ".yaml" || ext === ".yml") document = parseYaml(text);
    else {
      errors.push(`${source}: "${path}" must end in .yaml, .yml or .json`);
      return [];
    }
  } catch (error) {
    errors.push(`${source}: "${path}" is not valid ${ext === ".json" ? "JSON" : "YAML"}: ${(error as Error).message.split("\n")[0]}`);
    return [];
  }
  if (document === null || document === undefined) return []; // An empty file configures nothing.
  if (typeof document !== "object" || Array.isArray(document)) {
    errors.push(`${source}: "${path}" must hold a mapping of option names to values`);
    return [];
  }
  const ctx: ValueContext = { baseDir: dirname(path) };
  const out: Array<readonly [keyof BridgeConfig, RawValue]> = [];
  for (const [name, value] of Object.entries(document)) {
    const label = `${name} in ${path}`;
    if (!Object.hasOwn(OPTIONS, name)) {
      errors.push(`${label}: unknown option${suggest(name, OPTION_KEYS)}`);
      continue;
    }
    if (value === null) continue; // null means "not set here", so a printed config can be fed back.
    out.push([name as keyof BridgeConfig, { layer: "file", value, label, ctx }]);
  }
  return out;
}

function crossCheck(
  c: Partial<BridgeConfig>,
  failed: ReadonlySet<string>,
  origin: Readonly<Record<string, string>>,
  now: Date,
  errors: string[],
  warnings: string[],
): void {
  const good = (...keys: Array<keyof BridgeConfig>): boolean => keys.every((key) => !failed.has(key));
  const name = (key: keyof BridgeConfig): string => origin[key] ?? key;

  // TLS material comes as a pair; a client CA needs a server certificate.
  if (good("tlsCert", "tlsKey")) {
    if (c.tlsCert !== undefined && c.tlsKey === undefined) errors.push(`${name("tlsCert")}: needs --tls-key as well`);
    if (c.tlsKey !== undefined && c.tlsCert === undefined) errors.push(`${name("tlsKey")}: needs --tls-cert as well`);
  }
  if (good("tlsCert", "tlsKey") && c.tlsCert !== undefined && c.tlsKey !== undefined) {
    checkKeyPair(c.tlsCert, c.tlsKey, name("tlsCert"), name("tlsKey"), now, errors, warnings);
  }
  // A CA bundle of peer certificates (clients', forwarders') needs a server certificate and PEM.
  for (const [key, whose] of [["tlsClientCa", "client"], ["forwardClientCa", "forwarder"]] as const) {
    const file = c[key];
    if (file === undefined) continue;
    if (good(key, "tlsCert") && c.tlsCert === undefined) errors.push(`${name(key)}: ${whose} certificates need TLS; give --tls-cert and --tls-key too`);
    if (!good(key)) continue;
    try {
      new X509Certificate(readFileSync(file));
    } catch {
      errors.push(`${name(key)}: "${file}" holds no PEM certificate`);
    }
  }
  if (good("forwardListen", "forwardClientCa", "tlsClientCa") && c.forwardClientCa === undefined && c.tlsClientCa !== undefined) {
    const tcp = (c.forwardListen ?? []).filter((item) => {
      const address = parseKvmiListen(item, "/");
      return address.ok && address.value.kind === "tcp";
    });
    if (tcp.length > 0) {
      warnings.push(`${name("forwardListen")}: forwarders on ${tcp.join(", ")} are checked against --tls-client-ca, so any gRPC client certificate can connect as a VM; give --forward-client-ca`);
    }
  }

  // Plaintext only where nobody else can listen in (guest memory travels over this socket).
  if (good("grpcListen", "tlsCert", "tlsKey", "allowInsecure") && c.grpcListen !== undefined) {
    const address = parseGrpcListen(c.grpcListen, "/");
    const tls = c.tlsCert !== undefined && c.tlsKey !== undefined;
    if (address.ok && !tls && !isLoopback(address.value) && c.allowInsecure !== true) {
      errors.push(
        `${name("grpcListen")}: ${c.grpcListen} is not a loopback address, and plaintext gRPC there would expose guest ` +
          `memory to the network. Give --tls-cert and --tls-key (plus --tls-client-ca for mTLS), listen on ` +
          `127.0.0.1:PORT or unix:PATH, or pass --allow-insecure if another layer protects the network`,
      );
    }
    if (tls && c.allowInsecure === true) warnings.push(`${name("allowInsecure")}: has no effect because TLS is configured`);
  }

  // A policy is required off loopback unless authorization is explicitly off (docs/authorization.md).
  if (good("authorization", "policyFile", "jwtJwksFile", "jwtIssuer", "jwtAudience", "grpcListen")) {
    const address = c.grpcListen === undefined ? undefined : parseGrpcListen(c.grpcListen, "/");
    checkAuthOptions(c, address?.ok === true ? isLoopback(address.value) : undefined, name, errors);
  }

  // One secret source.
  if (good("secret", "secretFile") && c.secret !== undefined && c.secretFile !== undefined) {
    errors.push(`${name("secretFile")}: give either a secret file or an inline secret (${name("secret")}), not both`);
  }
  if (good("secretFile") && c.secretFile !== undefined) {
    try {
      if (readFileSync(c.secretFile).length === 0) errors.push(`${name("secretFile")}: "${c.secretFile}" is empty`);
    } catch (error) {
      errors.push(`${name("secretFile")}: cannot read "${c.secretFile}" (${(error as NodeJS.ErrnoException).code})`);
    }
  }

  if (good("embedded", "embeddedVms", "maxVms") && c.embedded && c.embeddedVms! > c.maxVms!) {
    errors.push(`${name("embeddedVms")}: ${c.embeddedVms} emulated VMs exceed maxVms ${c.maxVms}`);
  }

  // Two listeners on one endpoint fail at bind time with EADDRINUSE; say which ones now.
  if (good("grpcListen", "metricsListen", "kvmiListen")) {
    const endpoints: Array<{ label: string; address: ListenAddress }> = [];
    const grpc = parseGrpcListen(c.grpcListen!, "/");
    if (grpc.ok) endpoints.push({ label: name("grpcListen"), address: grpc.value });
    if (c.metricsListen !== "off") {
      const metrics = parseHostPort(c.metricsListen!);
      if (metrics.ok) endpoints.push({ label: name("metricsListen"), address: metrics.value });
    }
    for (const item of c.kvmiListen!) {
      const kvmi = parseKvmiListen(item, "/");
      if (!kvmi.ok) continue;
      endpoints.push({ label: name("kvmiListen"), address: kvmi.value });
      if (kvmi.value.kind === "tcp" && !isLoopback(kvmi.value)) {
        warnings.push(`${name("kvmiListen")}: ${item} accepts KVMI from the network; only the cookie secret authenticates QEMU`);
      }
    }
    for (let i = 0; i < endpoints.length; i++) {
      for (let j = i + 1; j < endpoints.length; j++) {
        if (sameEndpoint(endpoints[i]!.address, endpoints[j]!.address)) {
          errors.push(`${endpoints[j]!.label}: uses the same address as ${endpoints[i]!.label}`);
        }
      }
    }
  }
}

function sameEndpoint(a: ListenAddress, b: ListenAddress): boolean {
  if (a.kind === "unix") return b.kind === "unix" && a.path === b.path;
  if (b.kind === "unix") return false;
  if (a.port === 0 || a.port !== b.port) return false;
  return a.host === b.host || isWildcardHost(a.host) || isWildcardHost(b.host);
}

function checkKeyPair(certPath: string, keyPath: string, certLabel: string, keyLabel: string, now: Date, errors: string[], warnings: string[]): void {
  let cert: X509Certificate | undefined;
  try {
    cert = new X509Certificate(readFileSync(certPath));
  } catch {
    errors.push(`${certLabel}: "${certPath}" holds no PEM certificate`);
  }
  let key: ReturnType<typeof createPrivateKey> | undefined;
  try {
    key = createPrivateKey(readFileSync(keyPath));
  } catch (error) {
    const encrypted = /passphrase/i.test((error as Error).message);
    errors.push(`${keyLabel}: "${keyPath}" ${encrypted ? "is encrypted; give an unencrypted PEM key" : "holds no PEM private key"}`);
  }
  if (cert === undefined) return;
  if (key !== undefined && !cert.checkPrivateKey(key)) {
    errors.push(`${keyLabel}: "${keyPath}" does not belong to the certificate in "${certPath}"`);
  }
  if (new Date(cert.validTo).getTime() < now.getTime()) {
    errors.push(`${certLabel}: the certificate in "${certPath}" expired on ${new Date(cert.validTo).toISOString()}`);
  } else if (new Date(cert.validFrom).getTime() > now.getTime()) {
    warnings.push(`${certLabel}: the certificate in "${certPath}" is not valid before ${new Date(cert.validFrom).toISOString()}`);
  }
}

/** ` (did you mean X?)` for the closest candidate within a small edit distance, or "". */
function suggest(input: string, candidates: Iterable<string>): string {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const candidate of candidates) {
    const distance = editDistance(input.toLowerCase(), candidate.toLowerCase());
    if (distance < bestDistance) {
      best = candidate;
      bestDistance = distance;
    }
  }
  return best !== undefined && bestDistance <= Math.max(2, Math.floor(input.length / 4)) ? ` (did you mean ${best}?)` : "";
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(previous[j]! + 1, current[j - 1]! + 1, previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    previous = current;
  }
  return previous[b.length]!;
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === "object" && !Object.isFrozen(value)) {
    for (const inner of Object.values(value)) deepFreeze(inner);
    Object.freeze(value);
  }
  return value;
}
