// SPDX-License-Identifier: Apache-2.0
/**
 * The one configuration schema of kvmi-bridge (conventions §10). Every option is declared once
 * in {@link OPTIONS}; its three spellings are derived from the key (`requestTimeoutMs` →
 * `--request-timeout-ms` → `KVMI_BRIDGE_REQUEST_TIMEOUT_MS`), and the same table drives parsing,
 * validation, `--help` and `--print-config`.
 */
import { KNOWN_DIALECT_NAMES } from "@kvmi/kvm-bridge/wire";
import { accessSync, constants as fsConstants, statSync } from "node:fs";
import { resolve } from "node:path";
import { formatGrpcListen, formatHostPort, formatKvmiListen, parseGrpcListen, parseHostPort, parseKvmiListen } from "./address.js";
import type { ParseResult } from "./address.js";

/** Log levels, most verbose first (conventions §9: trace = frame hex, debug = per command). */
export const LOG_LEVELS = ["trace", "debug", "info", "warn", "error"] as const;
/** A pino log level the bridge accepts. */
export type LogLevel = (typeof LOG_LEVELS)[number];

/**
 * Handshake layouts the bridge can expect from QEMU (kvmi-abi.md, handshake): `auto` detects the
 * variant from the size QEMU sends.
 */
export const HANDSHAKE_VARIANTS = ["auto", "base", "max-gpa", "e820"] as const;
/** One of {@link HANDSHAKE_VARIANTS}. */
export type HandshakeVariant = (typeof HANDSHAKE_VARIANTS)[number];

/** What the bridge does with a VM whose controlling client went away. */
export const CONTROLLER_GONE_POLICIES = ["release", "keep"] as const;
/** One of {@link CONTROLLER_GONE_POLICIES}. */
export type ControllerGonePolicy = (typeof CONTROLLER_GONE_POLICIES)[number];

/**
 * vCPU events that get a reply and therefore a reply deadline, named like `kvmi.v1.EventType`
 * without its prefix, in lower case (`EVENT_TYPE_PAUSE_VCPU` → `pause_vcpu`). UNHOOK has no reply.
 * The same names are the `event` label of the metrics.
 */
export const EVENT_NAMES = [
  "pause_vcpu",
  "hypercall",
  "breakpoint",
  "cr",
  "trap",
  "xsetbv",
  "descriptor",
  "msr",
  "pf",
  "singlestep",
] as const;
/** One of {@link EVENT_NAMES}. */
export type EventName = (typeof EVENT_NAMES)[number];

/**
 * The validated, frozen configuration of one bridge process. Paths are absolute; listen addresses
 * are normalised (`unix:/abs/path`, `HOST:PORT`, `[v6]:PORT`, `tcp:HOST:PORT`).
 */
