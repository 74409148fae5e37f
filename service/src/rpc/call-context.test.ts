// SPDX-License-Identifier: Apache-2.0
// The call's AbortSignal: a client's cancel aborts it, grpc-js's 'cancelled' after a finished call
// (it emits one after every status it sends) does not.
import { EventEmitter } from "node:events";
import { describe, expect, it } from "vitest";
import { abortSignalOf, markSettled } from "./call-context.js";
import type { ServerSurfaceCall } from "./call-context.js";

function fakeCall(): ServerSurfaceCall & EventEmitter {
  return Object.assign(new EventEmitter(), { getDeadline: () => Infinity, metadata: undefined as never }) as unknown as ServerSurfaceCall & EventEmitter;
}

describe("abortSignalOf", () => {
  it("aborts when the client cancels before the handler settled", () => {
    const call = fakeCall();
    const signal = abortSignalOf(call);
    call.emit("cancelled", "cancelled");
    expect(signal.aborted).toBe(true);
    expect((signal.reason as Error).message).toBe("the client cancelled the call");
  });

  it("stays unaborted for the 'cancelled' grpc-js emits after a settled call's status", () => {
    const call = fakeCall();
    const signal = abortSignalOf(call);
    let aborts = 0;
    signal.addEventListener("abort", () => aborts++);
    markSettled(call);
    call.emit("cancelled", "cancelled");
    expect(signal.aborted).toBe(false);
    expect(aborts).toBe(0);
  });
});
