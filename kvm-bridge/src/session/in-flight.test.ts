// SPDX-License-Identifier: Apache-2.0
import { getEventListeners, setMaxListeners } from "node:events";
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

  it("a waiter whose deadline passes or whose signal aborts leaves the queue with nothing taken, and the next one moves up", async () => {
    const slots = new InFlightSlots(2);
    slots.acquire(2);
    const controller = new AbortController();
    const timedOut = slots.acquire(1, performance.now() + 20);
    const aborted = slots.acquire(1, Number.POSITIVE_INFINITY, controller.signal);
    const patient = slots.acquire(2);
    const reason = new Error("gone");
    controller.abort(reason);
    await expect(aborted).rejects.toBe(reason);
    await expect(timedOut).resolves.toBe(false);
    expect(slots.waiting).toBe(1);
    slots.release(2);
    await expect(patient).resolves.toBe(true);
    expect(slots.inUse).toBe(2);
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

  it("fails a command at its deadline, but keeps its slot until the late reply comes, matched once", async () => {
    const errors: Error[] = [];
    let retired = 0;
    const pending = new PendingCommands<string>(
      (entry) => new Error(`${entry.spec} timed out after ${entry.timeoutMs} ms`),
      (n) => void (retired += n),
    );
    const seq = pending.allocateSeq();
    pending.add(seq, { id: 7, spec: "GET", vcpu: undefined, resolve: () => undefined, reject: (e) => errors.push(e), deadline: performance.now() + 20, timeoutMs: 20 });
    await new Promise((resolve) => setTimeout(resolve, 60));
    expect(errors.map((e) => e.message)).toEqual(["GET timed out after 20 ms"]);
    expect(pending.get(seq)).toBeUndefined();
    expect(pending.size).toBe(0);
    // Given up, not forgotten: the kernel still has the command, so its slot is still taken.
    expect(pending.givenUpCount).toBe(1);
    expect(retired).toBe(0);
    // Its seq is not handed out again while the reply may come.
    for (let i = 0; i < 3; i++) expect(pending.allocateSeq()).not.toBe(seq);
    expect(pending.takeGivenUp(seq)).toBe(7);
    expect(retired).toBe(1);
    expect(pending.takeGivenUp(seq)).toBeUndefined();
    expect(retired).toBe(1);
  });

  it("however many commands are given up, each holds its slot until answered or the close: the table never outgrows the slots", () => {
    const slots = new InFlightSlots(8);
    const pending = new PendingCommands<string>(() => new Error("timeout"), (n) => slots.release(n));
    const controller = new AbortController();
    setMaxListeners(200, controller.signal);
    const failed: unknown[] = [];
    // More callers than slots: the first 8 get theirs, the rest wait.
    const waits: Array<Promise<boolean> | undefined> = [];
    for (let i = 0; i < 100; i++) waits.push(slots.acquire(1, Number.POSITIVE_INFINITY, controller.signal));
    for (let i = 0; i < 8; i++) {
      expect(waits[i]).toBeUndefined();
      const seq = pending.allocateSeq();
      pending.add(seq, { id: 1, spec: "x", vcpu: undefined, resolve: () => undefined, reject: (e) => failed.push(e), deadline: performance.now() + 60_000, timeoutMs: 60_000 });
      pending.watch(controller.signal, seq);
    }
    for (const wait of waits.slice(8)) wait!.catch((e: unknown) => failed.push(e));
    controller.abort(new Error("cancelled"));
    // Everyone fails at once; the 8 sent keep their slots (the kernel has them), nobody else got one.
    expect(pending.size).toBe(0);
    expect(pending.givenUpCount).toBe(8);
    expect(slots.inUse).toBe(8);
    expect(slots.waiting).toBe(0);
    pending.failAll(() => new Error("closed"));
    expect(pending.givenUpCount).toBe(0);
    expect(slots.inUse).toBe(0);
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
