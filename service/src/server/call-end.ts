// SPDX-License-Identifier: Apache-2.0
/**
 * When a call ends as the transport sees it: its status went out, which for a unary call is after
 * its response was written to HTTP/2 (and so after the client's flow-control window let it go), or
 * the call was cancelled, or its stream closed. A unary handler's promise settles earlier, when the
 * response is only queued: a client that never reads its responses would otherwise make the bridge
 * hold every one of them outside any quota. Leases that stand for a response's memory (the
 * in-flight call, a BatchReadMemory's bulk bytes) are released here instead.
 *
 * The access-log interceptor, which every call passes, marks the ends; the link between it and the
 * handler is the call's request Metadata, the one object grpc-js hands to both unchanged. grpc-js
 * closes every stream eventually (status sent, RST_STREAM, deadline, connection lost or keepalive
 * timeout) and reports the close to the interceptors as a cancel, so a tracked call always ends.
 */
import type { Metadata } from "@grpc/grpc-js";

const pending = new WeakMap<Metadata, Array<() => void>>();

/** Starts tracking the call whose request metadata this is (the interceptor, on receiving it). */
export function trackCallEnd(metadata: Metadata): void {
  pending.set(metadata, []);
}

/** Marks the call's end and runs what waited for it; later calls do nothing. */
export function endCall(metadata: Metadata | undefined): void {
  if (metadata === undefined) return;
  const waiting = pending.get(metadata);
  if (waiting === undefined) return;
  pending.delete(metadata);
  for (const run of waiting) run();
}

/** Runs `run` when the call ends: at once when it has ended or is not tracked (no interceptor). */
export function atCallEnd(metadata: Metadata, run: () => void): void {
  const waiting = pending.get(metadata);
  if (waiting === undefined) run();
  else waiting.push(run);
}
