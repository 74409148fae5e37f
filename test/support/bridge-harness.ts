// SPDX-License-Identifier: Apache-2.0
/**
 * End-to-end harness: a real bridge (`startBridge`) listening on a KVMI UNIX socket in a fresh
 * temporary directory and on gRPC 127.0.0.1:0, emulated VMs (`@kvmi/kvm-bridge/emulator`) that
 * connect to it exactly as QEMU would, and grpc-js clients built from the protobuf-es service
 * descriptor. Nothing is mocked: every call crosses the gRPC socket and the KVMI socket.
 *
 * Everything waits with a deadline (waiting.ts); nothing sleeps unbounded. {@link Harness.stop} ends
 * sessions and streams, closes clients, stops the VMs and the bridge and removes the socket
 * directory, so a test file leaves no timer or socket. The waits, the gRPC failure helpers and the
 * clients live in their own modules and are re-exported here, so a test imports one module.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { status as GrpcStatus } from "@grpc/grpc-js";
import type { ChannelCredentials, ChannelOptions } from "@grpc/grpc-js";
import { silentLogger } from "@kvmi/kvm-bridge";
import type { Logger } from "@kvmi/kvm-bridge";
import { createEmulatedVm } from "@kvmi/kvm-bridge/emulator";
import { commandByOp, dialectByName, eventByKind } from "@kvmi/kvm-bridge/wire";
import type { CommandOp, Dialect, EventKind } from "@kvmi/kvm-bridge/wire";
import type { EmulatedVm, EmulatedVmOptions } from "@kvmi/kvm-bridge/emulator";
import { EventAction, Role, State } from "@kvmi/proto";
import type { Vm } from "@kvmi/proto";
import { loadConfigOrThrow, startBridge } from "@kvmi/service";
import type { Bridge } from "@kvmi/service";
import { IntrospectionClient, MetricsScrape, scrapeMetrics, SessionClient } from "./bridge-clients.js";
import type { AttachOptions } from "./bridge-clients.js";
import { WAIT_MS, waitUntil, withTimeout } from "./waiting.js";

export { GrpcStatus };
export * from "./waiting.js";
export * from "./grpc-failures.js";
export * from "./bridge-clients.js";

// -------------------------------------------------------------------------------------------------
// The harness

/** Options of one emulated VM (the harness supplies the endpoint and logger). */
export type VmSpec = Omit<EmulatedVmOptions, "logger">;

/** Options of {@link startHarness}. */
export interface HarnessOptions {
  /** The VMs: a count of default VMs, or one spec per VM. Default 1. */
  readonly vms?: number | readonly VmSpec[];
  /** Overrides of the per-VM defaults (2 vCPUs, 8 MiB, no workload, reconnect 50 ms). */
  readonly vmDefaults?: VmSpec;
  /** Extra bridge flags; each replaces the harness's default for the same flag. */
  readonly bridgeArgs?: readonly string[];
  /** Credentials of the default client (plaintext by default). */
  readonly clientCredentials?: ChannelCredentials;
  /** Channel options of the default client, e.g. the TLS target name override. */
  readonly clientOptions?: ChannelOptions;
  /** The cookie secret shared by bridge and VMs. */
  readonly secret?: Uint8Array;
  /** Wait until every VM is hooked (default true). */
  readonly waitForHook?: boolean;
  /** The bridge's logger (default: silent, or stderr with KVMI_E2E_LOG=1), e.g. to read its access lines. */
  readonly bridgeLogger?: Logger;
}

