// SPDX-License-Identifier: Apache-2.0
/**
 * The bridge, composed: KVMI listener → VM registry and hosts → gRPC service (with health and
 * reflection) → metrics endpoint. `main.ts` adds configuration, signals and the embedded
 * emulator; tests start this directly.
 */
import { createKvmiListener, createVmRegistry } from "@kvmi/kvm-bridge";
import { dialectByName } from "@kvmi/kvm-bridge/wire";
import type { Dialect } from "@kvmi/kvm-bridge/wire";
import type { AcceptedVm, KvmiListener, ListenEndpoint, Logger, VmRegistry } from "@kvmi/kvm-bridge";
import {
  file_kvmi_v1_command,
  file_kvmi_v1_event,
  file_kvmi_v1_introspection_service,
  file_kvmi_v1_memory,
  file_kvmi_v1_registers,
  file_kvmi_v1_session,
  file_kvmi_v1_vm,
} from "@kvmi/proto";
import { parseKvmiListen, splitListenDialect } from "./config/index.js";
import type { BridgeConfig } from "./config/index.js";
import { createRateLimitedLogger } from "./log/index.js";
import { commandStatusOf, createBridgeMetrics, startMetricsServer } from "./metrics/index.js";
import type { AutoReplyReason, BridgeMetrics, MetricsServer } from "./metrics/index.js";
import { createIntrospectionService } from "./rpc/introspection-service.js";
import { createGrpcServer } from "./server/index.js";
import type { BridgeGrpcServer } from "./server/index.js";
import type { VmHostMetrics } from "./vm/vm-host.js";
import { VmHosts } from "./vm/vm-hosts.js";

/** A running bridge. */
export interface Bridge {
  /** Where gRPC listens (`127.0.0.1:50051`, `unix:/…`). */
  readonly grpcTarget: string;
  /** Where device managers connect (`unix:/…`, `tcp:…`). */
  readonly kvmiAddresses: readonly string[];
  /** The same addresses with the dialect each listener speaks. */
  readonly kvmiEndpoints: ReadonlyArray<{ readonly address: string; readonly dialect: string }>;
  /** The metrics URL, unless metrics are off. */
  readonly metricsUrl: string | undefined;
  readonly registry: VmRegistry;
  readonly hosts: VmHosts;
  readonly metrics: BridgeMetrics;
  readonly grpc: BridgeGrpcServer;
  /**
   * Graceful stop: health goes NOT_SERVING, every VM is released (controllers get the unhook
   * deadline, the ledger is undone, pending events are answered), then the servers close.
   */
  stop(): Promise<void>;
}

/** Options of {@link startBridge}. */
export interface StartBridgeOptions {
  readonly config: BridgeConfig;
  readonly logger: Logger;
  /** Directory relative KVMI socket paths resolve against. */
  readonly cwd?: string;
  /** The cookie secret (already read from `secretFile`). */
  readonly secret?: Uint8Array;
}

/** `KVMI_EVENT_CR` → `cr`, computed once per event name (this runs twice per event). */
const EVENT_LABELS = new Map<string, string>();
function eventLabel(kernelName: string): string {
  let label = EVENT_LABELS.get(kernelName);
  if (label === undefined) EVENT_LABELS.set(kernelName, (label = kernelName.replace(/^KVMI_EVENT_/, "").toLowerCase()));
  return label;
}

function hostMetrics(metrics: BridgeMetrics): VmHostMetrics {
  return {
    // The status label vocabulary of the metrics module (ok, remote_error, timeout, session_lost, …).
    command: (name, error, seconds) => metrics.observeCommand(name, commandStatusOf(error), seconds),
    event: (name) => metrics.eventsTotal.inc({ event: eventLabel(name) }),
    eventRoundTrip: (name, seconds) => metrics.eventRoundTripSeconds.observe({ event: eventLabel(name) }, seconds),
    autoReply: (name, reason) => metrics.eventAutoRepliesTotal.inc({ event: eventLabel(name), reason: reason as AutoReplyReason }),
    unhookToClose: (seconds) => metrics.unhookToCloseSeconds.observe(seconds),
    bytesRead: (bytes) => metrics.bytesReadTotal.inc(bytes),
  };
}

/** The KVMI endpoints grouped by dialect: one listener per dialect (`DIALECT@ADDRESS` entries). */
function endpointsByDialect(config: BridgeConfig, cwd: string): Map<Dialect, ListenEndpoint[]> {
  const groups = new Map<Dialect, ListenEndpoint[]>();
  for (const text of config.kvmiListen) {
    const { dialect: name, address } = splitListenDialect(text);
    const dialect = dialectByName(name ?? config.kvmiDialect, "kvmiDialect");
    const parsed = parseKvmiListen(address, cwd);
    if (!parsed.ok) throw new Error(`kvmiListen ${text}: ${parsed.error}`);
    const a = parsed.value;
    const endpoint: ListenEndpoint =
      a.kind === "unix" ? { kind: "unix", path: a.path, mode: config.kvmiSocketMode } : { kind: "tcp", host: a.host, port: a.port };
    groups.set(dialect, [...(groups.get(dialect) ?? []), endpoint]);
  }
  return groups;
}

