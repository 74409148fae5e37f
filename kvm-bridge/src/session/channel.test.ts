// SPDX-License-Identifier: Apache-2.0
/**
 * KvmiChannel command deadlines: one timer per channel serves every pending command, so commands
 * with different deadlines, late replies and replies before the deadline are checked here over a
 * real UNIX socket, with the test playing the kernel by hand.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import type { Server, Socket } from "node:net";
import { tmpdir } from "node:os";
import { setMaxListeners } from "node:events";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { KvmiArgumentError, KvmiRemoteError, KvmiTimeoutError, KvmiTransportError } from "../errors.js";
import { encodeReply, eventByKind, v9, V9_COMMANDS } from "../wire/index.js";
import type { MsgHdr } from "../wire/index.js";
import { createKvmiChannel } from "./channel.js";
import type { KvmiChannel, KvmiChannelOptions } from "./channel.js";
import { createFramer } from "./framer.js";

interface Kernel {
  /** Commands received, in order. */
  readonly received: MsgHdr[];
  /** Answers the command with `seq` as a successful KVMI_VM_GET_MAX_GFN (the only command used here). */
  reply(seq: number): void;
  /** Answers the command with `seq` with a kernel error (a positive errno). */
  fail(seq: number, errno: number): void;
  /** Answers the command with `seq` as another command (KVMI_GET_VERSION): a protocol error. */
  wrongId(seq: number): void;
  next(): Promise<MsgHdr>;
}

const GET_MAX_GFN = V9_COMMANDS.KVMI_VM_GET_MAX_GFN;

let dir: string;
let channel: KvmiChannel;
let kernel: Kernel;

/** A channel over a fresh UNIX socket pair, with the test playing the kernel at the other end. */
async function open(options: Partial<KvmiChannelOptions> = {}): Promise<{ channel: KvmiChannel; kernel: Kernel; socket: Socket }> {
  const path = join(dir, `kvmi-${servers.length}.sock`);
  let server!: Server;
  const accepted = new Promise<Socket>((resolve) => {
    server = createServer(resolve);
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(path, resolve));
  const tool = createConnection(path);
  const peer = await accepted;
  const received: MsgHdr[] = [];
  const unread: MsgHdr[] = [];
  const waiters: Array<(hdr: MsgHdr) => void> = [];
  const framer = createFramer(v9);
  peer.on("data", (chunk: Buffer) =>
    framer.push(chunk, (hdr) => {
      received.push(hdr);
      const waiter = waiters.shift();
      if (waiter) waiter(hdr);
      else unread.push(hdr);
    }),
  );
  const opened = createKvmiChannel(tool, { vm: "deadline-test", dialect: v9, ...options });
  channels.push(opened);
  return {
    channel: opened,
    socket: tool,
    kernel: {
      received,
      reply: (seq) => void peer.write(encodeReply(v9, GET_MAX_GFN, seq, 0, { gfn: 0x1234n })),
      fail: (seq, errno) => void peer.write(encodeReply(v9, GET_MAX_GFN, seq, -errno)),
      wrongId: (seq) => void peer.write(encodeReply(v9, V9_COMMANDS.KVMI_GET_VERSION, seq, -22)),
      next: () => {
        const hdr = unread.shift();
        return hdr ? Promise.resolve(hdr) : new Promise((resolve) => waiters.push(resolve));
      },
    },
  };
}

const servers: Server[] = [];
const channels: KvmiChannel[] = [];

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), "kvmi-channel-"));
  ({ channel, kernel } = await open());
});

afterEach(() => {
  for (const c of channels.splice(0)) c.close("test over");
  for (const server of servers.splice(0)) server.close();
  rmSync(dir, { recursive: true, force: true });
});

/** Settles `promise` into what happened to it, and when (ms after `t0`). */
async function outcome(promise: Promise<unknown>, t0: number): Promise<{ error: unknown; atMs: number }> {
  try {
    await promise;
    return { error: undefined, atMs: performance.now() - t0 };
  } catch (error) {
    return { error, atMs: performance.now() - t0 };
  }
}

