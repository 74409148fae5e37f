// SPDX-License-Identifier: Apache-2.0
/**
 * The one configuration schema of kvmi-bridge (conventions §10). Every option is declared once
 * in {@link OPTIONS}; its three spellings are derived from the key (`requestTimeoutMs` →
 * `--request-timeout-ms` → `KVMI_BRIDGE_REQUEST_TIMEOUT_MS`), and the same table drives parsing,
 * validation, `--help` and `--print-config`.
 */
import { KNOWN_DIALECT_NAMES } from "@kvmi/kvm-bridge/wire";
import { resolve } from "node:path";
import {
  boolean,
  grpcListen,
  integer,
  kvmiListen,
  ok,
  MAX_TIMER_MS,
  metricsListen,
  msPerName,
  nonEmptyString,
  oneOf,
  readableFile,
  socketOwner,
  socketMode,
  timeoutMs,
} from "./parsers.js";
import type { Parser, ValueContext } from "./parsers.js";

export { MAX_TIMER_MS };
export type { ValueContext };
import { AUTH_OPTIONS } from "./auth-options.js";

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
  readonly parse: Parser<T>;
  /** The printed form (`--print-config`, logs); identity when absent. */
  readonly print?: (value: T) => unknown;
  /** Redacted in `--print-config`, in logs and in errors. */
  readonly secret?: boolean;
}

/** Declares one option; the type argument is the option's value type, stated only here. */
function option<T>(spec: OptionSpec<T>): OptionSpec<T> {
  return spec;
}

const MIB = 1024 * 1024;

/** A count limit (quotas, README "Quotas and bounded memory"); over it: RESOURCE_EXHAUSTED. */
function limit(description: string, defaultValue: number): OptionSpec<number> {
  return { shape: "scalar", valueName: "<n>", description: `${description}; more get RESOURCE_EXHAUSTED.`, defaultValue, parse: integer(1, 1_000_000, "") };
}

/** A byte limit, at least one page and at most 1 TiB. */
function byteLimit(description: string, defaultValue: number): OptionSpec<number> {
  return { shape: "scalar", valueName: "<bytes>", description: `${description}.`, defaultValue, parse: integer(4096, 1024 * 1024 * MIB, "bytes") };
}

/** An absolute directory (resolved against the context directory), or `off`. */
const stateDir: Parser<string> = (raw, ctx) => {
  if (raw === "off" || raw === false) return ok("off");
  const text = nonEmptyString(raw);
  if (!text.ok) return text;
  return ok(resolve(ctx.baseDir, text.value));
};

/** The default KVMI socket of a standalone bridge. */
export const DEFAULT_KVMI_LISTEN = "unix:/run/kvmi-bridge/kvmi.sock";

/**
 * Every option of the bridge, in `--help` order. The key is the file spelling; the flag and the
 * environment variable are derived from it by {@link flagName} and {@link envName}.
 */
