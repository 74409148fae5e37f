// SPDX-License-Identifier: Apache-2.0
/**
 * The tool side of one VM's KVMI socket (kvmi-abi §3): allocates seqs, matches replies by seq (out
 * of order allowed, kvmi-abi §2.5), hands events to one sink, writes every message with one
 * `write()`, and fails every pending command with a clear error when the device manager goes away.
 *
 * Backpressure, both ways (conventions §4, undici `client-h1.js`): when `write()` returns false,
 * later commands wait for `drain`; when the event sink says it is full, the socket stops being read
 * until the sink calls {@link KvmiChannel.resumeEvents}. In-flight commands are bounded.
 *
 * This file keeps the command path (seqs, slots, bursts) and the receive path (replies matched by
 * seq, events to the sink, event replies); the socket's write order, the in-flight table and the
 * channel's end are in its base class (channel-core.ts), the public shapes in channel-types.ts.
 */
import type { Socket } from "node:net";
import { KvmiArgumentError, KvmiProtocolError, KvmiRemoteError } from "../errors.js";
import { requireCommand } from "../wire/dialect.js";
import type { CommandSpec } from "../wire/dialect.js";
import {
  decodeEvent,
  decodeReply,
  encodeCommand,
  encodeCommands,
  encodeEventReply,
  isEventMessage,
  isEventReplyError,
  readReplyError,
} from "../wire/message.js";
import type { MsgHdr } from "../wire/message.js";
import type { CommandOp } from "../wire/ops.js";
import { KvmiChannelCore } from "./channel-core.js";
import type { CommandOptions, CommandReply, CommandRequest, EventSink, KvmiChannelOptions, KvmiEvent } from "./channel-types.js";
import { createFramer } from "./framer.js";
import { BatchedCommand, BatchResults } from "./in-flight.js";

export type { CancelSignal, CommandOptions, CommandReply, CommandRequest, EventSink, KvmiChannelOptions, KvmiEvent } from "./channel-types.js";

/** The tool side of a hooked VM's socket. */
export class KvmiChannel extends KvmiChannelCore {
  private sink: EventSink = () => true;
  private eventsPaused = false;

  constructor(socket: Socket, options: KvmiChannelOptions) {
    super(socket, options);
    const framer = createFramer(this.dialect);
    const onFrame = (hdr: MsgHdr, body: Uint8Array): void => this.onMessage(hdr, body);
    socket.on("data", (chunk: Buffer) => {
      try {
        framer.push(chunk, onFrame);
      } catch (err) {
        this.close(`protocol error: ${(err as Error).message}`, err);
      }
    });
    socket.once("close", () => this.close("device manager disconnected"));
    socket.on("error", (err) => this.log.debug({ err: err.message }, "KVMI socket error"));
    socket.resume();
  }

  /** Installs the event consumer (one per channel). */
  setEventSink(sink: EventSink): void {
    this.sink = sink;
  }

  /** Called by a sink that returned false once it can take events again. */
  resumeEvents(): void {
    if (!this.eventsPaused || !this.isOpen) return;
    this.eventsPaused = false;
    this.socket.resume();
  }

  /**
   * Sends the command `op` of the channel's dialect and resolves with its reply data. The body is
   * encoded with the dialect's layouts; `vcpu` addresses vCPU commands wherever the dialect puts
   * it (`kvmi_vcpu_hdr`, or the body of v12's VM_PAUSE_VCPU).
   * @throws KvmiNotInDialectError (a KvmiUnsupportedError) when the dialect has no `op`,
   *   KvmiRemoteError when the kernel answers `err != 0` (errno kept as a positive number),
   *   KvmiTimeoutError after the deadline, KvmiTransportError when the socket goes away,
   *   KvmiArgumentError when the request cannot be encoded.
   */
  async command<O extends CommandOp>(
    op: O,
    request: CommandRequest<O>,
    vcpu?: number,
    options: CommandOptions = {},
  ): Promise<CommandReply<O>> {
    const spec = requireCommand(this.dialect, op);
    return (await this.commandBySpec(spec, request as Record<string, unknown>, vcpu, options)) as CommandReply<O>;
  }

