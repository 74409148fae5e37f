// SPDX-License-Identifier: Apache-2.0
/**
 * Assembles the gRPC server of the bridge: the API services, health checking, reflection, the
 * access-log interceptor, TLS, keepalive and message limits, binding, and graceful shutdown.
 */
import { lstatSync, mkdirSync, unlinkSync } from "node:fs";
import { connect } from "node:net";
import { dirname } from "node:path";
import { Server } from "@grpc/grpc-js";
import type { ChannelOptions, ServerOptions, ServiceDefinition, UntypedServiceImplementation } from "@grpc/grpc-js";
import type { DescFile } from "@bufbuild/protobuf";
import type { Logger } from "@kvmi/kvm-bridge";
import { formatGrpcListen, isLoopback, parseGrpcListen } from "../config/index.js";
import type { BridgeConfig } from "../config/index.js";
import { createAccessLogInterceptor } from "../log/index.js";
import type { AccessLogOptions } from "../log/index.js";
import type { BridgeMetrics } from "../metrics/index.js";
import { createServerCredentials } from "./credentials.js";
import type { TlsMode } from "./credentials.js";
import { createHealth } from "./health.js";
import type { HealthController } from "./health.js";
import { createReflectionService } from "./reflection.js";

/** Largest message either way: a 16 MiB ReadPhysicalMemory reply or DumpMemory chunk. */
export const MAX_MESSAGE_BYTES = 16 * 1024 * 1024;

/**
 * Channel options of the server, tuned for long-lived Session and Watch streams.
 *
 * - keepalive: the server pings every 30 s and drops a connection whose ping is not acknowledged
 *   within 10 s, so a controller that vanished without a FIN (node reboot, network partition) is
 *   noticed within ~40 s and `controllerGonePolicy` applies, instead of the event replies waiting
 *   for TCP's retransmission timeout (minutes). grpc-js servers ping whether or not calls are
 *   active.
 * - grpc-js servers do not enforce a client ping policy (no GOAWAY too_many_pings as in C-core
 *   or Go); Node's HTTP/2 stack bounds ping floods itself. Clients should still keep
 *   `grpc.keepalive_time_ms` >= 10 s, with `grpc.keepalive_permit_without_calls` = 1 for idle
 *   Watch/Session channels.
 * - no max connection age or idle timeout: either would cut an event session.
 *
 * @see https://github.com/grpc/grpc/blob/master/doc/keepalive.md
 */
export const GRPC_SERVER_OPTIONS: Readonly<ChannelOptions> = {
  "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
  "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
  "grpc.keepalive_time_ms": 30_000,
  "grpc.keepalive_timeout_ms": 10_000,
  "grpc.keepalive_permit_without_calls": 1,
};

/** One service to serve: a grpc-js definition (e.g. from `createServiceDefinition`) and its handlers. */
export interface ServiceRegistration {
  readonly definition: ServiceDefinition;
  readonly implementation: UntypedServiceImplementation;
}

/** Inputs of {@link createGrpcServer}. */
export interface GrpcServerOptions {
  readonly config: Pick<BridgeConfig, "grpcListen" | "tlsCert" | "tlsKey" | "tlsClientCa" | "allowInsecure" | "shutdownGraceMs">;
  /** Receives lifecycle lines and, through the interceptor, one access line per RPC. */
  readonly logger: Logger;
  readonly services: readonly ServiceRegistration[];
  /** Generated `file_*` descriptors served by reflection, e.g. `[file_kvmi_v1_introspection_service]`. */
  readonly protoFileDescriptors: readonly DescFile[];
  /** Counts `kvmi_bridge_grpc_requests_total`. */
  readonly metrics?: Pick<BridgeMetrics, "grpcRequestsTotal">;
  /** Methods left out of the access log (still counted), e.g. health checks polled by probes. */
  readonly accessLogSkipMethods?: readonly string[];
  /** Who made a call, for its access line (see AccessLogOptions.callerOf). */
  readonly accessLogCallerOf?: AccessLogOptions["callerOf"];
  /** Overrides of {@link GRPC_SERVER_OPTIONS}, mostly for tests. */
  readonly channelOptions?: Partial<ChannelOptions>;
}

/** A server that is assembled but not yet listening. */
export interface BridgeGrpcServer {
  /** The grpc-js server, for adding more services before {@link listen}. */
  readonly server: Server;
  /** Health statuses; {@link listen} sets SERVING, {@link shutdown} NOT_SERVING. */
  readonly health: HealthController;
  /** Aborted when {@link shutdown} starts: long-lived handlers should end their streams. */
  readonly shuttingDown: AbortSignal;
  /** Transport security of the listener. */
  readonly tlsMode: TlsMode;
  /**
   * Binds `config.grpcListen` and marks every service SERVING.
   * A stale unix socket file (nobody accepting) is removed first and its directory created.
   * @returns The bound target; for port 0 it holds the real port (`127.0.0.1:43127`).
   * @throws when the address is in use or cannot be bound.
   */
  listen(): Promise<{ readonly target: string; readonly port: number }>;
  /**
   * Stops gracefully: NOT_SERVING, abort {@link shuttingDown}, refuse new calls (GOAWAY), wait for
   * running calls up to `graceMs` (default `config.shutdownGraceMs`), then cancel what is left.
   * Idempotent. Resolves `forced: true` when the grace period ran out.
   */
  shutdown(graceMs?: number): Promise<{ readonly forced: boolean }>;
}

