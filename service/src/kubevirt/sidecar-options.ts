// SPDX-License-Identifier: Apache-2.0
/**
 * Options of `kvmi-kubevirt-sidecar`, and where its files live.
 *
 * KubeVirt mounts the pod's hook-socket volume (an emptyDir) at `/var/run/kubevirt-hooks` in every
 * container: whole in the compute container (virt-launcher, libvirt, QEMU), and with
 * `subPath: <container name>` in each hook sidecar `hook-sidecar-<i>` (i = its index in the
 * `hooks.kubevirt.io/hookSidecars` annotation). virt-launcher treats every non-directory entry of
 * `/var/run/kubevirt-hooks/<dir>/` as a hook server socket and skips directories, so the bridge's
 * KVMI socket and the cookie file go one directory deeper. The same file therefore has two names:
 *
 * | what | in the sidecar | in the compute container (QEMU) |
 * |---|---|---|
 * | hook socket | `/var/run/kubevirt-hooks/kvmi-bridge.sock` | `/var/run/kubevirt-hooks/hook-sidecar-<i>/kvmi-bridge.sock` |
 * | KVMI socket | `/var/run/kubevirt-hooks/kvmi/kvmi.sock` | `/var/run/kubevirt-hooks/hook-sidecar-<i>/kvmi/kvmi.sock` |
 * | cookie | `/var/run/kubevirt-hooks/kvmi/cookie` | `/var/run/kubevirt-hooks/hook-sidecar-<i>/kvmi/cookie` |
 *
 * @see https://github.com/kubevirt/kubevirt/blob/main/pkg/hooks/manager.go (collectSideCarSockets)
 * @see https://github.com/kubevirt/kubevirt/blob/main/pkg/virt-controller/services/template.go (sidecarVolumeMount)
 */
import { join, posix } from "node:path";
import { parseArgs } from "node:util";
import { dialectByName, KNOWN_DIALECT_NAMES } from "@kvmi/kvm-bridge/wire";
import type { Dialect } from "@kvmi/kvm-bridge/wire";
import { resolveKvmiIds } from "./introspection-args.js";

/** KubeVirt's hook socket directory (`hooks.HookSocketsSharedDirectory`). */
export const HOOKS_DIR = "/var/run/kubevirt-hooks";
/** The VMI annotation listing hook sidecars. */
export const HOOK_SIDECARS_ANNOTATION = "hooks.kubevirt.io/hookSidecars";
/** The name this sidecar's entry point carries, to find its entry in the annotation. */
export const SIDECAR_BIN_NAME = "kvmi-kubevirt-sidecar";
/** Where KubeVirt's Plugin API (v1.9+, `Plugins` feature gate) expects domain hook sockets. */
export const PLUGIN_SOCKETS_DIR = "/var/run/kubevirt-plugin";
/** The variable KubeVirt sets in every hook sidecar to its container name (`hooks.ContainerNameEnvVar`). */
export const CONTAINER_NAME_ENV = "CONTAINER_NAME";

/** How the sidecar reaches the node's bridge in node mode (`--node-bridge`). */
export type NodeBridgeAddress =
  | { readonly kind: "unix"; readonly path: string }
  | { readonly kind: "tcp"; readonly host: string; readonly port: number; readonly tls: boolean };

/** TLS material for `tls:` node bridges (files in the sidecar's filesystem). */
export interface NodeBridgeTls {
  readonly caFile: string | undefined;
  readonly certFile: string | undefined;
  readonly keyFile: string | undefined;
  readonly serverName: string | undefined;
}