  /**
   * Sends the command `spec` (an entry of the channel's dialect table), untyped: for code that
   * walks the table, such as a relay or a conformance tool. Same errors as {@link command}.
   */
  async commandBySpec(
    spec: CommandSpec,
    request: Record<string, unknown>,
    vcpu?: number,
    options: CommandOptions = {},
  ): Promise<Record<string, unknown>> {
    this.checkAnswered(spec, request);
    const signal = options.signal;
    signal?.throwIfAborted();
    const timeoutMs = options.timeoutMs ?? this.defaultTimeoutMs;
    // The deadline covers the wait for a slot too: slots may be held by commands the kernel does
    // not answer (a stopped vCPU), and no caller waits past its deadline for one.
    const deadline = performance.now() + timeoutMs;
    // A free slot is taken without a promise (a microtask per command adds up).
    const waitForSlot = this.slots.acquire(1, deadline, signal);
    if (waitForSlot !== undefined && !(await waitForSlot)) throw this.timeoutError(spec, vcpu, timeoutMs);
    // The slot passes to the pending table with the command, and is given back when the kernel
    // answers it, even if this caller stops waiting before (docs/decisions/0140).
    let slotHandedOver = false;
    try {
      if (this.closeError !== undefined) this.assertOpen(this.contextOf(spec, vcpu));
      const seq = this.pending.allocateSeq();
      const message = encodeCommand(this.dialect, spec, seq, request, vcpu);
      const reply = new Promise<Record<string, unknown>>((resolve, reject) => {
        this.pending.add(seq, { id: spec.id, spec, vcpu, resolve, reject, deadline, timeoutMs });
      });
      slotHandedOver = true;
      // The reply may be rejected (close, timeout, abort) while the write still waits for its turn;
      // it is awaited below, this only keeps that early rejection from counting as unhandled.
      reply.catch(() => undefined);
      if (signal !== undefined) this.pending.watch(signal, seq);
      try {
        await this.waitForTurn(spec, vcpu);
        // Given up while waiting for its turn: never sent, so no reply will come.
        if (this.pending.isWaited(seq)) this.send(message);
        else this.pending.forgetUnsent(seq);
        return await reply;
      } finally {
        if (signal !== undefined) this.pending.unwatch(signal, seq);
      }
    } finally {
      if (!slotHandedOver) this.slots.release(1);
    }
  }

  /**
   * Sends one command per request, all at once in one write, and resolves when every reply came
   * (or failed): per request, its reply data or the error it failed with (KvmiRemoteError,
   * KvmiTimeoutError, KvmiTransportError, the abort reason). For bulk page reads: a promise, an
   * async frame and a write per page cost more than the page's bytes (kvmi-abi §4: one
   * KVMI_VM_READ_PHYSICAL reads at most one page).
   * @throws KvmiArgumentError when a request cannot be encoded (nothing is sent then).
   */
  async commandBatch<O extends CommandOp>(
    op: O,
    requests: readonly CommandRequest<O>[],
    vcpu?: number,
    options: CommandOptions = {},
  ): Promise<Array<CommandReply<O> | Error>> {
    const spec = requireCommand(this.dialect, op);
    for (const request of requests) this.checkAnswered(spec, request as Record<string, unknown>);
    const signal = options.signal;
    signal?.throwIfAborted();
    const count = requests.length;
    const results = new Array<CommandReply<O> | Error>(count);
    if (count === 0) return results;
    if (count > this.slots.limit) {
      throw new KvmiArgumentError("requests", `a batch of ${count} commands exceeds the ${this.slots.limit} the channel keeps in flight`);
    }
    const timeoutMs = options.timeoutMs ?? this.defaultTimeoutMs;
    const deadline = performance.now() + timeoutMs;
    // All slots at once or none: two batches each holding part of what it needs would wait forever.
    // A batch whose deadline passes or whose signal aborts while it waits sends nothing; each
    // request fails the way it would have in flight.
    const waitForSlots = this.slots.acquire(count, deadline, signal);
    if (waitForSlots !== undefined) {
      const granted = await waitForSlots.catch((reason: unknown) => reason as Error);
      if (granted !== true) return results.fill(granted === false ? this.timeoutError(spec, vcpu, timeoutMs) : granted);
    }
    // Each command's slot passes to the pending table with it (see commandBySpec).
    let slotsHandedOver = false;
    try {
      if (this.closeError !== undefined) this.assertOpen(this.contextOf(spec, vcpu));
      const seqs = new Array<number>(count);
      for (let i = 0; i < count; i++) seqs[i] = this.pending.allocateSeq();
      // The whole burst encoded into one buffer: one write, no buffer per command.
      const burst = encodeCommands(this.dialect, spec, seqs, requests as readonly Record<string, unknown>[], vcpu);
      const all = new Promise<void>((resolve) => {
        const batch = new BatchResults(results, resolve);
        for (let i = 0; i < count; i++) this.pending.add(seqs[i]!, new BatchedCommand(spec, vcpu, deadline, timeoutMs, batch, i));
      });
      slotsHandedOver = true;
      if (signal !== undefined) for (const seq of seqs) this.pending.watch(signal, seq);
      try {
        await this.waitForTurn(spec, vcpu).then(
          () => this.send(this.stillWaited(spec, vcpu, seqs, requests as readonly Record<string, unknown>[], burst)),
          (err: unknown) => {
            for (const seq of seqs) this.pending.abandon(seq, err as Error);
          },
        );
        await all;
      } finally {
        if (signal !== undefined) for (const seq of seqs) this.pending.unwatch(signal, seq);
      }
      return results;
    } finally {
      if (!slotsHandedOver) this.slots.release(count);
    }
  }

