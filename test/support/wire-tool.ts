// SPDX-License-Identifier: Apache-2.0
/**
 * A minimal KVMI tool built only from the wire codec, the way the v9 selftest drives the kernel
 * (kvmi-abi §8): it sends commands, matches replies by seq, queues events and answers them. It is
 * deliberately not the bridge, so conformance tests check the emulator against the codec alone.
 *
 * Everything the tool waits for is bounded: pending commands and event waiters reject when the
 * socket closes or a timeout passes, so a misbehaving emulator fails a test instead of hanging it.
 */
import { once } from "node:events";
import { mkdtempSync } from "node:fs";
import { connect, createServer } from "node:net";
import type { Server, Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  createFramer,
  decodeEvent,
  decodeReply,
  encodeCommand,
  encodeEventReply,
  HEADER_BYTES,
  isEventReplyError,
  layouts,
  readMsgHdr,
  v9,
  V9_COMMANDS,
  V9_EVENTS,
  viewOf,
} from "@kvmi/kvm-bridge/wire";
import type { CommandSpec, DecodedEvent, EventSpec, Layout, MsgHdr, V9CommandName, V9EventName } from "@kvmi/kvm-bridge/wire";

type AnyValue = Record<string, unknown>;

/** Default bound of every wait of the tool. */
export const TOOL_TIMEOUT_MS = 5000;

/** A reply as the tool sees it: `err` is the wire value (0 or negative KVM errno). */
export interface ToolReply {
  /** `kvmi_msg_hdr.id` of the reply (the kernel echoes the request's id). */
  readonly id: number;
  readonly seq: number;
  readonly err: number;
  readonly value: AnyValue | undefined;
  /** `kvmi_msg_hdr.size`: 8 on error, 8 + reply data on success. */
  readonly size: number;
}

/** An event with its seq. */
export interface ToolEvent extends DecodedEvent {
  readonly seq: number;
  /** `kvmi_msg_hdr.size`: 544 + payload. */
  readonly size: number;
}

/** A socket pair over a real UNIX socket: `kernelEnd` goes to HOOK, `tool` drives it. */
export interface WireToolPair {
  readonly kernelEnd: Socket;
  readonly tool: WireTool;
  close(): Promise<void>;
}

/** Creates a connected pair of sockets, like the selftest's `socketpair(AF_UNIX, SOCK_STREAM)`. */
export async function createWireToolPair(): Promise<WireToolPair> {
  const dir = mkdtempSync(join(tmpdir(), "kvmi-tool-"));
  const path = join(dir, "kvmi.sock");
  const server: Server = createServer();
  server.listen(path);
  await once(server, "listening");
  const accepted = once(server, "connection") as Promise<[Socket]>;
  const kernelEnd = connect({ path });
  kernelEnd.pause();
  await once(kernelEnd, "connect");
  const [toolSocket] = await accepted;
  server.close();
  const tool = new WireTool(toolSocket);
  return {
    kernelEnd,
    tool,
    close: async () => {
      toolSocket.destroy();
      kernelEnd.destroy();
    },
  };
}

