// SPDX-License-Identifier: Apache-2.0
/**
 * One access-log line per RPC (conventions §9): method, status, duration, peer, and who called
 * (identity and how it was authenticated, once the authorization point resolved it). grpc-js 1.14
 * has server interceptors (`new Server({ interceptors })`), so {@link createAccessLogInterceptor}
 * sees every call of every service, including reflection and health, without touching handlers.
 * {@link writeAccessLog} is the same line for code paths outside grpc-js (e.g. an in-memory
 * transport in tests).
 *
 * @see https://github.com/grpc/proposal/blob/master/L112-node-server-interceptors.md
 */
import { ServerInterceptingCall, status as GrpcStatus } from "@grpc/grpc-js";
import type { Metadata, Responder, ServerInterceptor, ServerInterceptingCallInterface, ServerListener } from "@grpc/grpc-js";

/** The status a responder sees (grpc-js does not export `PartialStatusObject` from its index). */
type PartialStatus = Parameters<NonNullable<Responder["sendStatus"]>>[0];
import type { Logger } from "@kvmi/kvm-bridge";
import type { BridgeMetrics } from "../metrics/index.js";
import { endCall, trackCallEnd } from "../server/call-end.js";

/** What one access-log line says. */
export interface AccessLogEntry {
  /** Full method path, e.g. `/kvmi.v1.IntrospectionService/GetVm`. */
  readonly method: string;
  /** Final gRPC status code. */
  readonly code: GrpcStatus;
  /** Time from the call arriving to its status being sent (or the call being cancelled), in ms. */
  readonly durationMs: number;
  /** Client address as grpc-js reports it (`127.0.0.1:54321`, or `unknown` on unix sockets). */
  readonly peer?: string;
  /**
   * Who called: the identity the policy matched (a SPIFFE ID, DNS name, CN, JWT `sub`, `local`),
   * absent when the call ended before it was resolved (e.g. UNAUTHENTICATED).
   */
  readonly identity?: string;
  /** How the caller was authenticated: `mtls`, `jwt`, `local` (loopback plaintext) or `anonymous`. */
  readonly auth?: CallerAuth;
  /** Messages received from the client (1 for unary calls). */
  readonly requestMessages?: number;
  /** Messages sent to the client. */
  readonly responseMessages?: number;
}

/** How a caller was authenticated, as the access line says it. */
export type CallerAuth = "mtls" | "jwt" | "local" | "anonymous";

/** The caller of a call, as the authorization point resolved it. */
export interface AccessLogCaller {
  readonly identity: string;
  readonly auth: CallerAuth;
}

/**
 * Status codes that mean the server is at fault (the operator may need to act), logged at `warn`;
 * every other code, including client errors, is logged at `info`.
 */
const SERVER_FAULTS: ReadonlySet<GrpcStatus> = new Set([GrpcStatus.INTERNAL, GrpcStatus.UNKNOWN, GrpcStatus.DATA_LOSS]);

/** The status name used in logs and metric labels: `NOT_FOUND` for 5. */
export function grpcCodeName(code: number): string {
  return GrpcStatus[code] ?? `CODE_${code}`;
}

/**
 * Writes one access line: `{"method":..,"grpcCode":"NOT_FOUND","durationMs":1.234,"peer":..,
 * "identity":"spiffe://..","auth":"mtls"} rpc finished`, at `warn` for INTERNAL/UNKNOWN/DATA_LOSS and `info` otherwise.
 */
export function writeAccessLog(logger: Logger, entry: AccessLogEntry): void {
  const fields: Record<string, unknown> = {
    method: entry.method,
    grpcCode: grpcCodeName(entry.code),
    durationMs: Math.round(entry.durationMs * 1000) / 1000,
  };
  if (entry.peer !== undefined) fields.peer = entry.peer;
  if (entry.identity !== undefined) fields.identity = entry.identity;
  if (entry.auth !== undefined) fields.auth = entry.auth;
  if (entry.requestMessages !== undefined) fields.requestMessages = entry.requestMessages;
  if (entry.responseMessages !== undefined) fields.responseMessages = entry.responseMessages;
  if (SERVER_FAULTS.has(entry.code)) logger.warn(fields, "rpc finished");
  else logger.info(fields, "rpc finished");
}

