// SPDX-License-Identifier: Apache-2.0
/**
 * Bridge process: `startBridge` exactly as the composition root runs it (gRPC on TCP loopback,
 * one KVMI UNIX socket), with the production logger writing to /dev/null so that its cost is
 * counted (or no logger with `--bridge-log off`). The emulated VMs live in this process with
 * `--emulator in-bridge` (the default, as in embedded mode) and in the emulator child otherwise.
 */
import { silentLogger } from "@kvmi/kvm-bridge";
import pino from "pino";
import { loadConfigOrThrow, startBridge } from "@kvmi/service";
import type { Bridge } from "@kvmi/service";
// The production root logger (pino with the bridge's formatters and redaction) is not part of the
// public entry point; the benchmark uses it so that logging costs what it costs in production.
// eslint-disable-next-line no-restricted-imports
import { createRootLogger } from "../../service/src/log/index.js";
import { emulatorHandlers, stopVms } from "./lib/emulator-host.js";
import { serve } from "./lib/ipc.js";

/** What the parent needs to reach the bridge. */
export interface BridgeStarted {
  readonly grpcTarget: string;
  readonly kvmiSocket: string;
  readonly metricsUrl: string | undefined;
}

let bridge: Bridge | undefined;

/**
 * Process warnings and unhandled rejections, counted instead of printed (the child runs with
 * `--no-warnings`) or fatal, so that the benchmark reports them as findings and keeps measuring.
 */
const problems = new Map<string, number>();
const note = (text: string): void => void problems.set(text, (problems.get(text) ?? 0) + 1);
process.on("warning", (w) => note(`warning ${w.name}: ${w.message}`));
process.on("unhandledRejection", (reason) => {
  const e = reason as { message?: string; code?: string; context?: unknown };
  note(`unhandled rejection ${e?.code ?? ""}: ${e?.message ?? String(reason)} ${JSON.stringify(e?.context ?? {})}`);
});

async function start(params: { kvmiSocket: string; logLevel: string; metrics: boolean }): Promise<BridgeStarted> {
  const off = params.logLevel === "off";
  const config = loadConfigOrThrow({
    argv: [
      "--grpc-listen", "127.0.0.1:0",
      "--kvmi-listen", `unix:${params.kvmiSocket}`,
      "--metrics-listen", params.metrics ? "127.0.0.1:0" : "off",
      "--log-level", off ? "info" : params.logLevel,
    ],
    env: {},
    cwd: process.cwd(),
  });
  const logger = off ? silentLogger : createRootLogger(config, { destination: pino.destination({ dest: "/dev/null", sync: true }) });
  bridge = await startBridge({ config, logger });
  return { grpcTarget: bridge.grpcTarget, kvmiSocket: params.kvmiSocket, metricsUrl: bridge.metricsUrl };
}

async function metrics(): Promise<string> {
  if (bridge?.metricsUrl === undefined) return "";
  return (await fetch(bridge.metricsUrl)).text();
}

async function exit(): Promise<void> {
  await stopVms();
  const b = bridge;
  bridge = undefined;
  if (b !== undefined) await Promise.race([b.stop().catch(() => undefined), new Promise((resolve) => setTimeout(resolve, 3000))]);
}

serve({
  // With `--emulator in-bridge` the VMs live in this process, as with `npm start` (embedded mode).
  ...emulatorHandlers,
  start,
  metrics,
  hooked: () => bridge?.hosts.all().length ?? 0,
  /** True once no VM has a hook-ledger entry left (the bridge finished undoing a controller's hooks). */
  settled: () => bridge?.hosts.all().every((h) => h.hookLedger.isEmpty) ?? true,
  problems: () => [...problems.entries()].map(([text, count]) => ({ text, count })),
  /** `process.memoryUsage()`, after a full GC when asked (the child then runs with --expose-gc). */
  memory: (params: { gc?: boolean }) => {
    if (params.gc === true) (globalThis as { gc?: () => void }).gc?.();
    return process.memoryUsage();
  },
  exit,
});
