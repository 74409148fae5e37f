// SPDX-License-Identifier: Apache-2.0
/**
 * One tool connection of kvmi-relay, once attached and handshaken (relay.ts sets it up): the tool's
 * KVMI messages in (commands, the kvmi-v7 reply switch, event replies), the Session's items out
 * (events, the unhook notice), re-attaching after a lost session, and the end. Separate from
 * relay.ts so the protocol translation reads on its own, apart from the setup that precedes it.
 */
import type net from "node:net";
import type { Session, SessionItem, VcpuEvent } from "@kvmi/clients";
import {
  commandById,
  createFramer,
  decodeCommand,
  decodeEventReply,
  decodeEventReplyData,
  encodeEvent,
  encodeReply,
  errno,
  eventByKind,
} from "@kvmi/kvm-bridge/codec";
import type { CommandSpec, Dialect, EventSpec, MsgHdr } from "@kvmi/kvm-bridge/codec";
import { runCommand } from "./kernel.js";
import type { KernelContext, KernelResult } from "./kernel.js";
import { KIND_BY_TYPE, payloadOf, ZERO_ARCH } from "./event-wire.js";
import type { RelayEnd, RelayLogger, RelayOptions, RelayResult } from "./relay-options.js";
import { eventArchToWire } from "./wire-state.js";

/**
 * Tool commands in flight before the relay stops reading the tool's socket: a tool that pipelines
 * without bound cannot make the relay's memory grow (the bridge bounds its own queue the same way).
 */
export const MAX_OUTSTANDING_COMMANDS = 256;

/** Interception state the tool turned on; replayed on a new session after a bridge restart. */
type Replay = (session: Session) => Promise<unknown>;

/** Relays one tool connection until it ends; {@link run} resolves with why. */
export class RelayConnection {
  private session: Session | undefined;
  /** Resolves with the session once attached again (reconnect), or undefined when given up. */
  private sessionReady: Promise<Session | undefined>;
  private readonly dialect: Dialect;
  private remoteSinglestep = false;
  /** Events waiting for the tool's reply, by the seq the relay gave them. */
  private readonly pending = new Map<number, { event: VcpuEvent; spec: EventSpec }>();
  private nextEventSeq = 1;
  private repliesOn = true;
  /** Commands run while replies were off; the reply that turns them on waits for these. */
  private suppressed: Promise<unknown>[] = [];
  private unhookEnabled = false;
  private outstanding = 0;
  private readPaused = false;
  private readonly replays = new Map<string, Replay>();
  private finished = false;
  private finish!: (result: RelayResult) => void;
  private readonly result = new Promise<RelayResult>((resolve) => (this.finish = resolve));

  constructor(
    private readonly options: RelayOptions,
    private readonly log: RelayLogger,
    private readonly socket: net.Socket,
    session: Session,
    private readonly attach: () => Promise<Session>,
  ) {
    this.dialect = options.dialect;
    this.session = session;
    this.sessionReady = Promise.resolve(session);
  }

  async run(): Promise<RelayResult> {
    const session = this.session!;
    this.remoteSinglestep = (await session.getVersion().catch(() => ({ singlestep: false }))).singlestep;
    const framer = createFramer(this.dialect);
    this.socket.on("data", (chunk: Buffer) => {
      try {
        framer.push(chunk, (hdr, body) => this.onMessage(hdr, body));
      } catch (error) {
        this.protocolError(`malformed stream from the tool: ${(error as Error).message}`);
      }
    });
    this.socket.once("close", () => void this.end("tool-closed", "the tool closed its socket"));
    this.socket.on("error", (error) => this.log.warn("tool socket error", { error: error.message }));
    this.options.signal?.addEventListener("abort", () => void this.end("aborted", "stopped"), { once: true });
    this.socket.resume();
    void this.pumpEvents(session);
    return this.result;
  }

  // -------------------------------------------------------------------------------------------
  // Tool -> relay

  private onMessage(hdr: MsgHdr, body: Uint8Array): void {
    if (this.finished) return;
    if (hdr.id === this.dialect.eventFraming.replyMessageId) {
      this.onEventReply(hdr, body);
      return;
    }
    const spec = commandById(this.dialect, hdr.id);
    if (spec === undefined) {
      // An id the kernel does not know: -KVM_ENOSYS, the stream goes on (docs/protocol/).
      this.send(encodeReply(this.dialect, { id: hdr.id, reply: { layout: null } }, hdr.seq, -errno.KVM_ENOSYS));
      return;
    }
    let decoded;
    try {
      decoded = decodeCommand(this.dialect, spec, body);
    } catch (error) {
      this.protocolError(`${spec.name}: ${(error as Error).message}`);
      return;
    }
    if (decoded.nonZeroPadding !== undefined || decoded.vcpuHdrPadding) {
      this.reply(spec, hdr.seq, this.repliesOn, Promise.resolve({ err: -errno.KVM_EINVAL }));
      return;
    }
    const body_ = decoded.value as Record<string, unknown>;
    if (spec.op === this.dialect.replyControlOp) {
      this.onReplySwitch(spec, hdr.seq, body_);
      return;
    }
    const answer = this.repliesOn;
    const outcome = this.execute(spec, body_, decoded.vcpu ?? 0);
    if (!answer) this.suppressed.push(outcome);
    this.reply(spec, hdr.seq, answer, outcome);
  }

