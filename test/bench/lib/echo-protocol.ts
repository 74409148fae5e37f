// SPDX-License-Identifier: Apache-2.0
/**
 * The bare grpc-js baseline: a service with raw-bytes messages (no protobuf, no interceptors), so
 * it measures only grpc-js and the transport. A request says how many bytes the answer carries,
 * which lets the echo reproduce the exact request and response sizes of a bridge call.
 *
 * Request layout (little endian): u32 response bytes, u32 total bytes (server stream only), then
 * padding up to the request size being reproduced.
 */
import type { MethodDefinition } from "@grpc/grpc-js";

const identity = (b: Buffer): Buffer => b;

function method(name: string, requestStream: boolean, responseStream: boolean): MethodDefinition<Buffer, Buffer> {
  return {
    path: `/kvmi.bench.Echo/${name}`,
    requestStream,
    responseStream,
    requestSerialize: identity,
    requestDeserialize: identity,
    responseSerialize: identity,
    responseDeserialize: identity,
    originalName: name,
  };
}

/** The echo service (grpc-js definition). */
export const ECHO_SERVICE = {
  unary: method("Unary", false, false),
  bidi: method("Bidi", true, true),
  stream: method("Stream", false, true),
} as const;

/** Smallest request: the two u32 fields. */
export const ECHO_HEADER_BYTES = 8;

/** Builds an echo request of `requestBytes` (at least 8) asking for `responseBytes` back. */
export function echoRequest(requestBytes: number, responseBytes: number, totalBytes = 0): Buffer {
  const b = Buffer.alloc(Math.max(ECHO_HEADER_BYTES, requestBytes));
  b.writeUInt32LE(responseBytes, 0);
  b.writeUInt32LE(totalBytes, 4);
  return b;
}

/**
 * Server channel options: the same values the bridge's gRPC server uses
 * (service/src/server/grpc-server.ts, GRPC_SERVER_OPTIONS), so both servers run one transport.
 */
export const ECHO_SERVER_OPTIONS = {
  "grpc.max_receive_message_length": 16 * 1024 * 1024,
  "grpc.max_send_message_length": 16 * 1024 * 1024,
  "grpc.keepalive_time_ms": 30_000,
  "grpc.keepalive_timeout_ms": 10_000,
  "grpc.keepalive_permit_without_calls": 1,
} as const;

/**
 * Client channel options, the same for the echo and the bridge clients: the SDK's 4 MiB HTTP/2
 * receive window (clients/sdk/channel.ts, RECEIVE_WINDOW_BYTES). With HTTP/2's 64 KiB the bulk
 * phases measured how fast WINDOW_UPDATEs come back more than either server: the bare stream
 * reached ≈ 130 MB/s with it and ≈ 500 MB/s without.
 */
export const CLIENT_OPTIONS = {
  "grpc.max_receive_message_length": -1,
  "grpc.max_send_message_length": -1,
  "grpc-node.flow_control_window": 4 * 1024 * 1024,
} as const;
