// SPDX-License-Identifier: Apache-2.0
/**
 * The composition root of `kvmi-bridge` (conventions §2, §10): configuration, the root logger,
 * the bridge, the embedded emulator when asked, and graceful shutdown on SIGTERM/SIGINT.
 * `kvmi-bridge doctor` reports whether this host's kernel offers KVMI, and in which dialect; it exits
 * non-zero when it does not (`--report-only`: always 0). `kvmi-bridge audit verify FILE` checks an
 * audit trail's hash chain, `kvmi-bridge policy check FILE` a policy file. SIGHUP reloads the
 * authorization policy and the JWKS.
 */
import { readFileSync, rmdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname } from "node:path";
import { formatDoctorReport, runDoctor } from "@kvmi/kvm-bridge/ioctl";
import { runAuditCommand } from "./audit/audit-verify.js";
import { runPolicyCommand } from "./auth/policy.js";
import { startBridge } from "./bridge.js";
import { applyConfigAction, loadConfig, readSecret } from "./config/index.js";
import { startEmbeddedVms } from "./embedded.js";
import { createRootLogger, routeGrpcJsLogs } from "./log/index.js";

/** The bridge's version: the version of `@kvmi/service`. */
export const VERSION = (JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string }).version;

/** Runs the bridge until a signal; resolves with the exit code. */
export async function main(argv: readonly string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  if (argv.includes("--version") || argv.includes("-V")) {
    process.stdout.write(`kvmi-bridge ${VERSION}\n`);
    return 0;
  }
  if (argv[0] === "doctor") {
    const report = await runDoctor();
    process.stdout.write(`${formatDoctorReport(report)}\n`);
    // Non-zero when this host offers no usable KVMI (1) or an ambiguous dialect (2), so scripts can
    // branch on it; `--report-only` always exits 0 (the DaemonSet's init container only logs it).
    return argv.includes("--report-only") ? 0 : report.exitCode;
  }
  if (argv[0] === "audit") {
    return runAuditCommand(argv.slice(1), { stdout: (text) => process.stdout.write(text), stderr: (text) => process.stderr.write(text) });
  }
  if (argv[0] === "policy") {
    return runPolicyCommand(argv.slice(1), { stdout: (text) => process.stdout.write(text), stderr: (text) => process.stderr.write(text) }, (path) =>
      readFileSync(path, "utf8"),
    );
  }
  const outcome = applyConfigAction(loadConfig({ argv, env, cwd: process.cwd(), pid: process.pid }), {
    stdout: (text) => process.stdout.write(text),
    stderr: (text) => process.stderr.write(text),
  });
  if ("exitCode" in outcome) return outcome.exitCode;
  const { config, warnings } = outcome;
  const logger = createRootLogger(config);
  routeGrpcJsLogs(logger);
  for (const warning of warnings) logger.warn({}, warning);
  logger.info({ config: { ...config, secret: config.secret === undefined ? undefined : "[redacted]" } }, "starting kvmi-bridge");
  const secret = readSecret(config);
  let bridge;
  try {
    bridge = await startBridge({ config, logger, ...(secret && { secret: new Uint8Array(secret) }) });
  } catch (err) {
    // A port in use, a socket path not writable: one clear line, not a stack trace.
    logger.error({ err }, "kvmi-bridge could not start");
    process.stderr.write(`kvmi-bridge: cannot start: ${(err as Error).message}\n`);
    return 1;
  }
  const embedded = config.embedded
    ? startEmbeddedVms(config, bridge.kvmiEndpoints[0]!, logger.child({ component: "emulator" }), secret && new Uint8Array(secret))
    : undefined;

  const kvmiSocket = bridge.kvmiAddresses.join(", ");
  logger.info({ grpc: bridge.grpcTarget, kvmi: bridge.kvmiAddresses, metrics: bridge.metricsUrl }, "kvmi-bridge is serving");
  process.stderr.write(
    [
      "",
      `kvmi-bridge is serving${embedded ? ` ${config.embeddedVms} emulated VMs` : ""}`,
      `  gRPC endpoint : ${bridge.grpcTarget} (kvmi.v1.IntrospectionService, health, reflection)`,
      `  KVMI socket   : ${kvmiSocket} (point QEMU or \`npx kvmi-sim --connect ${bridge.kvmiAddresses[0]}\` here)`,
      `  metrics       : ${bridge.metricsUrl ?? "off"}`,
      `  authorization : ${config.authorization === "none" ? "none (every caller may do everything)" : (config.policyFile ?? "no policy: loopback callers may do everything")}`,
      `  try           : npx kvmictl --target ${bridge.grpcTarget} vms list`,
      "",
    ].join("\n") + "\n",
  );

  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = async (signal: string): Promise<void> => {
      if (stopping) return;
      stopping = true;
      process.off("SIGHUP", reload);
      logger.info({ signal }, "shutting down: releasing every VM");
      await bridge.stop();
      await embedded?.stop();
      if (embedded !== undefined) removeEmbeddedSocketDir(bridge.kvmiAddresses[0]!);
      logger.info({}, "stopped");
      resolve(0);
    };
    // Reload the policy and the JWKS without dropping sessions; a bad file keeps what was in force (logged).
    const reload = (): void => {
      bridge.reloadPolicy();
      bridge.reloadJwks();
    };
    process.on("SIGHUP", reload);
    process.once("SIGTERM", () => void stop("SIGTERM"));
    process.once("SIGINT", () => void stop("SIGINT"));
  });
}

/** Embedded mode listens in a private temporary directory; leave nothing behind in /tmp. */
function removeEmbeddedSocketDir(address: string): void {
  if (!address.startsWith("unix:")) return;
  const dir = dirname(address.slice("unix:".length));
  if (!dir.startsWith(tmpdir())) return;
  try {
    rmdirSync(dir);
  } catch {
    // Not empty or already gone: nothing of ours to clean.
  }
}