/** Fully-qualified service name of a grpc-js definition, from its first method path. */
function serviceNameOf(definition: ServiceDefinition): string | undefined {
  const path = Object.values(definition)[0]?.path;
  return path?.split("/")[1];
}

/**
 * Creates the gRPC server with health checking, reflection, the access-log interceptor, TLS per
 * config, keepalive for long streams and 16 MiB message limits. Call `listen()` to bind.
 *
 * @throws Error when the config would serve plaintext on a non-loopback address without
 *   `allowInsecure` (normally caught earlier by `loadConfig`), or when TLS files cannot be read.
 */
export function createGrpcServer(options: GrpcServerOptions): BridgeGrpcServer {
  const { config, logger } = options;
  const address = parseGrpcListen(config.grpcListen, process.cwd());
  if (!address.ok) throw new Error(`grpcListen: ${address.error}`);
  const { credentials, mode } = createServerCredentials(config);
  if (mode === "plaintext" && !isLoopback(address.value) && !config.allowInsecure) {
    throw new Error(`refusing plaintext gRPC on non-loopback ${config.grpcListen}; configure TLS or allowInsecure`);
  }

  const serverOptions: ServerOptions = {
    ...GRPC_SERVER_OPTIONS,
    ...options.channelOptions,
    interceptors: [
      createAccessLogInterceptor({
        // Access lines carry only method, status, duration, peer, identity and message counts
        // (access-log.ts), none of them secret: without the redaction paths a line costs ≈ 3 µs
        // instead of ≈ 8 µs, on every unary call (issue 16).
        logger: logger.child({ component: "grpc-access" }, { redact: [] }),
        ...(options.metrics ? { metrics: options.metrics } : {}),
        ...(options.accessLogSkipMethods ? { skipMethods: options.accessLogSkipMethods } : {}),
        ...(options.accessLogCallerOf ? { callerOf: options.accessLogCallerOf } : {}),
      }),
    ],
  };
  const server = new Server(serverOptions);

  const names: string[] = [];
  for (const { definition, implementation } of options.services) {
    server.addService(definition, implementation);
    const name = serviceNameOf(definition);
    if (name !== undefined) names.push(name);
  }
  const health = createHealth(names);
  health.implementation.addToServer(server);
  createReflectionService(options.protoFileDescriptors).addToServer(server);

  const abort = new AbortController();
  let shutdownPromise: Promise<{ forced: boolean }> | undefined;

  return {
    server,
    health,
    shuttingDown: abort.signal,
    tlsMode: mode,
    async listen() {
      if (address.value.kind === "unix") await prepareUnixSocket(address.value.path, logger);
      const port = await new Promise<number>((resolve, reject) => {
        server.bindAsync(formatGrpcListen(address.value), credentials, (error, boundPort) =>
          error ? reject(error) : resolve(boundPort),
        );
      });
      const target = address.value.kind === "unix" ? formatGrpcListen(address.value) : formatGrpcListen({ ...address.value, port });
      health.setServing(true);
      logger.info({ target, tls: mode, services: names }, "grpc server listening");
      return { target, port };
    },
    shutdown(graceMs = config.shutdownGraceMs) {
      shutdownPromise ??= new Promise((resolve) => {
        logger.info({ graceMs }, "grpc server shutting down");
        health.setServing(false);
        abort.abort();
        let settled = false;
        const finish = (forced: boolean): void => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          logger.info({ forced }, "grpc server stopped");
          resolve({ forced });
        };
        const timer = setTimeout(() => {
          logger.warn({ graceMs }, "grace period over, cancelling remaining calls");
          server.forceShutdown();
          finish(true);
        }, graceMs);
        server.tryShutdown(() => finish(false));
      });
      return shutdownPromise;
    },
  };
}

/**
 * Makes a unix socket path bindable: creates its directory and removes a socket file left by a
 * crashed process. A live socket (someone accepts) or a non-socket file is left alone, and the
 * bind then fails with EADDRINUSE.
 */
async function prepareUnixSocket(path: string, logger: Logger): Promise<void> {
  mkdirSync(dirname(path), { recursive: true });
  let isSocket: boolean;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch {
    return; // Nothing there.
  }
  if (!isSocket) return;
  const alive = await new Promise<boolean>((resolve) => {
    const probe = connect({ path });
    probe.once("connect", () => {
      probe.destroy();
      resolve(true);
    });
    probe.once("error", () => resolve(false));
  });
  if (!alive) {
    unlinkSync(path);
    logger.info({ path }, "removed stale unix socket");
  }
}
