// SPDX-License-Identifier: Apache-2.0
/**
 * The composition root of `kvmi-kubevirt-sidecar`: kvmi-bridge for one VM, plus the KubeVirt hook
 * server that points the VM's QEMU at it.
 *
 * 1. Creates `<hooks>/<subdir>/` and a random cookie there (a per-pod secret: QEMU checks it
 *    against the bridge's handshake answer, kvmi-abi.md §2.2). A restarted sidecar keeps the
 *    cookie it finds: QEMU read its secret object once, at start, and reconnects with it.
 * 2. Starts the bridge with the KVMI socket in that directory (the arguments after `--` and
 *    `KVMI_BRIDGE_*` configure the rest; the socket and cookie are the sidecar's to choose).
 * 3. Serves the hook protocol: OnDefineDomain adds `-chardev`, `-object secret` and
 *    `-object introspection` with the compute container's view of those paths.
 * 4. Stops on SIGTERM/SIGINT or when virt-launcher calls Shutdown: hook server, then the bridge
 *    (which releases the VM through the unhook flow).
 */
import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, statSync, writeFileSync } from "node:fs";
import { status } from "@grpc/grpc-js";
import { startBridge } from "../bridge.js";
import { applyConfigAction, loadConfig, readSecret } from "../config/index.js";
import { createRootLogger } from "../log/index.js";
import { injectQemuArgs } from "./domain-xml.js";
import { startHookServer, HookRequestError } from "./hook-server.js";
import type { DefineDomainCall } from "./hook-server.js";
import { INTROSPECTION_OWNED_ARGS, INTROSPECTION_QOM_TYPE, introspectionQemuArgs } from "./introspection-args.js";
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
  if (containerName === undefined) {
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

/** Runs the sidecar until a stop signal or Shutdown; resolves with the exit code. */
export async function main(argv: readonly string[], io: SidecarIo = processIo()): Promise<number> {
  const parsed = parseSidecarArgs(argv);
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
    ...options.bridgeArgs,
    "--secret-file",
    paths.cookie,
  ];
  const outcome = applyConfigAction(loadConfig({ argv: bridgeArgv, env: io.env, cwd: process.cwd(), pid: process.pid }), {
    stdout: io.stdout,
    stderr: io.stderr,
  });
  if ("exitCode" in outcome) return outcome.exitCode;
  const { config, warnings } = outcome;
  const logger = createRootLogger(config);
  for (const warning of warnings) logger.warn({}, warning);
  const log = logger.child({ component: "kubevirt-sidecar" });
  log.info(
    {
      hookSocket: paths.hookSocket,
      kvmiSocket: paths.kvmiSocket,
      cookie: cookieKept ? "kept from an earlier start" : "new",
      containerName: options.containerName ?? "(from the VMI annotation)",
      commands: options.commands ?? "all",
      events: options.events ?? "all",
    },
    "starting kvmi-bridge as a KubeVirt hook sidecar",
  );
  const secret = readSecret(config);
  const bridge = await startBridge({ config, logger, ...(secret && { secret: new Uint8Array(secret) }) });

  let stop: (reason: string) => void = () => undefined;
  const stopped = new Promise<string>((resolve) => (stop = resolve));
  let hooks;
  try {
    hooks = await startHookServer({
      socketPath: paths.hookSocket,
      name: options.hookName,
      priority: options.hookPriority,
      logger: log,
      onDefineDomain: (call) => defineDomain(options, call),
      onShutdown: () => stop("Shutdown hook"),
    });
  } catch (error) {
    log.error({ err: error, socket: paths.hookSocket }, "cannot serve the hook socket");
    await bridge.stop();
    return 1;
  }
  const removeSignals = io.onSignal((signal) => stop(signal));
  const reason = await stopped;
  removeSignals();
  log.info({ reason }, "shutting down: hook server, then the bridge releases the VM");
  await hooks.close();
  await bridge.stop();
  log.info({}, "stopped");
  return 0;
}