/** A running bridge with its VMs and a client. */
export interface Harness {
  readonly bridge: Bridge;
  readonly dir: string;
  readonly kvmiPath: string;
  readonly vms: readonly EmulatedVm[];
  /** The default client. */
  readonly client: IntrospectionClient;
  /** `vms/{uuid}` of VM `i`. */
  vmName(i: number): string;
  /** `vms/{uuid}/vcpus/{vcpu}` of VM `i`. */
  vcpuName(i: number, vcpu: number): string;
  /** A further client (closed by stop()). */
  connect(creds?: ChannelCredentials, options?: ChannelOptions): IntrospectionClient;
  /** Attaches a session with the default client (cancelled by closeSessions()/stop()). */
  attach(i: number, role: Role, options?: AttachOptions): Promise<SessionClient>;
  /** Cancels every session opened through {@link attach} and waits for the bridge to detach them. */
  closeSessions(): Promise<void>;
  /** Polls GetVm until VM `i` is hooked and serving, with at least `generation`. */
  waitHooked(i: number, generation?: number): Promise<Vm>;
  /** Scrapes the metrics endpoint. */
  metrics(): Promise<MetricsScrape>;
  /** Stops the bridge (idempotent; stop() calls it too). */
  stopBridge(): Promise<void>;
  /** Tears everything down; idempotent. */
  stop(): Promise<void>;
}

/**
 * The KVMI dialect of the harness's bridge listener and emulated VMs. The e2e suites run once per
 * dialect (vitest projects e2e, e2e-v12, e2e-kvmi-v7 set it; vitest.config.ts): a matrix, not copies.
 */
export const E2E_DIALECT: Dialect = dialectByName(process.env["KVMI_E2E_DIALECT"] ?? "v9", "KVMI_E2E_DIALECT");

/** The wire id of an event kind in {@link E2E_DIALECT} (the emulator's state holds wire ids). */
export function e2eEventId(kind: EventKind): number {
  const spec = eventByKind(E2E_DIALECT, kind);
  if (spec === undefined) throw new Error(`event ${kind} is not in ${E2E_DIALECT.name}`);
  return spec.id;
}

/** The wire id of a command op in {@link E2E_DIALECT} (the device manager's allow lists take wire ids). */
export function e2eCommandId(op: CommandOp): number {
  const spec = commandByOp(E2E_DIALECT, op);
  if (spec === undefined) throw new Error(`command ${op} is not in ${E2E_DIALECT.name}`);
  return spec.id;
}

const VM_DEFAULTS: VmSpec = { vcpus: 2, memoryMiB: 8, workload: false, reconnectMs: 50, unhookTimeoutMs: 10_000 };

/** The harness's bridge flags; a flag in HarnessOptions.bridgeArgs replaces its default. */
const BRIDGE_DEFAULTS: Readonly<Record<string, string>> = {
  "--grpc-listen": "127.0.0.1:0",
  "--metrics-listen": "127.0.0.1:0",
  "--request-timeout-ms": "5000",
  "--event-timeout-ms": "5000",
  "--unhook-deadline-ms": "2000",
  "--shutdown-grace-ms": "500",
};

function bridgeArgv(kvmiPath: string, extra: readonly string[]): string[] {
  const defaults = Object.entries(BRIDGE_DEFAULTS).filter(([flag]) => !extra.includes(flag));
  const dialect = extra.includes("--kvmi-dialect") ? [] : ["--kvmi-dialect", E2E_DIALECT.name];
  return [...defaults.flat(), ...dialect, "--kvmi-listen", `unix:${kvmiPath}`, ...extra];
}

/**
 * The logger of the bridge and the emulated VMs: silent, or info, warnings and errors on stderr when `KVMI_E2E_LOG=1` (to see
 * why a kernel side closed a tool's socket while debugging a failing e2e test).
 */
const E2E_LOGGER: Logger = process.env["KVMI_E2E_LOG"] ? stderrLogger({}) : silentLogger;

function stderrLogger(bindings: Record<string, unknown>): Logger {
  const write = (level: string) => (fields: Record<string, unknown>, message?: string) => {
    const line = { level, ...bindings, ...fields, ...(message !== undefined && { msg: message }) };
    process.stderr.write(`${JSON.stringify(line, (_k, v: unknown) => (typeof v === "bigint" ? v.toString() : v instanceof Error ? v.message : v))}\n`);
  };
  const noop = (): void => undefined;
  return { trace: noop, debug: noop, info: write("info"), warn: write("warn"), error: write("error"), child: (more) => stderrLogger({ ...bindings, ...more }) };
}