/** The validated options. */
export interface SidecarOptions {
  /** The hook-socket volume as this container sees it. */
  readonly hooksDir: string;
  /** The same volume as the compute container sees it (its parent of `hook-sidecar-<i>`). */
  readonly computeHooksDir: string;
  /** File name of the hook server socket in {@link hooksDir}. */
  readonly hookSocket: string;
  /** Directory under {@link hooksDir} for the KVMI socket and the cookie. */
  readonly socketSubdir: string;
  /** This container's name; when absent, derived from the VMI annotation at OnDefineDomain. */
  readonly containerName: string | undefined;
  /** Name announced in Info. */
  readonly hookName: string;
  /**
   * `plugin`: serve `DomainHookService.MutateDomain` for a KubeVirt Plugin named {@link pluginName}
   * on `<pluginDir>/<hookSocket>` (KubeVirt v1.9+); `hook-sidecar`: the legacy Info/Callbacks.
   */
  readonly api: "hook-sidecar" | "plugin";
  /** The Plugin object's name (plugin API only). */
  readonly pluginName: string | undefined;
  /** Node mode: forward QEMU's KVMI connection to this bridge instead of running one in the pod. */
  readonly nodeBridge: NodeBridgeAddress | undefined;
  readonly nodeBridgeTls: NodeBridgeTls;
  /** After the domain is defined, QEMU must connect within this many seconds or the VM is reported. */
  readonly connectDeadlineSeconds: number;
  /** Deprecation notes for the log (e.g. --hook-priority, which KubeVirt does not order sidecars by). */
  readonly warnings: readonly string[];
  /**
   * The KVMI dialect of the VM's QEMU and kernel: the id space of {@link commands} and
   * {@link events}, and (pod mode) the in-pod bridge's `--kvmi-dialect`.
   */
  readonly dialect: Dialect;
  /** Allowed KVMI command ids, in {@link dialect}'s numbering; undefined = all. */
  readonly commands: readonly number[] | undefined;
  /** Allowed KVMI event ids (always with UNHOOK); undefined = all. */
  readonly events: readonly number[] | undefined;
  readonly reconnectSeconds: number;
  readonly handshakeTimeoutSeconds: number;
  readonly unhookTimeoutSeconds: number;
  readonly asyncUnhook: boolean;
  /** Arguments after `--`, for the bridge (every `kvmi-bridge` flag; `KVMI_BRIDGE_*` works too). */
  readonly bridgeArgs: readonly string[];
}

/** Paths derived from the options. */
export interface SidecarPaths {
  readonly hookSocket: string;
  readonly kvmiDir: string;
  readonly kvmiSocket: string;
  readonly cookie: string;
}

/** Result of {@link parseSidecarArgs}. */
export type ParsedSidecarArgs =
  | { readonly action: "run"; readonly options: SidecarOptions }
  | { readonly action: "help"; readonly help: string }
  | { readonly action: "fail"; readonly errors: readonly string[] };