/** Options of {@link createAccessLogInterceptor}. */
export interface AccessLogOptions {
  /** Where lines go; typically `root.child({ component: "grpc" })`. */
  readonly logger: Logger;
  /** Also counts `kvmi_bridge_grpc_requests_total{method,code}`. */
  readonly metrics?: Pick<BridgeMetrics, "grpcRequestsTotal">;
  /** Methods not logged (still counted), e.g. `/grpc.health.v1.Health/Check` polled by probes. */
  readonly skipMethods?: readonly string[];
  /**
   * The caller of a call, by its request metadata (the object grpc-js hands both the interceptor
   * and the handler): undefined until the authorization point resolved it.
   */
  readonly callerOf?: (metadata: Metadata) => AccessLogCaller | undefined;
}

/**
 * How close to the server's deadline a cancellation counts as the client's deadline. The server's
 * deadline is the arrival time plus `grpc-timeout`, the client's is its send time plus the same
 * timeout, so the client's RST_STREAM at its own deadline lands within a few milliseconds of ours,
 * on either side of it.
 */
const DEADLINE_SLACK_MS = 20;

/**
 * Creates a grpc-js server interceptor that writes one {@link writeAccessLog} line per call when
 * its status is sent. A call that ends without a status is logged as CANCELLED, or as
 * DEADLINE_EXCEEDED when its deadline has passed (grpc-js sends that status below the
 * interceptors).
 */
export function createAccessLogInterceptor(options: AccessLogOptions): ServerInterceptor {
  const skip = new Set(options.skipMethods ?? []);
  return (methodDescriptor, call: ServerInterceptingCallInterface) => {
    const logged = new AccessLoggedCall(options, skip.has(methodDescriptor.path), methodDescriptor.path, call);
    // grpc-js copies the responder's and listener's functions and calls them unbound.
    return new ServerInterceptingCall(call, {
      start: logged.start.bind(logged),
      sendMessage: logged.sendMessage.bind(logged),
      sendStatus: logged.sendStatus.bind(logged),
    });
  };
}

/**
 * One call's responder and listener. A class with bound methods rather than object literals of
 * closures: under tsx each named closure costs a `__name` call, and every unary call creates one.
 */
class AccessLoggedCall implements Responder, ServerListener {
  private readonly started = process.hrtime.bigint();
  private requestMessages = 0;
  private responseMessages = 0;
  private done = false;
  private metadata: Metadata | undefined;

  constructor(
    private readonly options: AccessLogOptions,
    private readonly skip: boolean,
    private readonly method: string,
    private readonly call: ServerInterceptingCallInterface,
  ) {}

  start(next: (listener?: ServerListener) => void): void {
    next({
      onReceiveMetadata: this.onReceiveMetadata.bind(this),
      onReceiveMessage: this.onReceiveMessage.bind(this),
      onCancel: this.onCancel.bind(this),
    });
  }

  onReceiveMetadata(metadata: Metadata, next: (metadata: Metadata) => void): void {
    this.metadata = metadata;
    trackCallEnd(metadata);
    next(metadata);
  }

  sendMessage(message: unknown, next: (message: unknown) => void): void {
    this.responseMessages++;
    next(message);
  }

  sendStatus(status: PartialStatus, next: (status: PartialStatus) => void): void {
    this.finish(status.code);
    next(status);
  }

  onReceiveMessage(message: unknown, next: (message: unknown) => void): void {
    this.requestMessages++;
    next(message);
  }

  onCancel(): void {
    const deadline = this.call.getDeadline();
    const deadlineMs = deadline instanceof Date ? deadline.getTime() : deadline;
    const expired = Number.isFinite(deadlineMs) && Date.now() >= deadlineMs - DEADLINE_SLACK_MS;
    this.finish(expired ? GrpcStatus.DEADLINE_EXCEEDED : GrpcStatus.CANCELLED);
  }

  private finish(code: GrpcStatus): void {
    if (this.done) return;
    this.done = true;
    endCall(this.metadata);
    this.options.metrics?.grpcRequestsTotal.inc({ method: this.method, code: grpcCodeName(code) });
    if (this.skip) return;
    const caller = this.metadata === undefined ? undefined : this.options.callerOf?.(this.metadata);
    writeAccessLog(this.options.logger, {
      method: this.method,
      code,
      durationMs: Number(process.hrtime.bigint() - this.started) / 1e6,
      peer: this.call.getPeer(),
      ...(caller !== undefined && { identity: caller.identity, auth: caller.auth }),
      requestMessages: this.requestMessages,
      responseMessages: this.responseMessages,
    });
  }
}
