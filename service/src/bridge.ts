// SPDX-License-Identifier: Apache-2.0
/**
 * The bridge, composed: KVMI listener → VM registry and hosts → gRPC service (with health and
 * reflection) → metrics endpoint. `main.ts` adds configuration, signals and the embedded
 * emulator; tests start this directly.
 */
import { setMaxListeners } from "node:events";
import { createKvmiListener, createVmRegistry } from "@kvmi/kvm-bridge";
import { dialectByName } from "@kvmi/kvm-bridge/wire";
import type { Dialect } from "@kvmi/kvm-bridge/wire";
import type { AcceptedVm, KvmiListener, ListenEndpoint, Logger, VmRegistry } from "@kvmi/kvm-bridge";
import {
  file_google_rpc_error_details,
  file_google_rpc_status,
  file_kvmi_v1_command,
  file_kvmi_v1_event,
  file_kvmi_v1_introspection_service,
  file_kvmi_v1_memory,
  file_kvmi_v1_registers,
  file_kvmi_v1_session,
  file_kvmi_v1_vm,
} from "@kvmi/proto";
import { createAuditTrail, NO_AUDIT } from "./audit/audit-log.js";
import type { AuditTrail } from "./audit/audit-log.js";
import { createAccessControl } from "./auth/access-control.js";
import type { AccessControl } from "./auth/access-control.js";
import { createIdentityResolver } from "./auth/identity.js";
import { loadJwksStore } from "./auth/jwks-store.js";
import type { JwksStore } from "./auth/jwks-store.js";
import { createJwtVerifier } from "./auth/jwt.js";
import { ALLOW_ALL } from "./auth/policy.js";
import { loadPolicyStore } from "./auth/policy-store.js";
import type { PolicyStore } from "./auth/policy-store.js";
import { isLoopback, parseGrpcListen, parseKvmiListen, splitListenDialect } from "./config/index.js";
import type { BridgeConfig } from "./config/index.js";
import { createRateLimitedLogger } from "./log/index.js";
import { commandStatusOf, createBridgeMetrics, startMetricsServer } from "./metrics/index.js";
import type { AutoReplyReason, BridgeMetrics, MetricsServer } from "./metrics/index.js";
import { startForwardListener } from "./forward/forward-listener.js";
import type { ForwardListener } from "./forward/forward-listener.js";
import { callerOfMetadata } from "./rpc/principals.js";
import { createIntrospectionService } from "./rpc/introspection-service.js";
import { Quotas } from "./rpc/quotas.js";
import { createGrpcServer } from "./server/index.js";
import type { BridgeGrpcServer } from "./server/index.js";
import type { VmHostMetrics } from "./vm/vm-host.js";
import { LedgerJournals } from "./vm/ledger-journal.js";
import { VmHosts } from "./vm/vm-hosts.js";