  /** kvmi-v7 CONTROL_CMD_RESPONSE `{enable, now}` (docs/protocol/kvmi-v7.md, "Reply suppression"). */
  private onReplySwitch(spec: CommandSpec, seq: number, body: Record<string, unknown>): void {
    const enable = body["enable"] as number;
    const now = body["now"] as number;
    if (enable > 1 || now > 1) {
      this.reply(spec, seq, this.repliesOn, Promise.resolve({ err: -errno.KVM_EINVAL }));
      return;
    }
    const answer = now === 1 ? enable === 1 : this.repliesOn;
    this.repliesOn = enable === 1;
    const before = this.suppressed;
    if (this.repliesOn) this.suppressed = [];
    this.reply(spec, seq, answer, Promise.allSettled(before).then(() => ({ err: 0, value: {} })));
  }

  private async execute(spec: CommandSpec, body: Record<string, unknown>, vcpu: number): Promise<KernelResult> {
    const session = this.session ?? (await this.sessionReady);
    if (session === undefined) return { err: -errno.KVM_EAGAIN };
    const ctx: KernelContext = { session, dialect: this.dialect, remoteSinglestep: this.remoteSinglestep };
    const result = await runCommand(ctx, spec.op, body, vcpu);
    if (result.err === 0) this.remember(spec, body, vcpu);
    return result;
  }

  /** Records what a bridge restart would lose so a new session can turn it back on. */
  private remember(spec: CommandSpec, body: Record<string, unknown>, vcpu: number): void {
    const enable = body["enable"] === 1;
    let key: string | undefined;
    let replay: Replay | undefined;
    switch (spec.op) {
      case "CONTROL_VM_EVENTS":
        this.unhookEnabled = enable;
        key = "vm-events";
        replay = (s) => s.controlVmEvents("unhook", true);
        break;
      case "CONTROL_VCPU_EVENTS":
      case "CONTROL_CR":
      case "CONTROL_MSR": {
        key = `${spec.op}/${vcpu}/${String(body["event_id"] ?? body["cr"] ?? body["msr"])}`;
        replay = async (session) => {
          const result = await runCommand({ session, dialect: this.dialect, remoteSinglestep: this.remoteSinglestep }, spec.op, body, vcpu);
          if (result.err !== 0) throw new Error(`${spec.name} failed with ${result.err}`);
        };
        break;
      }
      default:
        return;
    }
    if (enable) this.replays.set(key, replay);
    else this.replays.delete(key);
  }

  private reply(spec: CommandSpec, seq: number, answer: boolean, outcome: Promise<KernelResult>): void {
    if (++this.outstanding >= MAX_OUTSTANDING_COMMANDS && !this.readPaused) {
      this.readPaused = true;
      this.socket.pause();
    }
    void outcome.then((result) => {
      if (--this.outstanding <= MAX_OUTSTANDING_COMMANDS / 2 && this.readPaused) {
        this.readPaused = false;
        this.socket.resume();
      }
      if (this.finished) return;
      if (!answer) {
        if (result.err !== 0) this.log.info("command failed while replies are off", { command: spec.name, err: result.err });
        return;
      }
      try {
        this.send(encodeReply(this.dialect, spec, seq, result.err, "value" in result ? result.value : undefined));
      } catch (error) {
        // The remote reply does not fit the tool's dialect (e.g. a larger XSAVE area): EINVAL, as
        // the kernel answers a request whose reply would not fit.
        this.log.warn("reply does not fit the tool's dialect", { command: spec.name, error: (error as Error).message });
        this.send(encodeReply(this.dialect, spec, seq, -errno.KVM_EINVAL));
      }
    });
  }

  private onEventReply(hdr: MsgHdr, body: Uint8Array): void {
    const reply = decodeEventReply(this.dialect, body);
    if (reply.replyPadding || reply.vcpuHdrPadding) {
      this.protocolError(`event reply seq ${hdr.seq} has non-zero padding`);
      return;
    }
    const entry = this.pending.get(hdr.seq);
    if (entry === undefined) {
      // The bridge's deadline answered it, or it belonged to a session lost since.
      this.log.info("event reply for no pending event ignored", { seq: hdr.seq });
      return;
    }
    const { event, spec } = entry;
    if (reply.event !== spec.id || reply.vcpu !== event.vcpu) {
      this.protocolError(`event reply seq ${hdr.seq} names event ${reply.event} vCPU ${reply.vcpu}, pending is ${spec.id} vCPU ${event.vcpu}`);
      return;
    }
    let data: Record<string, unknown> | undefined;
    try {
      data = decodeEventReplyData(spec, reply.data);
    } catch (error) {
      this.protocolError((error as Error).message);
      return;
    }
    this.pending.delete(hdr.seq);
    const sent = this.answerEvent(event, spec, reply.action, data);
    if (sent === undefined) {
      this.protocolError(`event reply seq ${hdr.seq}: action ${reply.action} is not valid for ${spec.name}`);
      return;
    }
    sent.catch((error: Error) => this.log.warn("event reply not delivered", { seq: hdr.seq, error: error.message }));
  }