export interface BridgeConfig {
  /** gRPC listen address: `HOST:PORT` or `unix:PATH`. */
  readonly grpcListen: string;
  /** KVMI listen addresses for QEMU: `unix:PATH` or `tcp:HOST:PORT`, at least one. */
  readonly kvmiListen: readonly string[];
  /** Permission bits of KVMI unix sockets, e.g. `0o660`. */
  readonly kvmiSocketMode: number;
  /** Prometheus listen address `HOST:PORT`, or `"off"`. */
  readonly metricsListen: string;
  /** PEM certificate chain of the gRPC server. Enables TLS together with {@link tlsKey}. */
  readonly tlsCert: string | undefined;
  /** PEM private key of {@link tlsCert}. */
  readonly tlsKey: string | undefined;
  /** PEM CA bundle; when set, clients must present a certificate signed by it (mTLS). */
  readonly tlsClientCa: string | undefined;
  /** Allows plaintext gRPC on a non-loopback address. */
  readonly allowInsecure: boolean;
  /** File holding the QEMU introspection cookie secret; its SHA-1 goes into the handshake. */
  readonly secretFile: string | undefined;
  /** The cookie secret itself (prefer {@link secretFile}); redacted everywhere. */
  readonly secret: string | undefined;
  /** KVMI dialect of listeners without their own (`DIALECT@ADDRESS` in kvmiListen). */
  readonly kvmiDialect: string;
  /** Handshake layout expected from QEMU. */
  readonly handshakeVariant: HandshakeVariant;
  /** Default deadline of one KVMI command round trip, in ms. */
  readonly requestTimeoutMs: number;
  /** Default time a controller has to reply to an event before the bridge auto-replies, in ms. */
  readonly eventTimeoutMs: number;
  /** Per-event overrides of {@link eventTimeoutMs}, in ms. */
  readonly eventTimeouts: Readonly<Partial<Record<EventName, number>>>;
  /** Time the controller gets after UNHOOK before the bridge undoes its hooks itself, in ms. */
  readonly unhookDeadlineMs: number;
  /** What happens to a VM's hooks when its controller disconnects. */
  readonly controllerGonePolicy: ControllerGonePolicy;
  /** Most VMs this bridge accepts at once; further KVMI connections are refused. */
  readonly maxVms: number;
  /** Lowest level that is logged. */
  readonly logLevel: LogLevel;
  /** Starts the built-in KVMI emulator with {@link embeddedVms} fake VMs. */
  readonly embedded: boolean;
  /** Number of emulated VMs in embedded mode. */
  readonly embeddedVms: number;
  /** vCPUs per emulated VM. */
  readonly embeddedVcpus: number;
  /** Guest memory per emulated VM, in MiB. */
  readonly embeddedMemoryMib: number;
  /** Time in-flight RPCs get on SIGTERM before the server is forced down, in ms. */
  readonly shutdownGraceMs: number;
  /** Interval of the server's HTTP/2 keepalive pings, in ms. */
  readonly grpcKeepaliveTimeMs: number;
  /** How long a keepalive ping may stay unanswered before the connection is dropped, in ms. */
  readonly grpcKeepaliveTimeoutMs: number;
}

/** Where a raw value comes from; used to resolve relative paths and to name it in errors. */
export interface ValueContext {
  /** Directory relative paths are resolved against (cwd, or the config file's directory). */
  readonly baseDir: string;
}

/** Context for defaults that depend on other options or on the process. */
export interface DefaultContext {
  readonly embedded: boolean;
  /** `$TMPDIR` or `/tmp`. */
  readonly tmpDir: string;
  readonly pid: number;
}

/**
 * How an option is given on the command line: `scalar` takes one value, `bool` is a switch with a
 * `--no-` form, `list` and `map` may be repeated and accumulate.
 */
export type OptionShape = "scalar" | "bool" | "list" | "map";

/** The declaration of one option. */
export interface OptionSpec<T> {
  readonly shape: OptionShape;
  /** Placeholder in `--help`, e.g. `<ms>`. */
  readonly valueName: string;
  /** One-line description for `--help`. */
  readonly description: string;
  /** Default value, possibly derived from other options. */
  readonly defaultValue: T | ((ctx: DefaultContext) => T);
  /** Default as shown in `--help`, when it differs from the printed value. */
  readonly defaultHelp?: string;
  /** Parses and validates a raw value (string from flag/env, any JSON value from the file). */
  readonly parse: (raw: unknown, ctx: ValueContext) => ParseResult<T>;
  /** The printed form (`--print-config`, logs); identity when absent. */
  readonly print?: (value: T) => unknown;
  /** Redacted in `--print-config`, in logs and in errors. */
  readonly secret?: boolean;
}

/**
 * Largest timer Node can arm: setTimeout() treats anything above 2^31-1 ms as 1 ms.
 * @see https://nodejs.org/api/timers.html#settimeoutcallback-delay-args
 */
export const MAX_TIMER_MS = 2_147_483_647;

const ok = <T>(value: T): ParseResult<T> => ({ ok: true, value });
const fail = <T>(error: string): ParseResult<T> => ({ ok: false, error });

function show(raw: unknown): string {
  return typeof raw === "string" ? JSON.stringify(raw) : String(JSON.stringify(raw) ?? raw);
}