/** A running bridge. */
export interface Bridge {
  /** Where gRPC listens (`127.0.0.1:50051`, `unix:/…`). */
  readonly grpcTarget: string;
  /** Where device managers connect (`unix:/…`, `tcp:…`). */
  readonly kvmiAddresses: readonly string[];
  /** Where KVMI forwarders connect (`forwardListen`); empty when off. */
  readonly forwardAddresses: readonly string[];
  /** The same addresses with the dialect each listener speaks. */
  readonly kvmiEndpoints: ReadonlyArray<{ readonly address: string; readonly dialect: string }>;
  /** The metrics URL, unless metrics are off. */
  readonly metricsUrl: string | undefined;
  readonly registry: VmRegistry;
  readonly hosts: VmHosts;
  readonly metrics: BridgeMetrics;
  readonly grpc: BridgeGrpcServer;
  /** The authorization point. */
  readonly access: AccessControl;
  /** The audit trail ({@link NO_AUDIT} when off). */
  readonly audit: AuditTrail;
  /**
   * Reads the policy file again (SIGHUP). False when it is invalid: the previous policy stays and
   * every error is logged. True without a policy file (nothing to reload).
   */
  reloadPolicy(): boolean;
  /**
   * Reads the JWKS file again (SIGHUP). False when it is bad: the previous keys stay and the error
   * is logged. True without a JWKS file.
   */
  reloadJwks(): boolean;
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

/** Bound children of kvmi_bridge_filter_events_total by event and outcome: no label object per event. */
const FILTER_COUNTERS = new WeakMap<BridgeMetrics, Map<string, Map<string, { inc(): void }>>>();

function filterCounter(metrics: BridgeMetrics, event: string, outcome: string): { inc(): void } {
  let byEvent = FILTER_COUNTERS.get(metrics);
  if (byEvent === undefined) FILTER_COUNTERS.set(metrics, (byEvent = new Map()));
  let byOutcome = byEvent.get(event);
  if (byOutcome === undefined) byEvent.set(event, (byOutcome = new Map()));
  let child = byOutcome.get(outcome);
  if (child === undefined) byOutcome.set(outcome, (child = metrics.filterEventsTotal.labels(event, outcome)));
  return child;
}

function hostMetrics(metrics: BridgeMetrics): VmHostMetrics {
  return {
    // The status label vocabulary of the metrics module (ok, remote_error, timeout, session_lost, …).
    command: (name, error, seconds) => metrics.observeCommand(name, commandStatusOf(error), seconds),
    commandBurst: (name, ok, errors, seconds) => metrics.observeCommandBurst(name, ok, errors.map(commandStatusOf), seconds),
    event: (name) => metrics.eventsTotal.inc({ event: eventLabel(name) }),
    eventRoundTrip: (name, seconds) => metrics.eventRoundTripSeconds.observe({ event: eventLabel(name) }, seconds),
    autoReply: (name, reason) => metrics.eventAutoRepliesTotal.inc({ event: eventLabel(name), reason: reason as AutoReplyReason }),
    unhookToClose: (seconds) => metrics.unhookToCloseSeconds.observe(seconds),
    bytesRead: (bytes) => metrics.bytesReadTotal.inc(bytes),
    filterEvent: (name, outcome) => filterCounter(metrics, eventLabel(name), outcome).inc(),
  };
}

function raise(message: string): never {
  throw new Error(message);
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
      a.kind === "unix" ? { kind: "unix", path: a.path, mode: config.kvmiSocketMode, ...(config.kvmiSocketOwner && { owner: config.kvmiSocketOwner }) } : { kind: "tcp", host: a.host, port: a.port };
    groups.set(dialect, [...(groups.get(dialect) ?? []), endpoint]);
  }
  return groups;
}

/** The audit trail the config asks for: a file, stdout, both or none. */
function openAuditTrail(config: BridgeConfig, logger: Logger): AuditTrail {
  if (config.auditFile === undefined && !config.auditStdout) return NO_AUDIT;
  return createAuditTrail({
    file: config.auditFile,
    stream: config.auditStdout ? process.stdout : undefined,
    maxBytes: config.auditMaxBytes,
    maxFiles: config.auditMaxFiles,
    onError: (err) => logger.error({ err, auditFile: config.auditFile }, "cannot write the audit trail"),
  });
}

/**
 * Identities, policy and audit (docs/authorization.md). Without a policy every caller may do
 * everything; the config loader allows that only on loopback, or with `authorization: none`.
 */
function startAccessControl(
  config: BridgeConfig,
  logger: Logger,
  registry: VmRegistry,
  audit: AuditTrail,
): { access: AccessControl; policy: PolicyStore | undefined; jwks: JwksStore | undefined } {
  const policy = config.policyFile === undefined ? undefined : loadPolicyStore({ file: config.policyFile, logger, audit });
  if (config.authorization === "none") logger.warn({}, "authorization is off (--authorization none): every caller that reaches the gRPC port may do everything");
  else if (policy === undefined) logger.warn({}, "no policy file: every caller on this loopback listener may do everything (identity local)");
  let jwks: JwksStore | undefined;
  try {
    jwks = config.jwtJwksFile === undefined ? undefined : loadJwksStore({ file: config.jwtJwksFile, logger, audit });
  } catch (err) {
    policy?.close();
    throw err;
  }
  const jwt = jwks === undefined ? undefined : createJwtVerifier({ jwks, issuers: config.jwtIssuer, audiences: config.jwtAudience, groupsClaim: config.jwtGroupsClaim });
  const address = parseGrpcListen(config.grpcListen, process.cwd());
  const plaintextLoopback = config.tlsCert === undefined && address.ok && isLoopback(address.value);
  const access = createAccessControl({
    identities: createIdentityResolver({ plaintextLoopback, jwt }),
    policy: policy === undefined ? () => ALLOW_ALL : () => policy.current(),
    enforcing: policy !== undefined,
    vmName: (uuid) => registry.get(uuid)?.name ?? "",
    audit,
  });
  return { access, policy, jwks };
}