  /** The tool's action as an EventReply; undefined when the event does not accept it (kvmi-abi §3.5). */
  private answerEvent(event: VcpuEvent, spec: EventSpec, action: number, data: Record<string, unknown> | undefined): Promise<void> | undefined {
    const name = ["CONTINUE", "RETRY", "CRASH"][action];
    if (name === undefined || !spec.actions.includes(name as "CONTINUE")) return undefined;
    if (name === "CRASH") return event.crash();
    if (name === "RETRY") return "retry" in event ? event.retry() : undefined;
    // CR and MSR carry the value the register receives; PF reply data (kvmi-v7) has no kvmi.v1 field.
    if ((event.type === "cr" || event.type === "msr") && data?.["new_val"] !== undefined) {
      return event.continue({ newVal: data["new_val"] as bigint });
    }
    return event.continue();
  }

  // -------------------------------------------------------------------------------------------
  // Bridge -> tool

  private async pumpEvents(session: Session): Promise<void> {
    try {
      for await (const item of session.events()) {
        if (this.finished) return;
        this.onItem(item);
      }
    } catch {
      // The session's end is reported through `session.done`.
    }
    if (this.finished) return;
    const error = await session.done;
    await this.sessionLost(error?.message ?? "the session was released");
  }

  private onItem(item: SessionItem): void {
    switch (item.kind) {
      case "event": {
        const spec = eventByKind(this.dialect, KIND_BY_TYPE[item.type]);
        if (spec === undefined) {
          // The tool's dialect has no such event: let the vCPU go rather than leave it waiting.
          void item.continue().catch(() => undefined);
          return;
        }
        const seq = this.nextEventSeq++;
        if (this.session?.role === "controller") {
          // A vCPU waits for one event at a time (kvmi-abi lifecycle in docs/protocol/): a newer event
          // of the same vCPU means the bridge's deadline answered the older one, so it goes.
          for (const [old, entry] of this.pending) if (entry.event.vcpu === item.vcpu) this.pending.delete(old);
          this.pending.set(seq, { event: item, spec });
        }
        this.send(encodeEvent(this.dialect, spec, seq, item.vcpu, eventArchToWire(item.arch), payloadOf(item)));
        return;
      }
      case "unhook": {
        this.log.info("the bridge is unhooking the VM", { reason: item.reason });
        const spec = eventByKind(this.dialect, "UNHOOK");
        if (spec !== undefined && this.unhookEnabled) {
          this.send(encodeEvent(this.dialect, spec, this.nextEventSeq++, 0, eventArchToWire(ZERO_ARCH), undefined));
        }
        return;
      }
      case "replyRejected":
        this.log.warn("the bridge rejected an event reply", { vcpu: item.vcpu, error: item.error.message });
        return;
      case "vmChange":
        return;
    }
  }

  private async sessionLost(reason: string): Promise<void> {
    this.session = undefined;
    this.pending.clear();
    if (this.options.reconnect !== true) {
      await this.end("session-ended", reason);
      return;
    }
    this.log.warn("session lost; re-attaching", { reason });
    let ready!: (s: Session | undefined) => void;
    this.sessionReady = new Promise((resolve) => (ready = resolve));
    const giveUpAt = Date.now() + (this.options.reconnectWindowMs ?? 60_000);
    let delay = 100;
    while (!this.finished && Date.now() < giveUpAt) {
      try {
        const session = await this.attach();
        for (const replay of this.replays.values()) {
          await replay(session).catch((error: Error) => this.log.warn("could not turn the tool's interception back on", { error: error.message }));
        }
        this.session = session;
        ready(session);
        this.log.info("re-attached", { sessionId: session.sessionId });
        void this.pumpEvents(session);
        return;
      } catch {
        await new Promise((resolve) => setTimeout(resolve, delay));
        delay = Math.min(delay * 2, 2000);
      }
    }
    ready(undefined);
    await this.end("session-ended", `could not re-attach: ${reason}`);
  }

  // -------------------------------------------------------------------------------------------
  // Lifecycle

  private send(message: Uint8Array): void {
    if (!this.finished && !this.socket.destroyed) this.socket.write(message);
  }

  private protocolError(reason: string): void {
    this.log.warn("closing the tool's socket", { reason });
    void this.end("protocol-error", reason);
  }

  private async end(end: RelayEnd, reason: string): Promise<void> {
    if (this.finished) return;
    this.finished = true;
    this.socket.destroy();
    const session = this.session;
    this.session = undefined;
    // Whatever ends the relay, the VM is released: the bridge undoes what the tool changed.
    if (session !== undefined && !session.closed) await session.release().catch(() => undefined);
    this.log.info("relay ended", { end, reason });
    this.finish({ end, reason });
  }
}