function integer(min: number, max: number, unit: string): OptionSpec<number>["parse"] {
  return (raw) => {
    let value: number;
    if (typeof raw === "number") value = raw;
    else if (typeof raw === "string" && /^\s*\d+\s*$/.test(raw)) value = Number(raw);
    else return fail(`${show(raw)} is not a whole number${unit ? ` of ${unit}` : ""}`);
    if (!Number.isSafeInteger(value)) return fail(`${show(raw)} is not a whole number${unit ? ` of ${unit}` : ""}`);
    if (value < min || value > max) return fail(`${value} is out of range ${min}..${max}${unit ? ` ${unit}` : ""}`);
    return ok(value);
  };
}

const boolean: OptionSpec<boolean>["parse"] = (raw) => {
  if (typeof raw === "boolean") return ok(raw);
  if (typeof raw === "string") {
    const text = raw.trim().toLowerCase();
    if (["true", "1", "yes", "on"].includes(text)) return ok(true);
    if (["false", "0", "no", "off"].includes(text)) return ok(false);
  }
  return fail(`${show(raw)} is not a boolean (true|false)`);
};

function oneOf<const V extends readonly string[]>(values: V): OptionSpec<V[number]>["parse"] {
  return (raw) =>
    typeof raw === "string" && (values as readonly string[]).includes(raw)
      ? ok(raw as V[number])
      : fail(`${show(raw)} is not one of ${values.join("|")}`);
}

function nonEmptyString(raw: unknown): ParseResult<string> {
  return typeof raw === "string" && raw.trim() !== "" ? ok(raw) : fail(`${show(raw)} is not a non-empty string`);
}

/**
 * A path to a readable regular file, resolved against the context directory. The check runs at
 * start-up so that a missing certificate is reported with every other error, not at first use.
 */
const readableFile: OptionSpec<string | undefined>["parse"] = (raw, ctx) => {
  const text = nonEmptyString(raw);
  if (!text.ok) return fail(text.error);
  const path = resolve(ctx.baseDir, text.value);
  try {
    if (!statSync(path).isFile()) return fail(`"${path}" is not a regular file`);
    accessSync(path, fsConstants.R_OK);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return fail(`file "${path}" does not exist`);
    if (code === "EACCES") return fail(`file "${path}" is not readable by this process`);
    return fail(`file "${path}" cannot be read (${code ?? String(error)})`);
  }
  return ok(path);
};

/** Splits `a,b , c` into trimmed, non-empty items. */
function splitList(text: string): string[] {
  return text
    .split(",")
    .map((item) => item.trim())
    .filter((item) => item !== "");
}

/** Flattens a list raw value: repeated flags (string[]), a comma list, or a file array. */
function listItems(raw: unknown): ParseResult<string[]> {
  if (typeof raw === "string") return ok(splitList(raw));
  if (Array.isArray(raw)) {
    const items: string[] = [];
    for (const item of raw) {
      if (typeof item !== "string") return fail(`list item ${show(item)} is not a string`);
      items.push(...splitList(item));
    }
    return ok(items);
  }
  return fail(`${show(raw)} is not a list of strings`);
}

const kvmiListen: OptionSpec<readonly string[]>["parse"] = (raw, ctx) => {
  const items = listItems(raw);
  if (!items.ok) return fail(items.error);
  if (items.value.length === 0) return fail("at least one address is required (unix:PATH or tcp:HOST:PORT)");
  const problems: string[] = [];
  const seen = new Set<string>();
  const out: string[] = [];
  for (const item of items.value) {
    // `DIALECT@ADDRESS` chooses the dialect of one listener (kvmi-v7@unix:/run/kvmi/libkvmi.sock).
    const { dialect, address } = splitListenDialect(item);
    if (dialect !== undefined && !KNOWN_DIALECT_NAMES.includes(dialect)) {
      problems.push(`${item}: the dialect before @ must be one of ${KNOWN_DIALECT_NAMES.join(", ")}`);
      continue;
    }
    const parsed = parseKvmiListen(address, ctx.baseDir);
    if (!parsed.ok) {
      problems.push(parsed.error);
      continue;
    }
    const normal = formatKvmiListen(parsed.value);
    if (seen.has(normal)) problems.push(`${normal} is listed twice`);
    seen.add(normal);
    out.push(dialect === undefined ? normal : `${dialect}@${normal}`);
  }
  return problems.length > 0 ? fail(problems.join("; ")) : ok(out);
};

