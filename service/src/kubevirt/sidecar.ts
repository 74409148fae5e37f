// SPDX-License-Identifier: Apache-2.0
/**
 * The composition root of `kvmi-kubevirt-sidecar`: the KubeVirt hook server that points the VM's
 * QEMU at a KVMI socket in the pod, and behind that socket either a kvmi-bridge for this one VM
 * (pod mode) or a forwarder to the node's bridge (node mode, `--node-bridge`).
 *
 * 1. Creates `<hooks>/<subdir>/` and a random cookie there (a per-pod secret: QEMU checks it
 *    against the bridge's handshake answer, docs/kubevirt-forwarder.md). A restarted sidecar
 *    keeps the cookie it finds: QEMU read its secret object once, at start, and reconnects with it.
 * 2. Pod mode: starts the bridge with the KVMI socket in that directory (the arguments after `--`
 *    and `KVMI_BRIDGE_*` configure the rest). Node mode: starts the forwarder on that socket; the
 *    node bridge answers QEMU with this pod's cookie hash, which the forwarder's hello carries.
 * 3. Serves the hook protocol (legacy sidecar or Plugin API): the domain hook adds `-chardev`,
 *    `-object secret` and `-object introspection` with the compute container's view of those
 *    paths, and announces the VM (the domain's `<uuid>`, the VMI's namespace/name) so that a QEMU
 *    that never connects is listed as not connected, with the reason, instead of not at all.
 * 4. Stops on SIGTERM/SIGINT or when virt-launcher calls Shutdown: hook server, then the bridge
 *    (which releases the VM through the unhook flow) or the forwarder.
 */
