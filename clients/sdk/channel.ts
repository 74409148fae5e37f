// SPDX-License-Identifier: Apache-2.0
/**
 * The gRPC connection: credentials (plaintext, TLS, mTLS), deadlines, metadata and AbortSignal
 * wiring for unary, server-streaming and bidirectional calls. Errors leave here as grpc-js errors;
 * the callers normalize them with `toSdkError` (unary calls through `withRetry`).
 * @internal
 */
import { Client, credentials, InterceptingCall, Metadata } from "@grpc/grpc-js";
import type { CallOptions as GrpcCallOptions, ChannelCredentials, ClientDuplexStream, ClientOptions, Interceptor } from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { abortError, toSdkError } from "./errors.js";
import { requestSchema, rpcMethod } from "./rpc-methods.js";
import type { MethodName, RequestOf, ResponseOf, ServiceMethods, UnaryMethodName } from "./rpc-methods.js";

/** TLS settings of {@link ConnectOptions}. PEM contents, not file names. */
export interface TlsOptions {
  /** CA certificate(s) that signed the bridge's certificate; the system roots when absent. */
  readonly ca?: string | Uint8Array;
  /** Client certificate chain, for a bridge started with `--tls-client-ca` (mTLS). */
  readonly cert?: string | Uint8Array;
  /** Private key of {@link cert}. */
  readonly key?: string | Uint8Array;
  /** Host name to verify in the bridge's certificate when it differs from the target's host. */
  readonly serverName?: string;
}

/** Per-call options every SDK method accepts. */
export interface CallOptions {
  /** Aborts the call; it then rejects with `CancelledError`. */
  readonly signal?: AbortSignal | undefined;
  /** Deadline of one attempt in ms (gRPC deadline); default {@link ConnectOptions.timeoutMs}. */
  readonly timeoutMs?: number | undefined;
}

/** Metadata key that carries the controller's session id on unary mutating RPCs. */
export const SESSION_ID_METADATA = "kvmi-session-id";

/** The options {@link Channel} needs. @internal */
export interface ChannelOptions {
  readonly target: string;
  readonly tls?: TlsOptions | undefined;
  readonly timeoutMs: number;
  readonly grpcOptions?: ClientOptions | undefined;
  readonly bearerToken?: BearerToken | undefined;
}

/**
 * A bearer JWT for the bridge's `authorization` metadata: the token, or a function asked on every
 * call (a Kubernetes projected token file rotates, so read it each time).
 */
export type BearerToken = string | (() => string);

/** Adds `authorization: Bearer …` to every call (unary and streams alike). */
function bearerInterceptor(token: BearerToken): Interceptor {
  return (options, nextCall) =>
    new InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        metadata.set("authorization", `Bearer ${typeof token === "string" ? token : token()}`);
        next(metadata, listener);
      },
    });
}

const toBuffer = (value: string | Uint8Array | undefined): Buffer | null =>
  value === undefined ? null : typeof value === "string" ? Buffer.from(value) : Buffer.from(value);

function channelCredentials(tls: TlsOptions | undefined): ChannelCredentials {
  if (tls === undefined) return credentials.createInsecure();
  return credentials.createSsl(toBuffer(tls.ca), toBuffer(tls.key), toBuffer(tls.cert));
}

/**
 * The HTTP/2 receive window the SDK opens unless `grpcOptions` sets one: 4 MiB for the connection
 * and each stream, instead of HTTP/2's 64 KiB. With 64 KiB the bridge stops every 64 KiB of a
 * bulk read until this client's WINDOW_UPDATE arrives; in `npm run bench` (2-core VM) a 4 MiB
 * window took DumpMemory from ≈ 100–135 to ≈ 230 MB/s and BatchReadMemory from ≈ 75–100 to
 * ≈ 190 MB/s (docs/performance.md). The bridge never sends more than the client asked for, so
 * the cost is at most this much buffered per call the application does not read.
 */
export const RECEIVE_WINDOW_BYTES = 4 * 1024 * 1024;