/**
 * Splits `DIALECT@ADDRESS` (a kvmiListen entry with its own dialect) from a plain address. Only a
 * prefix before `unix:` or `tcp:` counts, so a unix path holding `@` stays a path.
 */
export function splitListenDialect(item: string): { readonly dialect: string | undefined; readonly address: string } {
  const match = /^([a-z0-9-]+)@((?:unix|tcp):.*)$/.exec(item);
  return match === null ? { dialect: undefined, address: item } : { dialect: match[1]!, address: match[2]! };
}

const socketMode: OptionSpec<number>["parse"] = (raw) => {
  if (typeof raw === "number") {
    // YAML reads 0660 as decimal 660 and 0o660 as 432: both are ambiguous, so insist on a string.
    return fail(`${raw} is a number; write the mode as a quoted octal string, e.g. "0660"`);
  }
  if (typeof raw !== "string" || !/^0?[0-7]{3}$/.test(raw.trim())) {
    return fail(`${show(raw)} is not an octal permission mode like "0660"`);
  }
  return ok(Number.parseInt(raw.trim(), 8));
};

const metricsListen: OptionSpec<string>["parse"] = (raw) => {
  if (raw === false || raw === "off") return ok("off");
  if (typeof raw !== "string") return fail(`${show(raw)} is neither HOST:PORT nor "off"`);
  const parsed = parseHostPort(raw);
  return parsed.ok ? ok(formatHostPort(parsed.value)) : fail(`${parsed.error} (or "off" to disable metrics)`);
};

const grpcListen: OptionSpec<string>["parse"] = (raw, ctx) => {
  if (typeof raw !== "string") return fail(`${show(raw)} is neither HOST:PORT nor unix:PATH`);
  const parsed = parseGrpcListen(raw, ctx.baseDir);
  return parsed.ok ? ok(formatGrpcListen(parsed.value)) : fail(parsed.error);
};

const timeoutMs = integer(1, MAX_TIMER_MS, "ms");

/**
 * Per-event deadlines: `cr=1000,msr=2000` (flag, env, or a string in the file), repeated flags,
 * or a mapping `{cr: 1000}` in the file.
 */
const eventTimeouts: OptionSpec<Readonly<Partial<Record<EventName, number>>>>["parse"] = (raw) => {
  const entries: Array<[string, unknown]> = [];
  if (typeof raw === "string" || Array.isArray(raw)) {
    const items = listItems(raw);
    if (!items.ok) return fail(items.error);
    for (const item of items.value) {
      const eq = item.indexOf("=");
      if (eq <= 0) return fail(`"${item}" is not EVENT=MS (e.g. cr=1000)`);
      entries.push([item.slice(0, eq).trim(), item.slice(eq + 1).trim()]);
    }
  } else if (raw !== null && typeof raw === "object") {
    entries.push(...Object.entries(raw));
  } else {
    return fail(`${show(raw)} is neither EVENT=MS,... nor a mapping of event to ms`);
  }
  const problems: string[] = [];
  const out: Partial<Record<EventName, number>> = {};
  for (const [name, value] of entries) {
    if (!(EVENT_NAMES as readonly string[]).includes(name)) {
      problems.push(`unknown event "${name}" (events: ${EVENT_NAMES.join(", ")})`);
      continue;
    }
    const ms = timeoutMs(value, { baseDir: "" });
    if (ms.ok) out[name as EventName] = ms.value;
    else problems.push(`${name}: ${ms.error}`);
  }
  return problems.length > 0 ? fail(problems.join("; ")) : ok(out);
};

/** The default KVMI socket of a standalone bridge. */
export const DEFAULT_KVMI_LISTEN = "unix:/run/kvmi-bridge/kvmi.sock";

/**
 * Every option of the bridge, in `--help` order. The key is the file spelling; the flag and the
 * environment variable are derived from it by {@link flagName} and {@link envName}.
 */