describe("KvmiChannel command deadlines", () => {
  it("fails each unanswered command at its own deadline, the earlier one first", async () => {
    const t0 = performance.now();
    const slow = outcome(channel.command("GET_MAX_GFN", {}, undefined, { timeoutMs: 400 }), t0);
    const fast = outcome(channel.command("GET_MAX_GFN", {}, undefined, { timeoutMs: 60 }), t0);
    const fastResult = await fast;
    expect(fastResult.error).toBeInstanceOf(KvmiTimeoutError);
    expect((fastResult.error as Error).message).toBe("KVMI_VM_GET_MAX_GFN got no reply within 60 ms");
    expect(fastResult.atMs).toBeGreaterThanOrEqual(59);
    // The later deadline is still ahead: its command is still pending.
    expect(channel.pendingCommands).toBe(1);
    const slowResult = await slow;
    expect(slowResult.error).toBeInstanceOf(KvmiTimeoutError);
    expect(slowResult.atMs).toBeGreaterThanOrEqual(399);
    expect(channel.pendingCommands).toBe(0);
    expect(channel.isOpen).toBe(true);
  });

  it("a command added with an earlier deadline than the armed one still fails on time", async () => {
    const t0 = performance.now();
    const long = outcome(channel.command("GET_MAX_GFN", {}, undefined, { timeoutMs: 5_000 }), t0);
    await kernel.next();
    const short = await outcome(channel.command("GET_MAX_GFN", {}, undefined, { timeoutMs: 50 }), t0);
    expect(short.error).toBeInstanceOf(KvmiTimeoutError);
    expect(short.atMs).toBeLessThan(2_000);
    kernel.reply(kernel.received[0]!.seq);
    expect((await long).error).toBeUndefined();
  });

  it("drops a late reply to a timed-out command quietly and keeps working", async () => {
    const first = channel.command("GET_MAX_GFN", {}, undefined, { timeoutMs: 30 });
    const hdr = await kernel.next();
    await expect(first).rejects.toBeInstanceOf(KvmiTimeoutError);
    kernel.reply(hdr.seq);
    const second = channel.command("GET_MAX_GFN", {}, undefined, { timeoutMs: 1_000 });
    kernel.reply((await kernel.next()).seq);
    await expect(second).resolves.toEqual({ gfn: 0x1234n });
    expect(channel.isOpen).toBe(true);
  });

  it("answered commands leave nothing for the deadline timer to fail", async () => {
    for (let i = 0; i < 3; i++) {
      const done = channel.command("GET_MAX_GFN", {}, undefined, { timeoutMs: 40 });
      kernel.reply((await kernel.next()).seq);
      await expect(done).resolves.toEqual({ gfn: 0x1234n });
    }
    // Past the deadlines the timer was armed for: nothing fails, the channel stays open.
    await new Promise((resolve) => setTimeout(resolve, 80));
    expect(channel.pendingCommands).toBe(0);
    expect(channel.isOpen).toBe(true);
  });

  it("closing fails pending commands with KvmiTransportError, not a later timeout", async () => {
    const pending = channel.command("GET_MAX_GFN", {}, undefined, { timeoutMs: 50 });
    await kernel.next();
    channel.close("device manager went away");
    await expect(pending).rejects.toBeInstanceOf(KvmiTransportError);
    await new Promise((resolve) => setTimeout(resolve, 80));
    expect(channel.pendingCommands).toBe(0);
  });
});