  /**
   * Answers an event (kvmi-abi §3.4). Writes are ordered with commands on the same socket.
   *
   * Unless writes wait for `drain`, the reply is written before this returns, in the caller's turn:
   * a reply given while the event is being handled (an event filter's rule) then leaves at the end
   * of that tick, ahead of anything the caller schedules afterwards (the notification of a `notify`
   * rule). Behind a `drain` it waits its turn like any write.
   * @throws KvmiTransportError when the socket is gone (the kernel then continues the vCPU itself).
   */
  async replyEvent(event: Pick<KvmiEvent, "seq" | "vcpu" | "spec">, action: number, replyData?: Record<string, unknown>): Promise<void> {
    if (this.closeError !== undefined) this.assertOpen(this.contextOf(event.spec, event.vcpu));
    const message = encodeEventReply(this.dialect, event.spec, event.seq, event.vcpu, action, replyData);
    if (this.drained === undefined) return this.send(message);
    await this.write(message, event.spec, event.vcpu);
  }

  // ---------------------------------------------------------------------------------------------

  /**
   * The channel pairs every command with its reply, so it refuses to turn replies off (kvmi-v7
   * CONTROL_CMD_RESPONSE with `enable = 0`): the next replies would never come and their callers
   * would wait out their deadlines. Turning them back on is harmless and allowed.
   */
  private checkAnswered(spec: CommandSpec, request: Record<string, unknown>): void {
    if (spec.op === this.dialect.replyControlOp && Number(request["enable"]) === 0) {
      throw new KvmiArgumentError("enable", `${spec.name} with enable = 0 would leave the channel's commands unanswered`, this.contextOf(spec, undefined));
    }
  }


  /**
   * The burst of `seqs` reduced to the commands whose callers still wait; the others were given up
   * before being written and are forgotten (no reply will come for them). Usually all still wait
   * and the burst is written as encoded.
   */
  private stillWaited(
    spec: CommandSpec,
    vcpu: number | undefined,
    seqs: readonly number[],
    requests: readonly Record<string, unknown>[],
    burst: Uint8Array,
  ): Uint8Array {
    const keptSeqs: number[] = [];
    const keptRequests: Record<string, unknown>[] = [];
    for (let i = 0; i < seqs.length; i++) {
      if (this.pending.isWaited(seqs[i]!)) {
        keptSeqs.push(seqs[i]!);
        keptRequests.push(requests[i]!);
      } else this.pending.forgetUnsent(seqs[i]!);
    }
    if (keptSeqs.length === seqs.length) return burst;
    return encodeCommands(this.dialect, spec, keptSeqs, keptRequests, vcpu);
  }

  private onMessage(hdr: MsgHdr, body: Uint8Array): void {
    if (isEventReplyError(this.dialect, hdr)) {
      this.log.warn({ seq: hdr.seq, errno: -readReplyError(this.dialect, body) }, "the kernel rejected an event reply");
      return;
    }
    if (isEventMessage(this.dialect, hdr)) return this.onEvent(hdr, body);
    const entry = this.pending.get(hdr.seq);
    if (entry === undefined) {
      // The reply to a command whose caller gave up: dropped, its slot is free again.
      const givenUpId = this.pending.takeGivenUp(hdr.seq);
      if (givenUpId === hdr.id) return;
      if (givenUpId === undefined) this.close(`reply seq ${hdr.seq} (id ${hdr.id}) matches no command`, new KvmiProtocolError("unexpected seq"));
      else this.close(`reply seq ${hdr.seq} has id ${hdr.id}, expected ${givenUpId}`, new KvmiProtocolError("unexpected id"));
      return;
    }
    if (entry.id !== hdr.id) {
      this.close(`reply seq ${hdr.seq} has id ${hdr.id}, expected ${entry.id}`, new KvmiProtocolError("unexpected id"));
      return;
    }
    this.pending.take(hdr.seq);
    try {
      const reply = decodeReply(this.dialect, entry.spec, body);
      if (reply.err !== 0) entry.reject(new KvmiRemoteError(-reply.err, this.contextOf(entry.spec, entry.vcpu)));
      else entry.resolve(reply.value ?? {});
    } catch (err) {
      entry.reject(err as Error);
      this.close(`malformed ${entry.spec.name} reply`, err);
    }
  }

  private onEvent(hdr: MsgHdr, body: Uint8Array): void {
    let decoded;
    try {
      decoded = decodeEvent(this.dialect, body, hdr.id);
    } catch (err) {
      this.close(`malformed event: ${(err as Error).message}`, err);
      return;
    }
    if (decoded.spec === undefined) {
      this.close(`unknown event id ${decoded.eventId}`, new KvmiProtocolError("unknown event"));
      return;
    }
    const event: KvmiEvent = {
      seq: hdr.seq,
      vcpu: decoded.vcpu,
      kind: decoded.spec.kind,
      spec: decoded.spec,
      arch: decoded.arch,
      payload: decoded.payload,
      receivedAt: process.hrtime.bigint(),
      receivedAtMs: Date.now(),
    };
    if (!this.sink(event) && !this.eventsPaused) {
      this.eventsPaused = true;
      this.socket.pause();
    }
  }
}

/** Wraps a hooked socket (after the handshake) in a channel speaking `options.dialect`. */
export function createKvmiChannel(socket: Socket, options: KvmiChannelOptions): KvmiChannel {
  return new KvmiChannel(socket, options);
}