/** The VM gauges from the registry's states (announced VMs without QEMU are not hooked). */
function countVms(registry: VmRegistry, metrics: BridgeMetrics): void {
  let hooked = 0;
  let awaiting = 0;
  let missed = 0;
  for (const record of registry.list()) {
    if (record.state === "awaiting-connection") awaiting++;
    else if (record.state === "not-connected") missed++;
    else if (record.state !== "unhooked") hooked++;
  }
  metrics.vmsHooked.set(hooked);
  metrics.vmsNotConnected.set({ state: "awaiting", reason: QEMU_NEVER_CONNECTED }, awaiting);
  metrics.vmsNotConnected.set({ state: "missed", reason: QEMU_NEVER_CONNECTED }, missed);
}

/** The reason label of VMs whose QEMU never reached the bridge (the only reason the bridge can see). */
export const QEMU_NEVER_CONNECTED = "qemu_never_connected";

/**
 * The ledger journals of `--state-dir`, or undefined (with a warning) when it is off.
 * @throws when the directory cannot be created or another bridge holds it.
 */
function openJournals(config: BridgeConfig, logger: Logger): LedgerJournals | undefined {
  if (config.stateDir === "off") {
    logger.warn({}, "--state-dir is off: the hook ledger lives in memory only, and a crash of the bridge leaves a controller's breakpoints in the guest");
    return undefined;
  }
  const journals = new LedgerJournals({ stateDir: config.stateDir, compactBytes: config.ledgerCompactBytes, logger: logger.child({ component: "ledger" }) });
  // Journals of VMs that left long ago go first: their VMs are gone, with their memory.
  if (config.ledgerMaxAgeHours > 0) journals.startPruning(config.ledgerMaxAgeHours * 3_600_000);
  const waiting = journals.list();
  if (waiting.length > 0) logger.info({ vms: waiting }, "ledger journals of a previous run wait for their VMs to reconnect");
  return journals;
}