describe("KvmiChannel.commandBatch", () => {
  it("sends every request at once and returns each one's own outcome, in request order", async () => {
    const batch = channel.commandBatch("GET_MAX_GFN", [{}, {}, {}], undefined, { timeoutMs: 150 });
    const hdrs = [await kernel.next(), await kernel.next(), await kernel.next()];
    expect(new Set(hdrs.map((h) => h.seq)).size).toBe(3);
    // Out of order, one failed by the kernel, one never answered.
    kernel.fail(hdrs[2]!.seq, 2);
    kernel.reply(hdrs[0]!.seq);
    const results = await batch;
    expect(results[0]).toEqual({ gfn: 0x1234n });
    expect(results[1]).toBeInstanceOf(KvmiTimeoutError);
    expect(results[2]).toBeInstanceOf(KvmiRemoteError);
    expect((results[2] as KvmiRemoteError).errno).toBe(2);
    expect(channel.pendingCommands).toBe(0);
    expect(channel.isOpen).toBe(true);
  });

  it("an abort fails what is still in flight with the abort reason", async () => {
    const controller = new AbortController();
    const batch = channel.commandBatch("GET_MAX_GFN", [{}, {}], undefined, { timeoutMs: 5_000, signal: controller.signal });
    const first = await kernel.next();
    await kernel.next();
    kernel.reply(first.seq);
    // The abort must come after the reply was taken: wait for that, not for a guessed time.
    await vi.waitFor(() => expect(channel.pendingCommands).toBe(1), { timeout: 5_000, interval: 1 });
    const reason = new Error("client cancelled");
    controller.abort(reason);
    const results = await batch;
    expect(results[0]).toEqual({ gfn: 0x1234n });
    expect(results[1]).toBe(reason);
    expect(channel.pendingCommands).toBe(0);
  });

  it("a closing socket fails the whole batch with KvmiTransportError", async () => {
    const batch = channel.commandBatch("GET_MAX_GFN", [{}, {}], undefined, { timeoutMs: 5_000 });
    await kernel.next();
    channel.close("device manager went away");
    const results = await batch;
    expect(results.every((r) => r instanceof KvmiTransportError)).toBe(true);
  });

  it("refuses a batch larger than the channel keeps in flight, sending nothing", async () => {
    const small = await open({ maxInFlight: 4 });
    await expect(small.channel.commandBatch("GET_MAX_GFN", [{}, {}, {}, {}, {}])).rejects.toBeInstanceOf(KvmiArgumentError);
    expect(small.kernel.received).toHaveLength(0);
    expect(small.channel.pendingCommands).toBe(0);
  });

  it("batches that together need more slots than there are take turns instead of waiting on each other", async () => {
    const small = await open({ maxInFlight: 4 });
    // The kernel answers everything it gets, in order.
    let answered = 0;
    let mostInFlight = 0;
    const answerAll = (async () => {
      while (answered < 7) {
        const hdr = await small.kernel.next();
        mostInFlight = Math.max(mostInFlight, small.kernel.received.length - answered);
        small.kernel.reply(hdr.seq);
        answered++;
      }
    })();
    const first = small.channel.commandBatch("GET_MAX_GFN", [{}, {}, {}], undefined, { timeoutMs: 2_000 });
    const second = small.channel.commandBatch("GET_MAX_GFN", [{}, {}, {}], undefined, { timeoutMs: 2_000 });
    const single = small.channel.command("GET_MAX_GFN", {}, undefined, { timeoutMs: 2_000 });
    const results = [...(await first), ...(await second), await single];
    await answerAll;
    expect(results).toHaveLength(7);
    for (const r of results) expect(r).toEqual({ gfn: 0x1234n });
    // Never more than four in flight: the second batch went out only once three slots were free.
    expect(mostInFlight).toBeLessThanOrEqual(4);
    expect(mostInFlight).toBeGreaterThanOrEqual(3);
    expect(small.kernel.received).toHaveLength(7);
    expect(small.channel.pendingCommands).toBe(0);
  });

  it("a caller that gives up thousands of commands before the kernel answers cannot close the channel: only the slots' worth reach the kernel, every late reply is matched", async () => {
    const small = await open({ maxInFlight: 8 });
    const controller = new AbortController();
    setMaxListeners(10_000, controller.signal);
    const options = { timeoutMs: 60_000, signal: controller.signal };
    // Thousands of page reads queued behind 8 slots, as a session's unread BatchReadMemory does.
    const calls: Array<Promise<unknown>> = [];
    for (let i = 0; i < 3000; i++) calls.push(small.channel.commandBatch("GET_MAX_GFN", [{}, {}, {}, {}], undefined, options));
    for (let i = 0; i < 3000; i++) calls.push(small.channel.command("GET_MAX_GFN", {}, undefined, options).catch((e: unknown) => e));
    await vi.waitFor(() => expect(small.kernel.received).toHaveLength(8), { timeout: 5_000, interval: 5 });
    controller.abort(new Error("session ended"));
    const outcomes = await Promise.all(calls);
    expect(outcomes.flat().every((o) => o instanceof Error && o.message === "session ended")).toBe(true);
    // Every queued command was dropped before being written: the kernel got the first 8 only.
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(small.kernel.received).toHaveLength(8);
    expect(small.channel.unansweredGivenUpCommands).toBe(8);
    // The kernel answers them now: dropped quietly, and the slots come back.
    for (const hdr of small.kernel.received) small.kernel.reply(hdr.seq);
    await vi.waitFor(() => expect(small.channel.unansweredGivenUpCommands).toBe(0), { timeout: 5_000, interval: 5 });
    expect(small.channel.isOpen).toBe(true);
    const next = small.channel.command("GET_MAX_GFN", {}, undefined, { timeoutMs: 5_000 });
    await vi.waitFor(() => expect(small.kernel.received).toHaveLength(9), { timeout: 5_000, interval: 5 });
    small.kernel.reply(small.kernel.received[8]!.seq);
    await expect(next).resolves.toEqual({ gfn: 0x1234n });
  });

  it("commands that time out faster than the kernel answers keep their slots: later ones time out waiting for one, unsent, and every late reply is matched", async () => {
    const small = await open({ maxInFlight: 8 });
    const calls: Array<Promise<unknown>> = [];
    for (let i = 0; i < 2000; i++) calls.push(small.channel.command("GET_MAX_GFN", {}, undefined, { timeoutMs: 30 }).catch((e: unknown) => e));
    const outcomes = await Promise.all(calls);
    expect(outcomes.every((o) => o instanceof KvmiTimeoutError)).toBe(true);
    expect(small.kernel.received).toHaveLength(8);
    for (const hdr of small.kernel.received) small.kernel.reply(hdr.seq);
    await vi.waitFor(() => expect(small.channel.unansweredGivenUpCommands).toBe(0), { timeout: 5_000, interval: 5 });
    expect(small.channel.isOpen).toBe(true);
  });

  it("takes any CancelSignal, not only an AbortSignal: in flight and waiting for a slot both fail with its reason", async () => {
    const small = await open({ maxInFlight: 1 });
    // The members CancelSignal names and nothing else, as the service's per-call signal has.
    const listeners: Array<() => void> = [];
    const signal = {
      aborted: false,
      reason: undefined as unknown,
      throwIfAborted(): void {
        if (this.aborted) throw this.reason;
      },
      addEventListener: (_type: "abort", listener: () => void): void => void listeners.push(listener),
      removeEventListener: (_type: "abort", listener: () => void): void => void listeners.splice(listeners.indexOf(listener) >>> 0, 1),
    };
    const inFlight = small.channel.command("GET_MAX_GFN", {}, undefined, { timeoutMs: 5_000, signal }).catch((e: unknown) => e);
    const waiting = small.channel.command("GET_MAX_GFN", {}, undefined, { timeoutMs: 5_000, signal }).catch((e: unknown) => e);
    const hdr = await small.kernel.next();
    const reason = new Error("client cancelled");
    signal.aborted = true;
    signal.reason = reason;
    for (const listener of listeners.splice(0)) listener();
    expect(await inFlight).toBe(reason);
    expect(await waiting).toBe(reason);
    // The waiting one never reached the kernel; the one it has is answered and dropped quietly.
    expect(small.kernel.received).toHaveLength(1);
    small.kernel.reply(hdr.seq);
    await vi.waitFor(() => expect(small.channel.unansweredGivenUpCommands).toBe(0), { timeout: 5_000, interval: 5 });
    expect(small.channel.isOpen).toBe(true);
    await expect(small.channel.command("GET_MAX_GFN", {}, undefined, { timeoutMs: 5_000, signal })).rejects.toBe(reason);
  });

  it("a reply whose seq was given up but whose id differs is still a protocol error", async () => {
    const controller = new AbortController();
    const call = channel.command("GET_MAX_GFN", {}, undefined, { timeoutMs: 5_000, signal: controller.signal });
    const hdr = await kernel.next();
    controller.abort(new Error("cancelled"));
    await expect(call).rejects.toThrow("cancelled");
    kernel.wrongId(hdr.seq);
    await vi.waitFor(() => expect(channel.isOpen).toBe(false), { timeout: 5_000, interval: 5 });
  });
});

describe("KvmiChannel.replyEvent", () => {
  it("writes the reply in the caller's turn, ahead of anything the caller schedules after it", async () => {
    const opened = await open();
    const write = vi.spyOn(opened.socket, "write");
    const spec = eventByKind(v9, "CR")!;
    const replied = opened.channel.replyEvent({ seq: 41, vcpu: 0, spec }, 0, { new_val: 0x2000n });
    // Written before replyEvent returns, not in a later microtask (nextTick callbacks run before
    // microtasks): what the caller queues next (a notification's encoding) finds the reply written.
    expect(write).toHaveBeenCalledTimes(1);
    await replied;
    const hdr = await opened.kernel.next();
    expect(hdr.seq).toBe(41);
  });
});
