// SPDX-License-Identifier: Apache-2.0
/**
 * NoticeQueue (the notifications of rule-answered events, docs/decisions/0175): an isolated item
 * leaves after the current I/O, items that keep coming are collected for the linger and leave as
 * one batch in order, a full batch leaves at once (a scheduled flush sends at most that many per
 * turn), and the queue never holds more than its capacity (one more is refused). Timers are faked, so the test does not depend on the machine.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { NoticeQueue } from "./notice-queue.js";

const OPTIONS = { capacity: 8, flushAt: 4, lingerMs: 5, quietMs: 1 } as const;

let batches: number[][];
let queue: NoticeQueue<number>;

beforeEach(() => {
  vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout", "setImmediate", "clearImmediate", "performance"] });
  batches = [];
  queue = new NoticeQueue<number>((items) => void batches.push([...items]), OPTIONS);
});

afterEach(() => {
  vi.useRealTimers();
});

describe("NoticeQueue", () => {
  it("sends an isolated item after the current turn, not during it", () => {
    expect(queue.push(1)).toBe(true);
    expect(batches).toEqual([]);
    vi.advanceTimersByTime(0); // the setImmediate, no linger
    expect(batches).toEqual([[1]]);
    vi.advanceTimersByTime(OPTIONS.quietMs);
    queue.push(2);
    vi.advanceTimersByTime(0);
    expect(batches).toEqual([[1], [2]]);
  });

  it("collects items that keep coming for the linger and sends them as one batch, in order", () => {
    queue.push(1);
    vi.advanceTimersByTime(0);
    // Back to back: each comes within quietMs of the one before.
    for (const item of [2, 3, 4]) {
      vi.advanceTimersByTime(0.2);
      queue.push(item);
    }
    vi.advanceTimersByTime(OPTIONS.lingerMs - 1);
    expect(batches).toEqual([[1]]);
    vi.advanceTimersByTime(1);
    expect(batches).toEqual([[1], [2, 3, 4]]);
  });

  it("sends flushAt items at once, without waiting for the linger", () => {
    queue.push(0);
    vi.advanceTimersByTime(0);
    for (let i = 1; i <= OPTIONS.flushAt; i++) queue.push(i);
    vi.advanceTimersByTime(0); // the setImmediate only
    expect(batches).toEqual([[0], [1, 2, 3, 4]]);
  });

  it("holds at most capacity items: one more is refused and the earlier ones keep their order", () => {
    const accepted: boolean[] = [];
    for (let i = 0; i < OPTIONS.capacity + 3; i++) accepted.push(queue.push(i));
    expect(accepted.filter((a) => a)).toHaveLength(OPTIONS.capacity);
    expect(accepted.slice(OPTIONS.capacity)).toEqual([false, false, false]);
    expect(queue.length).toBe(OPTIONS.capacity);
    // A scheduled flush sends flushAt at a time, the rest in the next turn.
    vi.advanceTimersByTime(0);
    expect(batches).toEqual([[0, 1, 2, 3]]);
    vi.advanceTimersToNextTimer();
    expect(batches).toEqual([[0, 1, 2, 3], [4, 5, 6, 7]]);
    expect(queue.length).toBe(0);
    expect(queue.push(99)).toBe(true);
  });

  it("flush() sends what waits now and cancels the scheduled flush; clear() forgets it", () => {
    queue.push(1);
    queue.flush();
    expect(batches).toEqual([[1]]);
    vi.runAllTimers();
    expect(batches).toEqual([[1]]);
    queue.push(2);
    queue.clear();
    vi.runAllTimers();
    expect(batches).toEqual([[1]]);
    expect(queue.length).toBe(0);
  });
});
