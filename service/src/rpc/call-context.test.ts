// SPDX-License-Identifier: Apache-2.0
// The call's cancel signal: a client's cancel aborts it, grpc-js's 'cancelled' after a finished call
// (it emits one after every status it sends) does not.
import { EventEmitter } from "node:events";
import { describe, expect, it } from "vitest";
import { cancellationOf, markSettled } from "./call-context.js";
import type { ServerSurfaceCall } from "./call-context.js";

function fakeCall(): ServerSurfaceCall & EventEmitter {
  return Object.assign(new EventEmitter(), { getDeadline: () => Infinity, metadata: undefined as never }) as unknown as ServerSurfaceCall & EventEmitter;
}

describe("cancellationOf", () => {
  it("aborts when the client cancels before the handler settled", () => {
    const call = fakeCall();
    const signal = cancellationOf(call);
    call.emit("cancelled", "cancelled");
    expect(signal.aborted).toBe(true);
    expect((signal.reason as Error).message).toBe("the client cancelled the call");
  });

  it("stays unaborted for the 'cancelled' grpc-js emits after a settled call's status", () => {
    const call = fakeCall();
    const signal = cancellationOf(call);
    let aborts = 0;
    signal.addEventListener("abort", () => aborts++);
    markSettled(call);
    call.emit("cancelled", "cancelled");
    expect(signal.aborted).toBe(false);
    expect(aborts).toBe(0);
  });

  it("runs each listener once, in order, and not the ones removed before the cancel", () => {
    const call = fakeCall();
    const signal = cancellationOf(call);
    const order: string[] = [];
    const removed = (): number => order.push("removed");
    signal.addEventListener("abort", () => order.push("first"));
    signal.addEventListener("abort", removed);
    signal.addEventListener("abort", () => order.push("second"));
    signal.removeEventListener("abort", removed);
    expect(() => signal.throwIfAborted()).not.toThrow();
    call.emit("cancelled", "cancelled");
    call.emit("cancelled", "cancelled");
    expect(order).toEqual(["first", "second"]);
    expect(() => signal.throwIfAborted()).toThrow("the client cancelled the call");
  });
});