/** Starts every part of the bridge; rejects (after cleaning up) if one cannot start. */
export async function startBridge(options: StartBridgeOptions): Promise<Bridge> {
  const { config, logger } = options;
  const audit = openAuditTrail(config, logger);
  const journals = openJournals(config, logger);
  // Events, faults and malformed input are guest- or peer-triggered: their log lines are
  // rate-limited, with a summary of what was dropped (conventions §9).
  const guestPathLogger = createRateLimitedLogger(logger, { keyFields: ["vm"] });
  const metrics = createBridgeMetrics();
  const registry = createVmRegistry({ logger: logger.child({ component: "registry" }) });
  let authorization;
  try {
    authorization = startAccessControl(config, logger.child({ component: "auth" }), registry, audit);
  } catch (err) {
    audit.close();
    guestPathLogger.close();
    throw err;
  }
  const { access, policy, jwks } = authorization;
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
      journals,
    },
    guestPathLogger.child({ component: "vm" }),
  );
  registry.watch(() => countVms(registry, metrics));

  // Aborted when the gRPC server starts its graceful shutdown, so that endless streams end. Each
  // open WatchVms stream listens to it: as many as the watchers quota lets in, and no more.
  const shuttingDown = new AbortController();
  setMaxListeners(config.maxWatchers + 8, shuttingDown.signal);
  const service = createIntrospectionService({
    hosts,
    registry,
    logger: logger.child({ component: "rpc" }),
    requestTimeoutMs: config.requestTimeoutMs,
    shuttingDown: shuttingDown.signal,
    access,
    audit,
    quotas: new Quotas(config),
    dumpMaxHoleBytes: config.dumpMaxHoleBytes,
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
      // The error details the bridge sends in grpc-status-details-bin (docs/conventions.md,
      // "Errors"): a client that knows the API only through reflection can decode ErrorInfo.
      file_google_rpc_status,
      file_google_rpc_error_details,
    ],
    metrics,
    accessLogCallerOf: callerOfMetadata,
    channelOptions: {
      "grpc.keepalive_time_ms": config.grpcKeepaliveTimeMs,
      "grpc.keepalive_timeout_ms": config.grpcKeepaliveTimeoutMs,
    },
  });
  grpc.shuttingDown.addEventListener("abort", () => shuttingDown.abort(), { once: true });
  const listeners: KvmiListener[] = [];
  const kvmiEndpoints: Array<{ readonly address: string; readonly dialect: string }> = [];
  let forwardListener: ForwardListener | undefined;
  let metricsServer: MetricsServer | undefined;
  try {
    const bound = await grpc.listen();
    const kvmiOptions = {
      handshakeVariant: config.handshakeVariant,
      logger: guestPathLogger.child({ component: "kvmi" }),
      channel: { defaultTimeoutMs: config.requestTimeoutMs },
    };
    const admit = (vm: AcceptedVm): void => {
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
          ...kvmiOptions,
          endpoints: group,
          dialect,
          logger: guestPathLogger.child({ component: "kvmi", dialect: dialect.name }),
          ...(options.secret && { secret: options.secret }),
        },
        admit,
      );
      listeners.push(one);
      for (const address of one.addresses) kvmiEndpoints.push({ address, dialect: dialect.name });
    }
    if (config.forwardListen.length > 0) {
      forwardListener = await startForwardListener({
        addresses: config.forwardListen.map((text) => parseKvmiListen(text, options.cwd ?? process.cwd())).map((r) => (r.ok ? r.value : raise(r.error))),
        ...(config.tlsCert !== undefined &&
          config.tlsKey !== undefined && { tls: { certFile: config.tlsCert, keyFile: config.tlsKey, ...((config.forwardClientCa ?? config.tlsClientCa) !== undefined && { clientCaFile: config.forwardClientCa ?? config.tlsClientCa }) } }),
        allowInsecure: config.allowInsecure,
        socketMode: config.kvmiSocketMode,
        // Forwarded VMs speak the bridge's default dialect (--kvmi-dialect).
        kvmi: { ...kvmiOptions, dialect: dialectByName(config.kvmiDialect, "kvmiDialect") },
        registry,
        onVm: admit,
        maxConnections: config.maxVms * 2,
        logger: logger.child({ component: "forward" }),
      });
    }
    if (config.metricsListen !== "off") metricsServer = await startMetricsServer(config.metricsListen, metrics.registry);
    const forwarders = forwardListener;
    const server = metricsServer;
    return {
      grpcTarget: bound.target,
      kvmiAddresses: kvmiEndpoints.map((e) => e.address),
      kvmiEndpoints,
      forwardAddresses: forwardListener?.addresses ?? [],
      metricsUrl: server?.url,
      registry,
      hosts,
      metrics,
      grpc,
      access,
      audit,
      reloadPolicy: () => policy?.reload("SIGHUP") ?? true,
      reloadJwks: () => jwks?.reload("SIGHUP") ?? true,
      stop: async () => {
        grpc.health.setServing(false);
        for (const one of listeners) await one.close();
        await forwarders?.close();
        await hosts.releaseAll();
        await grpc.shutdown(config.shutdownGraceMs);
        await server?.close();
        policy?.close();
        jwks?.close();
        audit.close();
        journals?.close();
        guestPathLogger.close();
      },
    };
  } catch (err) {
    journals?.close();
    guestPathLogger.close();
    policy?.close();
    jwks?.close();
    audit.close();
    for (const one of listeners) await one.close();
    await forwardListener?.close();
    await grpc.shutdown(0).catch(() => undefined);
    throw err;
  }
}