export const SIDECAR_HELP = `Usage: ${SIDECAR_BIN_NAME} [options] [-- kvmi-bridge options]

KubeVirt hook sidecar: serves KubeVirt's hook protocol (Info, v1alpha3 Callbacks) on a UNIX socket
in ${HOOKS_DIR}, adds the QEMU introspection arguments to the domain XML in OnDefineDomain, and
runs kvmi-bridge in the same container for the VM's KVMI connection. Everything after "--" goes
to kvmi-bridge (see kvmi-bridge --help; KVMI_BRIDGE_* variables work as well).

Options:
  --container-name NAME          this sidecar's container name, hook-sidecar-<i> (i = its index in the
                                 ${HOOK_SIDECARS_ANNOTATION} annotation); default: found in that
                                 annotation by the "${SIDECAR_BIN_NAME}" in its command or args
  --hooks-dir DIR                the hook-socket volume here (default ${HOOKS_DIR})
  --compute-hooks-dir DIR        the same volume in the compute container (default ${HOOKS_DIR})
  --hook-socket NAME             hook server socket file name (default kvmi-bridge.sock)
  --socket-subdir NAME           directory for the KVMI socket and cookie (default kvmi)
  --hook-name NAME               name announced to virt-launcher (default kvmi-bridge)
  --kvmi-dialect NAME            KVMI dialect of the VM's QEMU and kernel: ${KNOWN_DIALECT_NAMES.join(" | ")}
                                 (default: the --kvmi-dialect given to kvmi-bridge after "--", else v9);
                                 the allow lists are sent in its ids, and the in-pod bridge speaks it
  --allow-command LIST           KVMI commands QEMU allows (names or ids, repeatable; default all;
                                 any dialect's name for a command the VM's dialect has)
  --allow-event LIST             KVMI events QEMU allows (names or ids, repeatable; default all;
                                 the UNHOOK event is always added)
  --reconnect-seconds N          QEMU chardev reconnect=N (default 1)
  --handshake-timeout-seconds N  introspection handshake_timeout (default 10)
  --unhook-timeout-seconds N     introspection unhook_timeout (default 60)
  --async-unhook on|off          introspection async_unhook (default on)
  --plugin NAME                  serve KubeVirt's Plugin API (DomainHookService.MutateDomain, KubeVirt
                                 v1.9+) for the Plugin object NAME on ${PLUGIN_SOCKETS_DIR}/NAME/<hook-socket>
                                 instead of the legacy hook sidecar protocol
  --node-bridge ADDRESS          node mode: forward QEMU's KVMI connection to the node's bridge instead of
                                 running a bridge in the pod: unix:PATH (a socket the pod mounts),
                                 tls:HOST:PORT or tcp:HOST:PORT (plaintext: only node-local)
  --node-bridge-ca FILE          CA that signed the node bridge's certificate (tls:)
  --node-bridge-cert FILE        client certificate for the node bridge's mTLS (tls:)
  --node-bridge-key FILE         its key
  --node-bridge-server-name NAME name the bridge's certificate carries (default: HOST)
  --connect-deadline-seconds N   QEMU must connect within N s of the domain's definition, or the VM
                                 is listed as not connected with the reason (default 120)
  -h, --help                     print this help

The container name (for QEMU's view of the paths) comes from --container-name, else from
${CONTAINER_NAME_ENV} (KubeVirt sets it), else from the VMI annotation. Hook socket file names include
it (kvmi-bridge-<container>.sock): virt-launcher tells hook sockets apart by file name only.
--hook-priority is accepted and ignored: KubeVirt orders hook points within one sidecar by it, never
sidecars against each other (deploy/README.md, "Ordering").
`;

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

