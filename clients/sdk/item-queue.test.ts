// SPDX-License-Identifier: Apache-2.0
// ItemQueue: order, one reader, flow control at the high mark and half of it, the end after queued
// items, and abortable reads.
import { describe, expect, it } from "vitest";
import { CancelledError, createError, StatusCode } from "./errors.js";
import type { SessionItem } from "./events.js";
import { ItemQueue } from "./item-queue.js";

const item = (vcpu: number): SessionItem => ({ kind: "replyRejected", vcpu, seq: vcpu, error: createError({ code: StatusCode.NOT_FOUND, message: "x" }) });

function queue(high = 4): { q: ItemQueue; calls: string[] } {
  const calls: string[] = [];
  const q = new ItemQueue(high, () => calls.push("pause"), () => calls.push("resume"));
  return { q, calls };
}

const vcpuOf = (r: IteratorResult<SessionItem, void>): number | undefined => (r.done ? undefined : (r.value as { vcpu: number }).vcpu);

describe("ItemQueue", () => {
  it("yields items in order, to a reader that waits or to one that comes later", async () => {
    const { q } = queue();
    const waiting = q.next(undefined);
    q.push(item(1));
    q.push(item(2));
    q.push(item(3));
    expect(vcpuOf(await waiting)).toBe(1);
    expect(vcpuOf(await q.next(undefined))).toBe(2);
    expect(vcpuOf(await q.next(undefined))).toBe(3);
  });

  it("pauses the stream at the high mark and resumes it once drained to half", async () => {
    const { q, calls } = queue(4);
    for (let i = 0; i < 3; i++) q.push(item(i));
    expect(calls).toEqual([]);
    q.push(item(3));
    expect(calls).toEqual(["pause"]);
    q.push(item(4)); // more may still arrive while paused; no second pause
    expect(calls).toEqual(["pause"]);
    await q.next(undefined); // 4 left
    await q.next(undefined); // 3 left
    expect(calls).toEqual(["pause"]);
    await q.next(undefined); // 2 left: half of 4
    expect(calls).toEqual(["pause", "resume"]);
  });

  it("delivers the queued items before a clean end, then done", async () => {
    const { q } = queue();
    q.push(item(7));
    q.end(undefined);
    expect(vcpuOf(await q.next(undefined))).toBe(7);
    expect(await q.next(undefined)).toEqual({ value: undefined, done: true });
    expect(await q.next(undefined)).toEqual({ value: undefined, done: true });
  });

  it("rejects a waiting reader and later reads with the stream's error; only the first end counts", async () => {
    const { q } = queue();
    const waiting = q.next(undefined);
    const lost = createError({ code: StatusCode.UNAVAILABLE, message: "lost", reason: "KVMI_SESSION_LOST" });
    q.end(lost);
    q.end(undefined);
    await expect(waiting).rejects.toBe(lost);
    await expect(q.next(undefined)).rejects.toBe(lost);
  });

  it("has one reader at a time", async () => {
    const { q } = queue();
    const first = q.next(undefined);
    await expect(q.next(undefined)).rejects.toThrow(/already has a reader/);
    q.push(item(1));
    expect(vcpuOf(await first)).toBe(1);
  });

  it("rejects an aborted read with CancelledError and lets the next reader take the item", async () => {
    const { q } = queue();
    const stop = new AbortController();
    const reading = q.next(stop.signal);
    stop.abort();
    await expect(reading).rejects.toBeInstanceOf(CancelledError);
    await expect(q.next(AbortSignal.abort())).rejects.toBeInstanceOf(CancelledError);
    q.push(item(5));
    expect(vcpuOf(await q.next(undefined))).toBe(5);
  });
});