/** Starts a bridge with emulated VMs; by default waits until every VM is hooked. */
export async function startHarness(options: HarnessOptions = {}): Promise<Harness> {
  const dir = mkdtempSync(join(tmpdir(), "kvmi-e2e-"));
  const kvmiPath = join(dir, "kvmi.sock");
  const config = loadConfigOrThrow({
    argv: bridgeArgv(kvmiPath, options.bridgeArgs ?? []),
    env: {},
    cwd: dir,
  });
  let bridge: Bridge;
  try {
    bridge = await startBridge({ config, logger: options.bridgeLogger ?? E2E_LOGGER, ...(options.secret && { secret: options.secret }) });
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  const specs = typeof options.vms === "object" ? options.vms : Array.from({ length: options.vms ?? 1 }, () => ({}));
  const vms = specs.map((spec, i) =>
    createEmulatedVm(
      { kind: "unix", path: kvmiPath },
      { name: `e2e-${i}`, dialect: E2E_DIALECT, logger: E2E_LOGGER, ...VM_DEFAULTS, ...options.vmDefaults, ...(options.secret && { secret: options.secret }), ...spec },
    ),
  );
  const clients: IntrospectionClient[] = [];
  const sessions: SessionClient[] = [];
  const connect = (creds?: ChannelCredentials, channelOptions?: ChannelOptions): IntrospectionClient => {
    const client = new IntrospectionClient(bridge.grpcTarget, creds ?? options.clientCredentials, channelOptions ?? options.clientOptions);
    clients.push(client);
    return client;
  };
  const client = connect();
  let bridgeStopped: Promise<void> | undefined;
  let stopped: Promise<void> | undefined;
  const vmName = (i: number): string => `vms/${vms[i]!.uuid}`;

  const harness: Harness = {
    bridge,
    dir,
    kvmiPath,
    vms,
    client,
    vmName,
    vcpuName: (i, vcpu) => `${vmName(i)}/vcpus/${vcpu}`,
    connect,
    async attach(i, role, attachOptions) {
      const session = client.openSession();
      sessions.push(session);
      await session.attach(vmName(i), role, attachOptions);
      return session;
    },
    async closeSessions() {
      const open = sessions.splice(0);
      for (const session of open) session.cancel();
      await Promise.all(open.map((s) => s.closed().catch(() => undefined)));
      // The bridge detaches asynchronously (and undoes the controller's ledger): wait for it.
      await waitUntil(
        () => bridge.hosts.all().every((host) => host.sessions.length === 0 && host.hookLedger.isEmpty),
        "every session detached and every ledger undone",
      );
    },
    waitHooked(i, generation = 1) {
      const uuid = vms[i]!.uuid;
      return waitUntil(
        async () => {
          const { vm } = await client.unary("getVm", { name: vmName(i) }, { deadlineMs: 1000 });
          const host = bridge.hosts.get(uuid);
          return vm !== undefined && vm.state === State.HOOKED && vm.generation >= generation && host?.isServing === true ? vm : undefined;
        },
        `VM ${i} hooked (generation >= ${generation})`,
      );
    },
    metrics: () => scrapeMetrics(bridge.metricsUrl!),
    stopBridge() {
      bridgeStopped ??= bridge.stop();
      return bridgeStopped;
    },
    stop() {
      stopped ??= (async () => {
        for (const session of sessions.splice(0)) session.cancel();
        for (const c of clients.splice(0)) c.close();
        await Promise.all(vms.map((vm) => vm.stop()));
        await harness.stopBridge();
        rmSync(dir, { recursive: true, force: true });
      })();
      return stopped;
    },
  };
  try {
    for (const vm of vms) vm.start();
    if (options.waitForHook !== false) for (let i = 0; i < vms.length; i++) await harness.waitHooked(i);
  } catch (err) {
    await harness.stop();
    throw err;
  }
  return harness;
}

/** The event actions, shorter. */
export const CONTINUE = EventAction.CONTINUE;
export const RETRY = EventAction.RETRY;
export const CRASH = EventAction.CRASH;

/** Runs a guest operation and waits (bounded) for it to settle. */
export function settle<T>(operation: Promise<T>, what: string, timeoutMs = WAIT_MS): Promise<T> {
  return withTimeout(operation, timeoutMs, what);
}

export { Role };