/** Parses the sidecar's command line; every problem is reported at once. */
export function parseSidecarArgs(argv: readonly string[], env: NodeJS.ProcessEnv = {}): ParsedSidecarArgs {
  const split = argv.indexOf("--");
  const own = split < 0 ? [...argv] : argv.slice(0, split);
  const bridgeArgs = split < 0 ? [] : argv.slice(split + 1);
  let values;
  try {
    values = parseArgs({
      args: own,
      strict: true,
      allowPositionals: false,
      options: {
        "container-name": { type: "string" },
        "hooks-dir": { type: "string" },
        "compute-hooks-dir": { type: "string" },
        "hook-socket": { type: "string" },
        "socket-subdir": { type: "string" },
        "hook-name": { type: "string" },
        "hook-priority": { type: "string" },
        "kvmi-dialect": { type: "string" },
        "allow-command": { type: "string", multiple: true },
        "allow-event": { type: "string", multiple: true },
        "reconnect-seconds": { type: "string" },
        "handshake-timeout-seconds": { type: "string" },
        "unhook-timeout-seconds": { type: "string" },
        "async-unhook": { type: "string" },
        plugin: { type: "string" },
        "plugin-dir": { type: "string" },
        "node-bridge": { type: "string" },
        "node-bridge-ca": { type: "string" },
        "node-bridge-cert": { type: "string" },
        "node-bridge-key": { type: "string" },
        "node-bridge-server-name": { type: "string" },
        "connect-deadline-seconds": { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    }).values;
  } catch (error) {
    return { action: "fail", errors: [`${(error as Error).message} (arguments for kvmi-bridge go after "--")`] };
  }
  if (values.help) return { action: "help", help: SIDECAR_HELP };

  const errors: string[] = [];
  const name = (flag: string, value: string | undefined, fallback: string): string => {
    if (value === undefined) return fallback;
    if (!NAME_RE.test(value)) errors.push(`--${flag} "${value}" must be a plain file name ([A-Za-z0-9._-])`);
    return value;
  };
  const dir = (flag: string, value: string | undefined): string => {
    if (value === undefined) return HOOKS_DIR;
    if (!posix.isAbsolute(value)) errors.push(`--${flag} "${value}" must be an absolute path`);
    return posix.normalize(value);
  };
  const int = (flag: string, value: string | undefined, fallback: number, min: number, max: number): number => {
    if (value === undefined) return fallback;
    const n = /^-?\d+$/.test(value.trim()) ? Number(value) : Number.NaN;
    if (!Number.isSafeInteger(n) || n < min || n > max) errors.push(`--${flag} must be a whole number in ${min}..${max}, got "${value}"`);
    return n;
  };
  const dialect = sidecarDialect(values["kvmi-dialect"], bridgeArgs, errors);
  const ids = (kind: "command" | "event", items: string[] | undefined): number[] | undefined => {
    if (items === undefined) return undefined;
    const resolved = resolveKvmiIds(kind, items.flatMap((item) => item.split(",")).filter((item) => item.trim() !== ""), dialect);
    if (!resolved.ok) errors.push(`--allow-${kind}: ${resolved.error}`);
    return resolved.ok ? resolved.ids : [];
  };
  let asyncUnhook = true;
  if (values["async-unhook"] !== undefined) {
    if (values["async-unhook"] === "on") asyncUnhook = true;
    else if (values["async-unhook"] === "off") asyncUnhook = false;
    else errors.push(`--async-unhook must be on or off, got "${values["async-unhook"]}"`);
  }
  const rfc1123 = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
  const envContainer = env[CONTAINER_NAME_ENV];
  const containerName = values["container-name"] ?? (envContainer !== undefined && envContainer !== "" ? envContainer : undefined);
  if (containerName !== undefined && !rfc1123.test(containerName)) {
    errors.push(`${values["container-name"] !== undefined ? "--container-name" : CONTAINER_NAME_ENV} "${containerName}" is not a Kubernetes container name (RFC 1123 label)`);
  }
  const warnings: string[] = [];
  if (values["hook-priority"] !== undefined) {
    warnings.push("--hook-priority is ignored: KubeVirt sorts hook points within one sidecar by priority, not sidecars against each other");
  }
  const pluginName = values.plugin;
  if (pluginName !== undefined && (!rfc1123.test(pluginName) || pluginName.length > 63)) errors.push(`--plugin "${pluginName}" is not a Kubernetes object name`);
  const api = pluginName === undefined ? "hook-sidecar" : "plugin";
  const nodeBridge = parseNodeBridge(values["node-bridge"], errors);
  const tlsFlags = ["node-bridge-ca", "node-bridge-cert", "node-bridge-key", "node-bridge-server-name"] as const;
  if ((nodeBridge === undefined || nodeBridge.kind !== "tcp" || !nodeBridge.tls) && tlsFlags.some((f) => values[f] !== undefined)) {
    errors.push("--node-bridge-ca/-cert/-key/-server-name need --node-bridge tls:HOST:PORT");
  }
  if ((values["node-bridge-cert"] === undefined) !== (values["node-bridge-key"] === undefined)) errors.push("--node-bridge-cert and --node-bridge-key go together");
  const defaultSocket = api === "plugin" || containerName === undefined ? "kvmi-bridge.sock" : `kvmi-bridge-${containerName}.sock`;
  const hookSocket = name("hook-socket", values["hook-socket"], defaultSocket);
  if (api === "plugin" && !hookSocket.endsWith(".sock")) errors.push(`--hook-socket "${hookSocket}" must end with .sock (KubeVirt's Plugin admission policy)`);
  const hooksDir = api === "plugin" ? dir("plugin-dir", values["plugin-dir"] ?? posix.join(PLUGIN_SOCKETS_DIR, pluginName!)) : dir("hooks-dir", values["hooks-dir"]);
  if (api === "plugin" && (values["hooks-dir"] !== undefined || values["compute-hooks-dir"] !== undefined)) {
    errors.push("--hooks-dir and --compute-hooks-dir belong to the hook sidecar API; with --plugin the socket directory is the same in every container");
  }
  const options: SidecarOptions = {
    hooksDir,
    computeHooksDir: api === "plugin" ? hooksDir : dir("compute-hooks-dir", values["compute-hooks-dir"]),
    hookSocket,
    socketSubdir: name("socket-subdir", values["socket-subdir"], "kvmi"),
    containerName,
    hookName: values["hook-name"] ?? "kvmi-bridge",
    api,
    pluginName,
    nodeBridge,
    nodeBridgeTls: {
      caFile: values["node-bridge-ca"],
      certFile: values["node-bridge-cert"],
      keyFile: values["node-bridge-key"],
      serverName: values["node-bridge-server-name"],
    },
    connectDeadlineSeconds: int("connect-deadline-seconds", values["connect-deadline-seconds"], 120, 1, 86_400),
    warnings,
    dialect,
    commands: ids("command", values["allow-command"]),
    events: ids("event", values["allow-event"]),
    reconnectSeconds: int("reconnect-seconds", values["reconnect-seconds"], 1, 1, 3600),
    handshakeTimeoutSeconds: int("handshake-timeout-seconds", values["handshake-timeout-seconds"], 10, 1, 3600),
    unhookTimeoutSeconds: int("unhook-timeout-seconds", values["unhook-timeout-seconds"], 60, 1, 86_400),
    asyncUnhook,
    bridgeArgs,
  };
  return errors.length > 0 ? { action: "fail", errors } : { action: "run", options };
}

/** The `--kvmi-dialect` value among kvmi-bridge's arguments (`--kvmi-dialect X` or `--kvmi-dialect=X`), if any. */
function bridgeDialectArg(bridgeArgs: readonly string[]): string | undefined {
  let found: string | undefined;
  bridgeArgs.forEach((arg, i) => {
    if (arg === "--kvmi-dialect") found = bridgeArgs[i + 1];
    else if (arg.startsWith("--kvmi-dialect=")) found = arg.slice("--kvmi-dialect=".length);
  });
  return found;
}

/**
 * The VM's dialect: the sidecar's `--kvmi-dialect`, else the bridge's, else v9. Both given and
 * different is an error: QEMU would get one dialect's ids while the bridge speaks another.
 */
function sidecarDialect(own: string | undefined, bridgeArgs: readonly string[], errors: string[]): Dialect {
  const bridge = bridgeDialectArg(bridgeArgs);
  if (own !== undefined && bridge !== undefined && own !== bridge) {
    errors.push(`--kvmi-dialect ${own} differs from kvmi-bridge's --kvmi-dialect ${bridge}; give it once`);
  }
  const name = own ?? bridge ?? "v9";
  try {
    return dialectByName(name, "--kvmi-dialect");
  } catch (err) {
    errors.push((err as Error).message);
    return dialectByName("v9");
  }
}

function parseNodeBridge(text: string | undefined, errors: string[]): NodeBridgeAddress | undefined {
  if (text === undefined) return undefined;
  if (text.startsWith("unix:")) {
    const path = text.slice("unix:".length);
    if (!posix.isAbsolute(path)) errors.push(`--node-bridge ${text}: the path must be absolute`);
    return { kind: "unix", path: posix.normalize(path) };
  }
  const match = /^(tcp|tls):(\[[^\]]+\]|[^:]+):(\d{1,5})$/.exec(text);
  const port = match ? Number(match[3]) : 0;
  if (!match || port < 1 || port > 65_535) {
    errors.push(`--node-bridge "${text}" must be unix:PATH, tls:HOST:PORT or tcp:HOST:PORT`);
    return undefined;
  }
  return { kind: "tcp", host: match[2]!.replace(/^\[|\]$/g, ""), port, tls: match[1] === "tls" };
}

/** The sidecar-side paths of the hook socket, the KVMI socket and the cookie. */
export function sidecarPaths(options: Pick<SidecarOptions, "hooksDir" | "hookSocket" | "socketSubdir">): SidecarPaths {
  const kvmiDir = join(options.hooksDir, options.socketSubdir);
  return {
    hookSocket: join(options.hooksDir, options.hookSocket),
    kvmiDir,
    kvmiSocket: join(kvmiDir, "kvmi.sock"),
    cookie: join(kvmiDir, "cookie"),
  };
}

/** The compute-side (QEMU's) paths of the KVMI socket and the cookie, for `containerName`. */
export function computePaths(
  options: Pick<SidecarOptions, "computeHooksDir" | "socketSubdir" | "api">,
  containerName: string | undefined,
): { readonly kvmiSocket: string; readonly cookie: string } {
  // The Plugin API's socket directory is mounted at the same path in the sidecar and the compute
  // container; the hook sidecar's appears in the compute container under the container's name.
  const dir = options.api === "plugin" ? posix.join(options.computeHooksDir, options.socketSubdir) : posix.join(options.computeHooksDir, containerName!, options.socketSubdir);
  return { kvmiSocket: posix.join(dir, "kvmi.sock"), cookie: posix.join(dir, "cookie") };
}

/**
 * This sidecar's container name from the VMI: KubeVirt names the container of the i-th entry of
 * the hook sidecar annotation `hook-sidecar-<i>`; ours is the one entry whose `command` or `args`
 * mention {@link SIDECAR_BIN_NAME}.
 *
 * @returns the name, or an error sentence saying what is missing or ambiguous.
 */
export function containerNameFromVmi(vmi: unknown): { readonly ok: true; readonly name: string } | { readonly ok: false; readonly error: string } {
  const annotations = (vmi as { metadata?: { annotations?: Record<string, unknown> } } | null)?.metadata?.annotations;
  const raw = annotations?.[HOOK_SIDECARS_ANNOTATION];
  if (typeof raw !== "string") return { ok: false, error: `the VMI has no ${HOOK_SIDECARS_ANNOTATION} annotation` };
  let list: unknown;
  try {
    list = JSON.parse(raw);
  } catch {
    return { ok: false, error: `the ${HOOK_SIDECARS_ANNOTATION} annotation is not JSON` };
  }
  if (!Array.isArray(list)) return { ok: false, error: `the ${HOOK_SIDECARS_ANNOTATION} annotation is not a JSON list` };
  const mentions = (value: unknown): boolean => Array.isArray(value) && value.some((v) => typeof v === "string" && v.includes(SIDECAR_BIN_NAME));
  const ours = list.flatMap((entry: { command?: unknown; args?: unknown } | null, index) =>
    entry !== null && typeof entry === "object" && (mentions(entry.command) || mentions(entry.args)) ? [index] : [],
  );
  if (ours.length !== 1) {
    return {
      ok: false,
      error: `${ours.length === 0 ? "no" : "more than one"} entry of ${HOOK_SIDECARS_ANNOTATION} names ${SIDECAR_BIN_NAME} in its command or args; pass --container-name hook-sidecar-<index>`,
    };
  }
  return { ok: true, name: `hook-sidecar-${ours[0]}` };
}