/** Starts every part of the bridge; rejects (after cleaning up) if one cannot start. */
export async function startBridge(options: StartBridgeOptions): Promise<Bridge> {
  const { config, logger } = options;
  // Events, faults and malformed input are guest- or peer-triggered: their log lines are
  // rate-limited, with a summary of what was dropped (conventions §9).
  const guestPathLogger = createRateLimitedLogger(logger, { keyFields: ["vm"] });
  const metrics = createBridgeMetrics();
  const registry = createVmRegistry({ logger: logger.child({ component: "registry" }) });
  const hosts = new VmHosts(
    registry,
    {
      eventDeadlineMs: config.eventTimeoutMs,
      eventDeadlines: Object.fromEntries(
        Object.entries(config.eventTimeouts).map(([name, ms]) => [`KVMI_EVENT_${name.toUpperCase()}`, ms as number]),
      ),
      unhookDeadlineMs: config.unhookDeadlineMs,
      controllerGonePolicy: config.controllerGonePolicy,
      logger: guestPathLogger.child({ component: "vm" }),
      metrics: hostMetrics(metrics),
    },
    guestPathLogger.child({ component: "vm" }),
  );
  registry.watch(() => metrics.vmsHooked.set(registry.list().filter((r) => r.state !== "unhooked").length));

  // Aborted when the gRPC server starts its graceful shutdown, so that endless streams end.
  const shuttingDown = new AbortController();
  const service = createIntrospectionService({
    hosts,
    registry,
    logger: logger.child({ component: "rpc" }),
    requestTimeoutMs: config.requestTimeoutMs,
    shuttingDown: shuttingDown.signal,
  });
  const grpc = createGrpcServer({
    config,
    logger: logger.child({ component: "grpc" }),
    services: [service],
    protoFileDescriptors: [
      file_kvmi_v1_introspection_service,
      file_kvmi_v1_vm,
      file_kvmi_v1_command,
      file_kvmi_v1_event,
      file_kvmi_v1_registers,
      file_kvmi_v1_session,
      file_kvmi_v1_memory,
    ],
    metrics,
    channelOptions: {
      "grpc.keepalive_time_ms": config.grpcKeepaliveTimeMs,
      "grpc.keepalive_timeout_ms": config.grpcKeepaliveTimeoutMs,
    },
  });
  grpc.shuttingDown.addEventListener("abort", () => shuttingDown.abort(), { once: true });
  const listeners: KvmiListener[] = [];
  const kvmiEndpoints: Array<{ readonly address: string; readonly dialect: string }> = [];
  let metricsServer: MetricsServer | undefined;
  try {
    const bound = await grpc.listen();
    const onVm = (vm: AcceptedVm): void => {
      if (hosts.all().length >= config.maxVms) {
        logger.warn({ vm: vm.identity.uuid, maxVms: config.maxVms }, "refusing a VM: maxVms reached");
        vm.channel.close("the bridge serves maxVms VMs already");
        return;
      }
      void hosts.adopt(vm);
    };
    for (const [dialect, group] of endpointsByDialect(config, options.cwd ?? process.cwd())) {
      const one = await createKvmiListener(
        {
          endpoints: group,
          dialect,
          handshakeVariant: config.handshakeVariant,
          logger: guestPathLogger.child({ component: "kvmi", dialect: dialect.name }),
          channel: { defaultTimeoutMs: config.requestTimeoutMs },
          ...(options.secret && { secret: options.secret }),
        },
        onVm,
      );
      listeners.push(one);
      for (const address of one.addresses) kvmiEndpoints.push({ address, dialect: dialect.name });
    }
    if (config.metricsListen !== "off") metricsServer = await startMetricsServer(config.metricsListen, metrics.registry);
    const server = metricsServer;
    return {
      grpcTarget: bound.target,
      kvmiAddresses: kvmiEndpoints.map((e) => e.address),
      kvmiEndpoints,
      metricsUrl: server?.url,
      registry,
      hosts,
      metrics,
      grpc,
      stop: async () => {
        grpc.health.setServing(false);
        for (const one of listeners) await one.close();
        await hosts.releaseAll();
        await grpc.shutdown(config.shutdownGraceMs);
        await server?.close();
        guestPathLogger.close();
      },
    };
  } catch (err) {
    guestPathLogger.close();
    for (const one of listeners) await one.close();
    await grpc.shutdown(0).catch(() => undefined);
    throw err;
  }
}