/** Rejects after `timeoutMs` unless `promise` settles first. */
export function within<T>(promise: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${timeoutMs} ms`)), timeoutMs);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Polls `condition` every few ms until it holds; rejects after `timeoutMs`. */
export async function waitUntil(condition: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`${what}: not true within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/**
 * Returns `message` with one byte of a padding field set to `value`. The offset comes from the
 * layout table (`layout.fields[field].offset + byte`), relative to `base`, the start of the
 * struct inside the message (conventions §11: no magic offsets).
 */
export function pokePadding(message: Uint8Array, layout: Layout, field: string, base: number, byte = 0, value = 1): Uint8Array {
  const f = layout.fields[field];
  if (f?.kind !== "pad") throw new Error(`${layout.name}.${field} is not a padding field`);
  if (byte >= f.length) throw new Error(`${layout.name}.${field} has ${f.length} bytes`);
  const out = message.slice();
  out[base + f.offset + byte] = value;
  return out;
}

/** Returns `message` with the scalar field `field` of `layout` (at `base`) overwritten. */
export function pokeField(message: Uint8Array, layout: Layout, field: string, base: number, value: number): Uint8Array {
  const f = layout.fields[field];
  if (f?.kind !== "scalar") throw new Error(`${layout.name}.${field} is not a scalar field`);
  const out = message.slice();
  const view = viewOf(out);
  const at = base + f.offset;
  switch (f.type) {
    case "u8":
      view.setUint8(at, value);
      break;
    case "u16":
      view.setUint16(at, value, true);
      break;
    case "u32":
      view.setUint32(at, value, true);
      break;
    case "s32":
      view.setInt32(at, value, true);
      break;
    default:
      view.setBigUint64(at, BigInt(value), true);
  }
  return out;
}

/** Offset of a command's body (after `kvmi_msg_hdr` and, for vCPU commands, `kvmi_vcpu_hdr`). */
export function bodyOffset(spec: Pick<CommandSpec, "scope">): number {
  return HEADER_BYTES + (spec.scope === "vcpu" ? layouts.kvmiVcpuHdr.size : 0);
}

interface Pending {
  readonly spec: Pick<CommandSpec, "reply">;
  readonly resolve: (r: ToolReply) => void;
  readonly reject: (err: Error) => void;
}

/** The tool side. */
export class WireTool {
  private seq = 1000;
  private readonly pending = new Map<number, Pending>();
  private readonly events: ToolEvent[] = [];
  private eventWaiters: Array<{ resolve: (e: ToolEvent) => void; reject: (err: Error) => void }> = [];
  private isClosed = false;
  /** Error replies to event replies (`id == 0 && size == 8`, kvmi-abi §3.1). */
  readonly eventReplyErrors: Array<{ seq: number; err: number }> = [];
  /** Messages that matched no pending command (a conformance failure if ever non-empty). */
  readonly unexpected: MsgHdr[] = [];
  /** Every message header received, in order. */
  readonly received: MsgHdr[] = [];
  readonly closed: Promise<void>;

  constructor(readonly socket: Socket) {
    const framer = createFramer(v9);
    socket.on("data", (chunk: Buffer) => framer.push(chunk, (hdr, body) => this.onMessage(hdr, body)));
    this.closed = new Promise((resolve) =>
      socket.once("close", () => {
        this.isClosed = true;
        const gone = new Error("the kernel closed the socket");
        for (const entry of this.pending.values()) entry.reject(gone);
        this.pending.clear();
        for (const waiter of this.eventWaiters) waiter.reject(gone);
        this.eventWaiters = [];
        resolve();
      }),
    );
    socket.on("error", () => undefined);
  }

  /** True once the socket closed (either side). */
  get isSocketClosed(): boolean {
    return this.isClosed;
  }

  private onMessage(hdr: MsgHdr, body: Uint8Array): void {
    this.received.push(hdr);
    if (isEventReplyError(v9, hdr)) {
      this.eventReplyErrors.push({ seq: hdr.seq, err: viewOf(body).getInt32(0, true) });
      return;
    }
    if (hdr.id === v9.eventFraming.vcpuEventMessageId) {
      const event: ToolEvent = { ...decodeEvent(v9, body), seq: hdr.seq, size: hdr.size };
      const waiter = this.eventWaiters.shift();
      if (waiter !== undefined) waiter.resolve(event);
      else this.events.push(event);
      return;
    }
    const entry = this.pending.get(hdr.seq);
    if (entry === undefined) {
      this.unexpected.push(hdr);
      return;
    }
    this.pending.delete(hdr.seq);
    const decoded = decodeReply(v9, entry.spec, body);
    entry.resolve({ id: hdr.id, seq: hdr.seq, err: decoded.err, value: decoded.value, size: hdr.size });
  }

  /** Encodes a command with the codec (seq from {@link nextSeq}). */
  encode(name: V9CommandName, body: AnyValue = {}, vcpu?: number): Uint8Array {
    return encodeCommand(v9, V9_COMMANDS[name], this.nextSeq(), body, vcpu);
  }

  /** Sends a command built with the codec and resolves with its reply. */
  command(name: V9CommandName, body: AnyValue = {}, vcpu?: number, timeoutMs = TOOL_TIMEOUT_MS): Promise<ToolReply> {
    return this.raw(this.encode(name, body, vcpu), V9_COMMANDS[name], timeoutMs);
  }

  /** Sends a message whose seq is at bytes 4..7 and resolves with the reply to that seq. */
  raw(
    bytes: Uint8Array,
    spec: Pick<CommandSpec, "reply"> = { reply: { layout: null } },
    timeoutMs = TOOL_TIMEOUT_MS,
  ): Promise<ToolReply> {
    const { seq } = readMsgHdr(bytes);
    if (this.isClosed) return Promise.reject(new Error("the socket is closed"));
    const reply = new Promise<ToolReply>((resolve, reject) => this.pending.set(seq, { spec, resolve, reject }));
    this.socket.write(bytes);
    return within(reply, timeoutMs, `reply to seq ${seq}`).finally(() => this.pending.delete(seq));
  }

  /** Writes bytes that expect no reply (event replies, malformed messages). */
  send(bytes: Uint8Array): void {
    this.socket.write(bytes);
  }

  /** Allocates a seq for hand-built messages. */
  nextSeq(): number {
    return ++this.seq;
  }

  /** Resolves with the next event (already queued or future); rejects after `timeoutMs` or on close. */
  nextEvent(timeoutMs = TOOL_TIMEOUT_MS): Promise<ToolEvent> {
    const queued = this.events.shift();
    if (queued !== undefined) return Promise.resolve(queued);
    if (this.isClosed) return Promise.reject(new Error("the socket is closed"));
    return new Promise((resolve, reject) => {
      const waiter = {
        resolve: (e: ToolEvent) => {
          clearTimeout(timer);
          resolve(e);
        },
        reject: (err: Error) => {
          clearTimeout(timer);
          reject(err);
        },
      };
      const timer = setTimeout(() => {
        this.eventWaiters = this.eventWaiters.filter((w) => w !== waiter);
        reject(new Error(`no event within ${timeoutMs} ms`));
      }, timeoutMs);
      this.eventWaiters.push(waiter);
    });
  }

  /** Resolves true when no event arrived during `ms` (the event, if any, stays queued). */
  async noEventFor(ms: number): Promise<boolean> {
    await new Promise((resolve) => setTimeout(resolve, ms));
    return this.events.length === 0;
  }

  /** Number of events received and not yet consumed. */
  get queuedEvents(): number {
    return this.events.length;
  }

  /** Encodes a reply to `event` (`action` 0 CONTINUE, 1 RETRY, 2 CRASH), with reply data for CR/MSR. */
  encodeReply(event: Pick<ToolEvent, "spec" | "seq" | "vcpu">, action: number, replyData?: AnyValue): Uint8Array {
    const spec = event.spec ?? (V9_EVENTS as Record<string, EventSpec>)["KVMI_EVENT_PAUSE_VCPU"]!;
    return encodeEventReply(v9, spec, event.seq, event.vcpu, action, replyData);
  }

  /** Answers an event (`action` 0 CONTINUE, 1 RETRY, 2 CRASH), with reply data for CR/MSR. */
  reply(event: Pick<ToolEvent, "spec" | "seq" | "vcpu">, action: number, replyData?: AnyValue): void {
    this.socket.write(this.encodeReply(event, action, replyData));
  }

  /** The event spec by name, for hand-built replies. */
  static eventSpec(name: V9EventName): EventSpec {
    return V9_EVENTS[name];
  }
}