/** The grpc-js options of a channel: the SDK's defaults, then the caller's. @internal */
export function channelGrpcOptions(options: ClientOptions | undefined): ClientOptions {
  return { "grpc-node.flow_control_window": RECEIVE_WINDOW_BYTES, ...options };
}

/** A gRPC connection to one bridge. @internal */
export class Channel {
  private readonly client: Client;
  readonly defaultTimeoutMs: number;

  constructor(options: ChannelOptions) {
    const grpcOptions = channelGrpcOptions(options.grpcOptions);
    if (options.bearerToken !== undefined) grpcOptions.interceptors = [...(grpcOptions.interceptors ?? []), bearerInterceptor(options.bearerToken)];
    if (options.tls?.serverName !== undefined) {
      grpcOptions["grpc.ssl_target_name_override"] = options.tls.serverName;
      grpcOptions["grpc.default_authority"] = options.tls.serverName;
    }
    this.client = new Client(options.target, channelCredentials(options.tls), grpcOptions);
    this.defaultTimeoutMs = options.timeoutMs;
  }

  /** Closes the connection; calls in flight fail with CANCELLED or UNAVAILABLE. */
  close(): void {
    this.client.close();
  }

  private callOptions(timeoutMs: number | undefined): GrpcCallOptions {
    const ms = timeoutMs ?? this.defaultTimeoutMs;
    return ms > 0 && Number.isFinite(ms) ? { deadline: new Date(Date.now() + ms) } : {};
  }

  /**
   * One attempt of a unary call. Rejects with the raw grpc-js error (normalized by the caller) or
   * CancelledError when `signal` fires.
   */
  unary<M extends UnaryMethodName>(
    name: M,
    request: RequestOf<M>,
    options: CallOptions & { readonly sessionId?: string | undefined },
  ): Promise<ResponseOf<M>> {
    const method = rpcMethod(name);
    const metadata = new Metadata();
    if (options.sessionId !== undefined) metadata.set(SESSION_ID_METADATA, options.sessionId);
    const { signal } = options;
    return new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(abortError(signal));
      const onAbort = (): void => {
        call.cancel();
        reject(abortError(signal!));
      };
      const call = this.client.makeUnaryRequest(
        method.path,
        method.serialize,
        method.deserialize,
        request,
        metadata,
        this.callOptions(options.timeoutMs),
        (err, response) => {
          signal?.removeEventListener("abort", onAbort);
          if (err !== null) reject(err);
          else resolve(response!);
        },
      );
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  /**
   * A server-streaming call as an async iterable; errors are thrown as `KvmiBridgeError`s, an
   * aborted `signal` ends it with CancelledError. `timeoutMs` is not applied: streams live until
   * they end or are cancelled.
   */
  async *serverStream<M extends MethodName>(name: M, request: RequestOf<M>, signal: AbortSignal | undefined): AsyncGenerator<ResponseOf<M>> {
    const method = rpcMethod(name);
    if (signal?.aborted) throw abortError(signal);
    const call = this.client.makeServerStreamRequest(method.path, method.serialize, method.deserialize, request, new Metadata(), {});
    const onAbort = (): void => call.cancel();
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      for await (const message of call) yield message as ResponseOf<M>;
    } catch (err) {
      if (signal?.aborted) throw abortError(signal);
      throw toSdkError(err);
    } finally {
      signal?.removeEventListener("abort", onAbort);
      // Ends the call when the consumer stops early (break, return, throw).
      call.cancel();
    }
  }

  /** Opens the bidirectional Session stream. */
  session(): ClientDuplexStream<RequestOf<"session">, ResponseOf<"session">> {
    const method = rpcMethod("session");
    return this.client.makeBidiStreamRequest(method.path, method.serialize, method.deserialize, new Metadata(), {});
  }
}

/** Creates a request message of a method from its init shape. @internal */
export function createRequest<M extends MethodName>(name: M, init: MessageInitShape<ServiceMethods[M]["input"]>): RequestOf<M> {
  return create(requestSchema(name), init as never) as RequestOf<M>;
}