export const OPTIONS = {
  grpcListen: option<string>({
    shape: "scalar",
    valueName: "<host:port|unix:path>",
    description: "gRPC listen address. Plaintext is allowed only on loopback or unix sockets (see --tls-cert, --allow-insecure).",
    defaultValue: "127.0.0.1:50051",
    parse: grpcListen,
  }),
  kvmiListen: option<readonly string[]>({
    shape: "list",
    valueName: "<unix:path|tcp:host:port>",
    description:
      "Where QEMU connects with KVMI. Repeat the flag or separate with commas for several sockets; prefix DIALECT@ (e.g. kvmi-v7@unix:PATH) to give one its own dialect.",
    defaultValue: ({ embedded, tmpDir, pid }) =>
      embedded ? [`unix:${resolve(tmpDir, `kvmi-bridge-${pid}`, "kvmi.sock")}`] : [DEFAULT_KVMI_LISTEN],
    defaultHelp: `${DEFAULT_KVMI_LISTEN}; embedded: unix:$TMPDIR/kvmi-bridge-<pid>/kvmi.sock`,
    parse: kvmiListen,
  }),
  kvmiSocketMode: option<number>({
    shape: "scalar",
    valueName: "<octal>",
    description: "Permission bits of KVMI unix sockets (quote it in YAML).",
    defaultValue: 0o660,
    parse: socketMode,
    print: (mode) => `0${mode.toString(8).padStart(3, "0")}`,
  }),
  kvmiSocketOwner: option<{ readonly uid: number; readonly gid: number } | undefined>({
    shape: "scalar",
    valueName: "<uid:gid>",
    description: "Numeric owner and group of KVMI unix sockets (QEMU's), e.g. 107:107; the bridge's own when unset.",
    defaultValue: undefined,
    defaultHelp: "unset",
    parse: socketOwner,
    print: (owner) => (owner === undefined ? undefined : `${owner.uid}:${owner.gid}`),
  }),
  forwardListen: option<readonly string[]>({
    shape: "list",
    valueName: "<unix:path|tcp:host:port>",
    description: "Where KVMI forwarders in VM pods connect (KubeVirt node mode); TCP uses --tls-cert/--tls-key and --forward-client-ca. Default: none.",
    defaultValue: [],
    defaultHelp: "none",
    parse: (raw, ctx) => ((Array.isArray(raw) && raw.length === 0) || raw === "" ? ok([]) : kvmiListen(raw, ctx)),
  }),
  metricsListen: option<string>({
    shape: "scalar",
    valueName: "<host:port|off>",
    description: 'Prometheus /metrics listen address on its own port; "off" disables it.',
    defaultValue: "127.0.0.1:9464",
    parse: metricsListen,
  }),
  tlsCert: option<string | undefined>({
    shape: "scalar",
    valueName: "<file>",
    description: "PEM certificate chain of the gRPC server; enables TLS together with --tls-key.",
    defaultValue: undefined,
    parse: readableFile,
  }),
  tlsKey: option<string | undefined>({
    shape: "scalar",
    valueName: "<file>",
    description: "PEM private key matching --tls-cert.",
    defaultValue: undefined,
    parse: readableFile,
  }),
  tlsClientCa: option<string | undefined>({
    shape: "scalar",
    valueName: "<file>",
    description: "PEM CA bundle; when set, every client must present a certificate it signed (mTLS).",
    defaultValue: undefined,
    parse: readableFile,
  }),
  forwardClientCa: option<string | undefined>({
    shape: "scalar",
    valueName: "<file>",
    description:
      "PEM CA bundle of the forwarders' certificates on a TCP --forward-listen; kept apart from --tls-client-ca so that a gRPC client's certificate cannot connect as a VM.",
    defaultValue: undefined,
    defaultHelp: "--tls-client-ca",
    parse: readableFile,
  }),
  allowInsecure: option<boolean>({
    shape: "bool",
    valueName: "",
    description: "Allow plaintext gRPC on a non-loopback address (only behind another protection layer).",
    defaultValue: false,
    parse: boolean,
  }),
  secretFile: option<string | undefined>({
    shape: "scalar",
    valueName: "<file>",
    description: "File with the QEMU introspection cookie secret; its SHA-1 is sent in the handshake.",
    defaultValue: undefined,
    parse: readableFile,
  }),
  secret: option<string | undefined>({
    shape: "scalar",
    valueName: "<text>",
    description: "The cookie secret itself; prefer --secret-file or the env variable (argv is visible in ps).",
    defaultValue: undefined,
    parse: nonEmptyString,
    secret: true,
  }),
  kvmiDialect: option<string>({
    shape: "scalar",
    valueName: `<${KNOWN_DIALECT_NAMES.join("|")}>`,
    description:
      "KVMI dialect of the kernels that connect (kvmi-v7: KVM-VMI kvmi-v7 kernels, libkvmi's; v12: KVM-VMI kvmi-v12); a kvmiListen entry DIALECT@ADDRESS overrides it for that socket.",
    defaultValue: "v9",
    parse: oneOf(KNOWN_DIALECT_NAMES),
  }),
  handshakeVariant: option<HandshakeVariant>({
    shape: "scalar",
    valueName: `<${HANDSHAKE_VARIANTS.join("|")}>`,
    description: "Handshake layout QEMU sends; auto detects it from the message size.",
    defaultValue: "auto",
    parse: oneOf(HANDSHAKE_VARIANTS),
  }),
  requestTimeoutMs: option<number>({
    shape: "scalar",
    valueName: "<ms>",
    description: "Default deadline of one KVMI command round trip (a shorter gRPC deadline wins).",
    defaultValue: 10_000,
    parse: timeoutMs,
  }),
  eventTimeoutMs: option<number>({
    shape: "scalar",
    valueName: "<ms>",
    description: "Default time a controller has to reply to an event before the bridge auto-replies.",
    defaultValue: 5_000,
    parse: timeoutMs,
  }),
  eventTimeouts: option<Readonly<Partial<Record<EventName, number>>>>({
    shape: "map",
    valueName: "<event=ms,...>",
    description: `Per-event reply deadlines overriding --event-timeout-ms, e.g. cr=1000,msr=2000. Events: ${EVENT_NAMES.join(", ")}.`,
    defaultValue: {},
    defaultHelp: "none",
    parse: msPerName(EVENT_NAMES, "event"),
  }),
  unhookDeadlineMs: option<number>({
    shape: "scalar",
    valueName: "<ms>",
    description: "Time the controller gets after UNHOOK before the bridge undoes the hooks itself.",
    defaultValue: 5_000,
    parse: timeoutMs,
  }),
  controllerGonePolicy: option<ControllerGonePolicy>({
    shape: "scalar",
    valueName: `<${CONTROLLER_GONE_POLICIES.join("|")}>`,
    description: "When a controller disconnects: release its hooks, or keep them for a reconnect.",
    defaultValue: "release",
    parse: oneOf(CONTROLLER_GONE_POLICIES),
  }),
  maxVms: option<number>({
    shape: "scalar",
    valueName: "<n>",
    description: "Most VMs served at once; further KVMI connections are refused.",
    defaultValue: 256,
    parse: integer(1, 65_535, ""),
  }),
  stateDir: option<string>({
    shape: "scalar",
    valueName: "<dir|off>",
    description:
      'Directory where each VM\'s hook ledger is journaled (fsync\'d) before a change reaches the guest, so that a bridge restarted after a crash undoes what a controller left; "off" keeps it in memory only.',
    defaultValue: "off",
    parse: stateDir,
  }),
  ledgerCompactBytes: option<number>({
    shape: "scalar",
    valueName: "<bytes>",
    description: "Size past which a VM's ledger journal is rewritten as one snapshot of the live changes.",
    defaultValue: 1024 * 1024,
    parse: integer(64 * 1024, 1024 * 1024 * 1024, "bytes"),
  }),
  ledgerMaxAgeHours: option<number>({
    shape: "scalar",
    valueName: "<hours>",
    description:
      "Hours after which the ledger journal of a VM that left and never came back is deleted (its changes can no longer be undone if it does come back); 0 keeps journals until removed by hand.",
    defaultValue: 168,
    parse: integer(0, 1_000_000, "hours"),
  }),
  maxSessionsPerIdentity: limit("Session streams one caller identity may hold open", 256),
  maxSessions: limit("Session streams the bridge holds open in all", 1024),
  maxWatchersPerIdentity: limit("WatchVms streams one caller identity may hold open", 64),
  maxWatchers: limit("WatchVms streams the bridge holds open in all", 1024),
  maxInflightPerIdentity: limit("Unary RPCs and session commands one caller identity may have in flight", 1024),
  maxInflight: limit("Unary RPCs and session commands in flight in all", 4096),
  maxBulkBytesPerIdentity: byteLimit("Bytes of bulk memory reads (batches, dump windows) one caller identity may have in flight", 256 * MIB),
  maxBulkBytes: byteLimit("Bytes of bulk memory reads in flight in all", 1024 * MIB),
  dumpMaxHoleBytes: byteLimit("Unbacked guest-physical bytes in a row after which a DumpMemory stops (RESOURCE_EXHAUSTED)", 4096 * MIB),
  logLevel: option<LogLevel>({
    shape: "scalar",
    valueName: `<${LOG_LEVELS.join("|")}>`,
    description: "Lowest level written to the JSON log on stdout.",
    defaultValue: "info",
    parse: oneOf(LOG_LEVELS),
  }),
  embedded: option<boolean>({
    shape: "bool",
    valueName: "",
    description: "Start the built-in KVMI emulator with --embedded-vms fake VMs (demo and tests).",
    defaultValue: false,
    parse: boolean,
  }),
  embeddedVms: option<number>({
    shape: "scalar",
    valueName: "<n>",
    description: "Number of emulated VMs in embedded mode.",
    defaultValue: 2,
    parse: integer(1, 256, ""),
  }),
  embeddedVcpus: option<number>({
    shape: "scalar",
    valueName: "<n>",
    description: "vCPUs per emulated VM.",
    defaultValue: 2,
    parse: integer(1, 256, ""),
  }),
  embeddedMemoryMib: option<number>({
    shape: "scalar",
    valueName: "<MiB>",
    description: "Guest memory per emulated VM.",
    defaultValue: 64,
    parse: integer(1, 65_536, "MiB"),
  }),
  shutdownGraceMs: option<number>({
    shape: "scalar",
    valueName: "<ms>",
    description: "Time in-flight RPCs get on SIGTERM/SIGINT before the server is forced down.",
    defaultValue: 10_000,
    parse: integer(0, MAX_TIMER_MS, "ms"),
  }),
  grpcKeepaliveTimeMs: option<number>({
    shape: "scalar",
    valueName: "<ms>",
    description:
      "Interval of the server's HTTP/2 keepalive pings. A client that stops answering them (a frozen or vanished tool) loses its sessions, and a controller's hooks are handled by the controller-gone policy.",
    defaultValue: 30_000,
    parse: integer(100, MAX_TIMER_MS, "ms"),
  }),
  grpcKeepaliveTimeoutMs: option<number>({
    shape: "scalar",
    valueName: "<ms>",
    description: "How long a keepalive ping may stay unanswered before the connection is dropped.",
    defaultValue: 10_000,
    parse: integer(100, MAX_TIMER_MS, "ms"),
  }),
  ...AUTH_OPTIONS,
};

/** The value type of an option of {@link OPTIONS}. */
export type OptionValue<S> = S extends OptionSpec<infer T> ? T : never;

/**
 * The validated, frozen configuration of one bridge process: one field per option of
 * {@link OPTIONS}, of the type its parser returns (see each option's description). Paths are
 * absolute; listen addresses are normalised (`unix:/abs/path`, `HOST:PORT`, `[v6]:PORT`,
 * `tcp:HOST:PORT`).
 */
export type BridgeConfig = { readonly [K in keyof typeof OPTIONS]: OptionValue<(typeof OPTIONS)[K]> };

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
