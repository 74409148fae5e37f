// SPDX-License-Identifier: Apache-2.0
import { getEventListeners } from "node:events";
import { describe, expect, it } from "vitest";
import { InFlightSlots, PendingCommands } from "./in-flight.js";

describe("InFlightSlots", () => {
  it("grants at once while slots are free, then strictly in arrival order, a batch only whole", async () => {
    const slots = new InFlightSlots(4);
    expect(slots.acquire(3)).toBeUndefined();
    const order: string[] = [];
    const big = slots.acquire(3)!.then(() => order.push("big"));
    // A single slot is free, but the batch waiting before it comes first.
    const small = slots.acquire(1)!.then(() => order.push("small"));
    await Promise.resolve();
    expect(order).toEqual([]);
    slots.release(3);
    await Promise.all([big, small]);
    expect(order).toEqual(["big", "small"]);
    expect(slots.inUse).toBe(4);
  });

  it("close lets every waiter through, so each can find the channel closed and give back its slots", async () => {
    const slots = new InFlightSlots(1);
    slots.acquire(1);
    const waiting = [slots.acquire(1), slots.acquire(1)];
    slots.close();
    await Promise.all(waiting);
    for (let i = 0; i < 3; i++) slots.release(1);
    expect(slots.inUse).toBe(0);
    expect(slots.acquire(5)).toBeUndefined();
  });
});

describe("PendingCommands", () => {
  it("allocates distinct non-zero seqs and fails everything pending on close", () => {
    const pending = new PendingCommands<string>(() => new Error("timeout"));
    const add = (seq: number): void =>
      pending.add(seq, { id: 1, spec: "x", vcpu: undefined, resolve: () => undefined, reject: () => undefined, deadline: performance.now() + 60_000, timeoutMs: 60_000 });
    const seen = new Set<number>();
    for (let i = 0; i < 5; i++) {
      const seq = pending.allocateSeq();
      expect(seq).not.toBe(0);
      expect(seen.has(seq)).toBe(false);
      seen.add(seq);
      add(seq);
    }
    pending.failAll(() => new Error("closed"));
    expect(pending.size).toBe(0);
  });

  it("fails a command at its deadline with the timeout error and drops its late reply quietly once", async () => {
    const errors: Error[] = [];
    const pending = new PendingCommands<string>((entry) => new Error(`${entry.spec} timed out after ${entry.timeoutMs} ms`));
    const seq = pending.allocateSeq();
    pending.add(seq, { id: 1, spec: "GET", vcpu: undefined, resolve: () => undefined, reject: (e) => errors.push(e), deadline: performance.now() + 20, timeoutMs: 20 });
    await new Promise((resolve) => setTimeout(resolve, 60));
    expect(errors.map((e) => e.message)).toEqual(["GET timed out after 20 ms"]);
    expect(pending.get(seq)).toBeUndefined();
    expect(pending.wasGivenUp(seq)).toBe(true);
    expect(pending.wasGivenUp(seq)).toBe(false);
  });

  it("fails every command a signal covers when it aborts, with one listener on the signal", () => {
    const pending = new PendingCommands<string>(() => new Error("timeout"));
    const failures = new Map<number, unknown>();
    const controller = new AbortController();
    const seqs = [pending.allocateSeq(), pending.allocateSeq(), pending.allocateSeq()];
    for (const seq of seqs) {
      pending.add(seq, { id: 1, spec: "x", vcpu: undefined, resolve: () => undefined, reject: (e) => failures.set(seq, e), deadline: performance.now() + 60_000, timeoutMs: 60_000 });
      pending.watch(controller.signal, seq);
    }
    // The second command finished: no longer covered.
    pending.take(seqs[1]!);
    pending.unwatch(controller.signal, seqs[1]!);
    expect(getEventListeners(controller.signal, "abort")).toHaveLength(1);
    const reason = new Error("session ended");
    controller.abort(reason);
    expect([...failures.keys()].sort()).toEqual([seqs[0], seqs[2]].sort());
    expect(failures.get(seqs[0]!)).toBe(reason);
    // A command watched after the abort fails at once.
    const late = pending.allocateSeq();
    pending.add(late, { id: 1, spec: "x", vcpu: undefined, resolve: () => undefined, reject: (e) => failures.set(late, e), deadline: performance.now() + 60_000, timeoutMs: 60_000 });
    pending.watch(controller.signal, late);
    expect(failures.get(late)).toBe(reason);
    pending.failAll(() => new Error("closed"));
  });
});