export const OPTIONS: { readonly [K in keyof BridgeConfig]-?: OptionSpec<BridgeConfig[K]> } = {
  grpcListen: {
    shape: "scalar",
    valueName: "<host:port|unix:path>",
    description: "gRPC listen address. Plaintext is allowed only on loopback or unix sockets (see --tls-cert, --allow-insecure).",
    defaultValue: "127.0.0.1:50051",
    parse: grpcListen,
  },
  kvmiListen: {
    shape: "list",
    valueName: "<unix:path|tcp:host:port>",
    description:
      "Where QEMU connects with KVMI. Repeat the flag or separate with commas for several sockets; prefix DIALECT@ (e.g. kvmi-v7@unix:PATH) to give one its own dialect.",
    defaultValue: ({ embedded, tmpDir, pid }) =>
      embedded ? [`unix:${resolve(tmpDir, `kvmi-bridge-${pid}`, "kvmi.sock")}`] : [DEFAULT_KVMI_LISTEN],
    defaultHelp: `${DEFAULT_KVMI_LISTEN}; embedded: unix:$TMPDIR/kvmi-bridge-<pid>/kvmi.sock`,
    parse: kvmiListen,
  },
  kvmiSocketMode: {
    shape: "scalar",
    valueName: "<octal>",
    description: "Permission bits of KVMI unix sockets (quote it in YAML).",
    defaultValue: 0o660,
    parse: socketMode,
    print: (mode) => `0${mode.toString(8).padStart(3, "0")}`,
  },
  metricsListen: {
    shape: "scalar",
    valueName: "<host:port|off>",
    description: 'Prometheus /metrics listen address on its own port; "off" disables it.',
    defaultValue: "127.0.0.1:9464",
    parse: metricsListen,
  },
  tlsCert: {
    shape: "scalar",
    valueName: "<file>",
    description: "PEM certificate chain of the gRPC server; enables TLS together with --tls-key.",
    defaultValue: undefined,
    parse: readableFile,
  },
  tlsKey: {
    shape: "scalar",
    valueName: "<file>",
    description: "PEM private key matching --tls-cert.",
    defaultValue: undefined,
    parse: readableFile,
  },
  tlsClientCa: {
    shape: "scalar",
    valueName: "<file>",
    description: "PEM CA bundle; when set, every client must present a certificate it signed (mTLS).",
    defaultValue: undefined,
    parse: readableFile,
  },
  allowInsecure: {
    shape: "bool",
    valueName: "",
    description: "Allow plaintext gRPC on a non-loopback address (only behind another protection layer).",
    defaultValue: false,
    parse: boolean,
  },
  secretFile: {
    shape: "scalar",
    valueName: "<file>",
    description: "File with the QEMU introspection cookie secret; its SHA-1 is sent in the handshake.",
    defaultValue: undefined,
    parse: readableFile,
  },
  secret: {
    shape: "scalar",
    valueName: "<text>",
    description: "The cookie secret itself; prefer --secret-file or the env variable (argv is visible in ps).",
    defaultValue: undefined,
    parse: nonEmptyString,
    secret: true,
  },
  kvmiDialect: {
    shape: "scalar",
    valueName: `<${KNOWN_DIALECT_NAMES.join("|")}>`,
    description:
      "KVMI dialect of the kernels that connect (kvmi-v7: KVM-VMI kvmi-v7 kernels, libkvmi's; v12: KVM-VMI kvmi-v12); a kvmiListen entry DIALECT@ADDRESS overrides it for that socket.",
    defaultValue: "v9",
    parse: oneOf(KNOWN_DIALECT_NAMES),
  },
  handshakeVariant: {
    shape: "scalar",
    valueName: `<${HANDSHAKE_VARIANTS.join("|")}>`,
    description: "Handshake layout QEMU sends; auto detects it from the message size.",
    defaultValue: "auto",
    parse: oneOf(HANDSHAKE_VARIANTS),
  },
  requestTimeoutMs: {
    shape: "scalar",
    valueName: "<ms>",
    description: "Default deadline of one KVMI command round trip (a shorter gRPC deadline wins).",
    defaultValue: 10_000,
    parse: timeoutMs,
  },
  eventTimeoutMs: {
    shape: "scalar",
    valueName: "<ms>",
    description: "Default time a controller has to reply to an event before the bridge auto-replies.",
    defaultValue: 5_000,
    parse: timeoutMs,
  },
  eventTimeouts: {
    shape: "map",
    valueName: "<event=ms,...>",
    description: `Per-event reply deadlines overriding --event-timeout-ms, e.g. cr=1000,msr=2000. Events: ${EVENT_NAMES.join(", ")}.`,
    defaultValue: {},
    defaultHelp: "none",
    parse: eventTimeouts,
  },
  unhookDeadlineMs: {
    shape: "scalar",
    valueName: "<ms>",
    description: "Time the controller gets after UNHOOK before the bridge undoes the hooks itself.",
    defaultValue: 5_000,
    parse: timeoutMs,
  },
  controllerGonePolicy: {
    shape: "scalar",
    valueName: `<${CONTROLLER_GONE_POLICIES.join("|")}>`,
    description: "When a controller disconnects: release its hooks, or keep them for a reconnect.",
    defaultValue: "release",
    parse: oneOf(CONTROLLER_GONE_POLICIES),
  },
  maxVms: {
    shape: "scalar",
    valueName: "<n>",
    description: "Most VMs served at once; further KVMI connections are refused.",
    defaultValue: 256,
    parse: integer(1, 65_535, ""),
  },
  logLevel: {
    shape: "scalar",
    valueName: `<${LOG_LEVELS.join("|")}>`,
    description: "Lowest level written to the JSON log on stdout.",
    defaultValue: "info",
    parse: oneOf(LOG_LEVELS),
  },
  embedded: {
    shape: "bool",
    valueName: "",
    description: "Start the built-in KVMI emulator with --embedded-vms fake VMs (demo and tests).",
    defaultValue: false,
    parse: boolean,
  },
  embeddedVms: {
    shape: "scalar",
    valueName: "<n>",
    description: "Number of emulated VMs in embedded mode.",
    defaultValue: 2,
    parse: integer(1, 256, ""),
  },
  embeddedVcpus: {
    shape: "scalar",
    valueName: "<n>",
    description: "vCPUs per emulated VM.",
    defaultValue: 2,
    parse: integer(1, 256, ""),
  },
  embeddedMemoryMib: {
    shape: "scalar",
    valueName: "<MiB>",
    description: "Guest memory per emulated VM.",
    defaultValue: 64,
    parse: integer(1, 65_536, "MiB"),
  },
  shutdownGraceMs: {
    shape: "scalar",
    valueName: "<ms>",
    description: "Time in-flight RPCs get on SIGTERM/SIGINT before the server is forced down.",
    defaultValue: 10_000,
    parse: integer(0, MAX_TIMER_MS, "ms"),
  },
  grpcKeepaliveTimeMs: {
    shape: "scalar",
    valueName: "<ms>",
    description:
      "Interval of the server's HTTP/2 keepalive pings. A client that stops answering them (a frozen or vanished tool) loses its sessions, and a controller's hooks are handled by the controller-gone policy.",
    defaultValue: 30_000,
    parse: integer(100, MAX_TIMER_MS, "ms"),
  },
  grpcKeepaliveTimeoutMs: {
    shape: "scalar",
    valueName: "<ms>",
    description: "How long a keepalive ping may stay unanswered before the connection is dropped.",
    defaultValue: 10_000,
    parse: integer(100, MAX_TIMER_MS, "ms"),
  },
};

/** Every option key, in declaration order. */
export const OPTION_KEYS = Object.keys(OPTIONS) as ReadonlyArray<keyof BridgeConfig>;

/** Prefix of every environment variable of the bridge. */
export const ENV_PREFIX = "KVMI_BRIDGE_";

/** `requestTimeoutMs` → `request-timeout-ms`. */
export function flagName(key: string): string {
  return key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

/** `requestTimeoutMs` → `KVMI_BRIDGE_REQUEST_TIMEOUT_MS`. */
export function envName(key: string): string {
  return ENV_PREFIX + flagName(key).replace(/-/g, "_").toUpperCase();
}