import { createHash, randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { status } from "@grpc/grpc-js";
import { startBridge } from "../bridge.js";
import { applyConfigAction, loadConfig, readSecret } from "../config/index.js";
import { createRootLogger } from "../log/index.js";
import { injectQemuArgs } from "./domain-xml.js";
import { NEVER_CONNECTED_PROBLEM } from "../forward/forward-listener.js";
import { startHookServer, HookRequestError } from "./hook-server.js";
import type { DefineDomainCall } from "./hook-server.js";
import { INTROSPECTION_OWNED_ARGS, INTROSPECTION_QOM_TYPE, introspectionQemuArgs } from "./introspection-args.js";
import { startForwarder } from "../forward/forwarder.js";
import type { Upstream } from "../forward/forwarder.js";
import type { HelloOrigin } from "../forward/hello.js";
import { computePaths, containerNameFromVmi, parseSidecarArgs, sidecarPaths } from "./sidecar-options.js";
import type { SidecarOptions } from "./sidecar-options.js";

/** Where the sidecar writes text and reads its environment; `process` in production. */
export interface SidecarIo {
  readonly env: NodeJS.ProcessEnv;
  readonly stdout: (text: string) => void;
  readonly stderr: (text: string) => void;
  /** Registers the stop signals; returns a function that removes them. */
  readonly onSignal: (handler: (signal: string) => void) => () => void;
}

/** The default {@link SidecarIo}: the real process. */
export function processIo(): SidecarIo {
  return {
    env: process.env,
    stdout: (text) => void process.stdout.write(text),
    stderr: (text) => void process.stderr.write(text),
    onSignal: (handler) => {
      const onTerm = (): void => handler("SIGTERM");
      const onInt = (): void => handler("SIGINT");
      process.once("SIGTERM", onTerm);
      process.once("SIGINT", onInt);
      return () => {
        process.off("SIGTERM", onTerm);
        process.off("SIGINT", onInt);
      };
    },
  };
}

/**
 * Rewrites one domain XML for this sidecar: the introspection arguments with QEMU's view of the
 * socket and cookie paths.
 *
 * @throws HookRequestError FAILED_PRECONDITION when the container name is neither configured nor
 *   derivable from the VMI; `DomainXmlError` from {@link injectQemuArgs}.
 */
export function defineDomain(options: SidecarOptions, call: DefineDomainCall): string {
  let containerName = options.containerName;
  if (containerName === undefined && options.api === "hook-sidecar") {
    const derived = containerNameFromVmi(call.vmi);
    if (!derived.ok) throw new HookRequestError(status.FAILED_PRECONDITION, `cannot tell this sidecar's container name: ${derived.error}`);
    containerName = derived.name;
  }
  const paths = computePaths(options, containerName);
  const args = introspectionQemuArgs({
    socketPath: paths.kvmiSocket,
    secretFile: paths.cookie,
    reconnectSeconds: options.reconnectSeconds,
    handshakeTimeoutSeconds: options.handshakeTimeoutSeconds,
    unhookTimeoutSeconds: options.unhookTimeoutSeconds,
    asyncUnhook: options.asyncUnhook,
    ...(options.commands && { commands: options.commands }),
    ...(options.events && { events: options.events }),
  });
  return injectQemuArgs(call.domainXml, args, { singletonObjectTypes: [INTROSPECTION_QOM_TYPE], owned: INTROSPECTION_OWNED_ARGS });
}

const UUID_TEXT = "([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})";
const DOMAIN_UUID = new RegExp(`<uuid>\\s*${UUID_TEXT}\\s*</uuid>`);
const SYSINFO_UUID = new RegExp(`<entry\\s+name=["']uuid["']\\s*>\\s*${UUID_TEXT}\\s*</entry>`);

/**
 * The VM a domain hook call describes: the UUID QEMU will send in its handshake, the domain name,
 * the VMI's namespace/name. KubeVirt writes no `<uuid>` into the domain but the firmware UUID into
 * `<sysinfo><system><entry name="uuid">`, and libvirt then takes that as the domain's (and QEMU's
 * `-uuid`); a `<uuid>` another hook set wins, as it does in libvirt.
 */
export function vmOfCall(call: DefineDomainCall, podName: string): { uuid: string; name: string; origin?: HelloOrigin } | undefined {
  const vmi = call.vmi as { metadata?: { namespace?: unknown; name?: unknown }; spec?: { domain?: { firmware?: { uuid?: unknown } } } } | undefined;
  const firmware = vmi?.spec?.domain?.firmware?.uuid;
  const uuid = (
    DOMAIN_UUID.exec(call.domainXml)?.[1] ??
    SYSINFO_UUID.exec(call.domainXml)?.[1] ??
    (typeof firmware === "string" && new RegExp(`^${UUID_TEXT}$`).test(firmware) ? firmware : undefined)
  )?.toLowerCase();
  if (uuid === undefined) return undefined;
  const name = /<name>([^<]{1,253})<\/name>/.exec(call.domainXml)?.[1] ?? "";
  const metadata = vmi?.metadata;
  const origin =
    typeof metadata?.namespace === "string" && typeof metadata.name === "string" ? { namespace: metadata.namespace, name: metadata.name, pod: podName } : undefined;
  return { uuid, name, ...(origin && { origin }) };
}

function upstreamOf(options: SidecarOptions): Upstream {
  const address = options.nodeBridge!;
  if (address.kind === "unix") return address;
  const tls = options.nodeBridgeTls;
  return {
    kind: "tcp",
    host: address.host,
    port: address.port,
    ...(address.tls && {
      tls: {
        ...(tls.caFile !== undefined && { ca: readFileSync(tls.caFile) }),
        ...(tls.certFile !== undefined && { cert: readFileSync(tls.certFile) }),
        ...(tls.keyFile !== undefined && { key: readFileSync(tls.keyFile) }),
        ...(tls.serverName !== undefined && { serverName: tls.serverName }),
      },
    }),
  };
}

/** Runs the sidecar until a stop signal or Shutdown; resolves with the exit code. */
export async function main(argv: readonly string[], io: SidecarIo = processIo()): Promise<number> {
  const parsed = parseSidecarArgs(argv, io.env);
  if (parsed.action === "help") {
    io.stdout(parsed.help);
    return 0;
  }
  if (parsed.action === "fail") {
    io.stderr(`kvmi-kubevirt-sidecar: invalid arguments:\n${parsed.errors.map((e) => `  - ${e}`).join("\n")}\n`);
    return 2;
  }
  const options = parsed.options;
  const paths = sidecarPaths(options);

  // The cookie and the KVMI socket must be usable by QEMU, which may run under another uid than
  // this container: the directory belongs to this pod's hook volume, which only its containers see.
  mkdirSync(paths.kvmiDir, { recursive: true, mode: 0o755 });
  chmodSync(paths.kvmiDir, 0o755);
  const cookieKept = existsSync(paths.cookie) && statSync(paths.cookie).size > 0;
  if (!cookieKept) writeFileSync(paths.cookie, randomBytes(32).toString("hex"), { mode: 0o644 });
  chmodSync(paths.cookie, 0o644);

  const bridgeArgv = [
    "--kvmi-listen",
    `unix:${paths.kvmiSocket}`,
    "--kvmi-socket-mode",
    "0666",
    // The bridge speaks the VM's dialect (the sidecar's --kvmi-dialect, or the bridge's own).
    ...(options.bridgeArgs.some((arg) => arg === "--kvmi-dialect" || arg.startsWith("--kvmi-dialect=")) ? [] : ["--kvmi-dialect", options.dialect.name]),
    ...options.bridgeArgs,
    "--secret-file",
    paths.cookie,
  ];
  const mode = options.nodeBridge === undefined ? "pod" : "node";
  // Node mode runs no bridge: only its logging settings apply (the image's KVMI_BRIDGE_GRPC_LISTEN
  // and the like must not make the forwarder refuse to start).
  const configEnv = mode === "pod" ? io.env : Object.fromEntries(Object.entries(io.env).filter(([name]) => name === "KVMI_BRIDGE_LOG_LEVEL"));
  const outcome = applyConfigAction(loadConfig({ argv: mode === "pod" ? bridgeArgv : options.bridgeArgs, env: configEnv, cwd: process.cwd(), pid: process.pid }), {
    stdout: io.stdout,
    stderr: io.stderr,
  });
  if ("exitCode" in outcome) return outcome.exitCode;
  const { config, warnings } = outcome;
  const logger = createRootLogger(config);
  for (const warning of warnings) logger.warn({}, warning);
  const log = logger.child({ component: "kubevirt-sidecar" });
  for (const warning of options.warnings) log.warn({}, warning);
  log.info(
    {
      api: options.api,
      mode,
      hookSocket: paths.hookSocket,
      kvmiSocket: paths.kvmiSocket,
      cookie: cookieKept ? "kept from an earlier start" : "new",
      containerName: options.containerName ?? (options.api === "plugin" ? "(not needed)" : "(from the VMI annotation)"),
      dialect: options.dialect.name,
      commands: options.commands ?? "all",
      events: options.events ?? "all",
    },
    mode === "pod" ? "starting kvmi-bridge as a KubeVirt hook sidecar" : "starting the KVMI forwarder to the node's bridge as a KubeVirt hook sidecar",
  );

  // The VMI, once a domain hook told it: the forwarder's hello and the announcement carry it.
  let origin: HelloOrigin | undefined;
  let announce: (vm: { uuid: string; name: string; origin?: HelloOrigin }) => void;
  let stopBehind: () => Promise<void>;
  if (mode === "pod") {
    const secret = readSecret(config);
    const bridge = await startBridge({ config, logger, ...(secret && { secret: new Uint8Array(secret) }) });
    announce = (vm) =>
      void bridge.registry.expect({
        uuid: vm.uuid,
        name: vm.name,
        ...(vm.origin && { origin: vm.origin }),
        deadlineMs: options.connectDeadlineSeconds * 1000,
        problem: NEVER_CONNECTED_PROBLEM,
        peer: "kubevirt-sidecar",
      });
    stopBehind = () => bridge.stop();
  } else {
    let forwarder;
    try {
      forwarder = await startForwarder({
        listenPath: paths.kvmiSocket,
        socketMode: 0o666,
        upstream: upstreamOf(options),
        cookieHash: createHash("sha1").update(readFileSync(paths.cookie)).digest("hex"),
        origin: () => origin,
        logger: logger.child({ component: "forwarder" }),
      });
    } catch (error) {
      log.error({ err: error }, "cannot start the KVMI forwarder");
      return 1;
    }
    const started = forwarder;
    announce = (vm) => void started.announce({ ...vm, deadlineSeconds: options.connectDeadlineSeconds });
    stopBehind = () => started.close();
  }

  const announced = new Set<string>();
  const podName = io.env.POD_NAME ?? "";
  let stop: (reason: string) => void = () => undefined;
  const stopped = new Promise<string>((resolve) => (stop = resolve));
  let hooks;
  try {
    hooks = await startHookServer({
      socketPath: paths.hookSocket,
      name: options.hookName,
      api: options.api,
      logger: log,
      onDefineDomain: (call) => {
        const xml = defineDomain(options, call);
        const vm = vmOfCall(call, podName);
        if (vm?.origin) origin = vm.origin;
        // Several calls per start (each definition, the migration target): announce a VM once.
        if (vm !== undefined && call.invocation !== "MigrationSource" && !announced.has(vm.uuid)) {
          announced.add(vm.uuid);
          announce(vm);
        }
        return xml;
      },
      onShutdown: () => stop("Shutdown hook"),
    });
  } catch (error) {
    log.error({ err: error, socket: paths.hookSocket }, "cannot serve the hook socket");
    await stopBehind();
    return 1;
  }
  const removeSignals = io.onSignal((signal) => stop(signal));
  const reason = await stopped;
  removeSignals();
  log.info({ reason }, mode === "pod" ? "shutting down: hook server, then the bridge releases the VM" : "shutting down: hook server, then the forwarder");
  await hooks.close();
  await stopBehind();
  log.info({}, "stopped");
  return 0;
}
