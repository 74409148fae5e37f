// SPDX-License-Identifier: Apache-2.0
/**
 * A KVMI tool that behaves on the wire as libkvmi does (docs/protocol/kvmi-v7.md, "How libkvmi
 * behaves"), built only from the codec so that it checks kernels (the emulator, the relay) and not
 * our own node side:
 * - it listens on a UNIX socket and QEMU connects; the handshake is answered with 24 bytes;
 * - it sends GET_VERSION by itself right after the handshake, at the next seq of one process-wide
 *   counter, and drops the connection on an error or a version below 1;
 * - one command at a time: a reply must carry the request's id and seq, else the stream is out of
 *   step and the tool gives up (libkvmi's ENOMSG); events that arrive meanwhile are queued;
 * - every message leaves in one write; GET_REGISTERS replies must be exactly 472 + 16·nmsrs bytes;
 * - `pauseAll(n)` sends libkvmi's batch: CONTROL_CMD_RESPONSE{0,1}, PAUSE_VCPU × n,
 *   CONTROL_CMD_RESPONSE{1,1} in one write, and expects one reply, to the last.
 * Every wait is bounded, so a misbehaving kernel fails a test instead of hanging it.
 */
import { once } from "node:events";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import type { Server, Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  createFramer,
  decodeEvent,
  decodeReply,
  encodeCommand,
  encodeEventReply,
  encodeHandshakeReply,
  isEventMessage,
  parseHandshake,
  readReplyError,
  requireCommand,
  requireEvent,
  EVENT_ACTION_VALUES,
} from "@kvmi/kvm-bridge/codec";
import type { CommandOp, DecodedEvent, Dialect, EventActionName, EventKind, MsgHdr, VmIdentity } from "@kvmi/kvm-bridge/codec";

type AnyValue = Record<string, unknown>;

/** Bound of every wait (libkvmi waits 15 s; tests want to fail sooner). */
export const LIBKVMI_TOOL_TIMEOUT_MS = 5000;

/** libkvmi's sequence numbers: one counter for the whole process, shared by every connection. */
let processSeq = 0;
const nextSeq = (): number => (processSeq = (processSeq + 1) >>> 0 || 1);

/** An error reply, with the command and the wire errno (negative KVM_E*). */
export class ToolCommandError extends Error {
  constructor(
    readonly op: CommandOp,
    readonly err: number,
  ) {
    super(`${op} failed with ${err}`);
  }
}

/** An event as the tool queues it. */
export interface QueuedEvent extends DecodedEvent {
  readonly seq: number;
  readonly kind: EventKind | undefined;
}

interface Waiter {
  readonly id: number;
  readonly seq: number;
  readonly resolve: (body: Uint8Array) => void;
  readonly reject: (err: Error) => void;
}

/** One VM connected to the tool. */
export class LibkvmiConnection {
  /** What QEMU said in the handshake. */
  identity!: VmIdentity;
  /** The automatic GET_VERSION's answer. */
  version!: AnyValue;
  private readonly events: QueuedEvent[] = [];
  private eventWaiters: Array<(e: QueuedEvent | undefined) => void> = [];
  private waiter: Waiter | undefined;
  private closedReason: string | undefined;
  /** Protocol problems the tool saw (a reply out of step, a bad size): what libkvmi would report. */
  readonly problems: string[] = [];

  constructor(
    readonly dialect: Dialect,
    readonly socket: Socket,
  ) {}

  /** Handshake and the automatic GET_VERSION, as libkvmi's accept thread does them. */
  async start(secret: Uint8Array | undefined): Promise<void> {
    const { socket } = this;
    const head = await this.readExactly(4);
    const structSize = new DataView(head.buffer, head.byteOffset).getUint32(0, true);
    const rest = await this.readExactly(structSize - 4);
    const all = new Uint8Array(structSize);
    all.set(head, 0);
    all.set(rest, 4);
    this.identity = parseHandshake(all);
    socket.write(encodeHandshakeReply(secret));
    const framer = createFramer(this.dialect);
    socket.on("data", (chunk: Buffer) => {
      try {
        framer.push(chunk, (hdr, body) => this.onMessage(hdr, body));
      } catch (err) {
        this.close(`malformed stream: ${(err as Error).message}`);
      }
    });
    socket.once("close", () => this.close("the kernel closed the socket"));
    socket.resume();
    this.version = await this.command("GET_VERSION", {});
    if ((this.version["version"] as number) < 1) {
      this.close("GET_VERSION reported a version below 1");
      throw new Error("GET_VERSION reported a version below 1");
    }
  }

  private readExactly(bytes: number): Promise<Uint8Array> {
    const socket = this.socket;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`handshake: ${bytes} bytes did not arrive`)), LIBKVMI_TOOL_TIMEOUT_MS);
      const attempt = (): void => {
        const chunk = socket.read(bytes) as Buffer | null;
        if (chunk === null) return;
        clearTimeout(timer);
        socket.off("readable", attempt);
        resolve(new Uint8Array(chunk));
      };
      socket.on("readable", attempt);
      attempt();
    });
  }

  private onMessage(hdr: MsgHdr, body: Uint8Array): void {
    if (isEventMessage(this.dialect, hdr) && !(this.waiter !== undefined && hdr.id === this.waiter.id && hdr.seq === this.waiter.seq)) {
      const event = decodeEvent(this.dialect, body, hdr.id);
      const queued: QueuedEvent = { ...event, seq: hdr.seq, kind: event.spec?.kind };
      const waiter = this.eventWaiters.shift();
      if (waiter !== undefined) waiter(queued);
      else this.events.push(queued);
      return;
    }
    const waiter = this.waiter;
    if (waiter === undefined || hdr.id !== waiter.id || hdr.seq !== waiter.seq) {
      // libkvmi: "Wrong message" (ENOMSG); the stream is out of step from here on.
      this.problems.push(`unexpected reply id ${hdr.id} seq ${hdr.seq}`);
      this.close(`reply id ${hdr.id} seq ${hdr.seq} does not match the request`);
      return;
    }
    this.waiter = undefined;
    waiter.resolve(body);
  }

  /** Sends one command and waits for its reply; at most one is outstanding, as in libkvmi. */
  async command(op: CommandOp, body: AnyValue, vcpu?: number): Promise<AnyValue> {
    const spec = requireCommand(this.dialect, op);
    const seq = nextSeq();
    const reply = await this.exchange(spec.id, seq, encodeCommand(this.dialect, spec, seq, body, vcpu));
    const err = readReplyError(this.dialect, reply);
    if (err !== 0) throw new ToolCommandError(op, err);
    if (op === "GET_REGISTERS") {
      // libkvmi's size rule: exactly 472 + 16 * nmsrs bytes after the error code, else E2BIG.
      const nmsrs = (body["msrs_idx"] as number[]).length;
      const expected = this.dialect.layouts.errorCode.size + spec.reply.layout!.size + 16 * nmsrs;
      if (reply.length !== expected) {
        this.problems.push(`GET_REGISTERS reply of ${reply.length} bytes, expected ${expected}`);
        throw new ToolCommandError(op, -7);
      }
    }
    const decoded = decodeReply(this.dialect, spec, reply);
    return decoded.value ?? {};
  }

  private exchange(id: number, seq: number, message: Uint8Array): Promise<Uint8Array> {
    if (this.closedReason !== undefined) return Promise.reject(new Error(this.closedReason));
    if (this.waiter !== undefined) return Promise.reject(new Error("libkvmi sends one command at a time"));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        reject(new Error(`no reply to message id ${id} seq ${seq}`));
      }, LIBKVMI_TOOL_TIMEOUT_MS);
      this.waiter = {
        id,
        seq,
        resolve: (body) => {
          clearTimeout(timer);
          resolve(body);
        },
        reject: (err) => {
          clearTimeout(timer);
          reject(err);
        },
      };
      this.socket.write(message);
    });
  }

  /**
   * `kvmi_pause_all_vcpus(count)`: one write holding CONTROL_CMD_RESPONSE{enable 0, now 1},
   * PAUSE_VCPU{wait 1} for vCPUs 0..count-1 and CONTROL_CMD_RESPONSE{enable 1, now 1}; one reply,
   * to the last message.
   */
  async pauseAll(count: number): Promise<void> {
    const control = requireCommand(this.dialect, "CONTROL_CMD_RESPONSE");
    const pause = requireCommand(this.dialect, "PAUSE_VCPU");
    const first = nextSeq();
    const parts = [encodeCommand(this.dialect, control, first, { enable: 0, now: 1 })];
    for (let vcpu = 0; vcpu < count; vcpu++) parts.push(encodeCommand(this.dialect, pause, nextSeq(), { wait: 1 }, vcpu));
    const last = nextSeq();
    parts.push(encodeCommand(this.dialect, control, last, { enable: 1, now: 1 }));
    const reply = await this.exchange(control.id, last, Buffer.concat(parts));
    const err = readReplyError(this.dialect, reply);
    if (err !== 0) throw new ToolCommandError("CONTROL_CMD_RESPONSE", err);
  }

  /** The next event (queued or arriving), or undefined after the timeout or when the socket closed. */
  nextEvent(timeoutMs = LIBKVMI_TOOL_TIMEOUT_MS): Promise<QueuedEvent | undefined> {
    const queued = this.events.shift();
    if (queued !== undefined) return Promise.resolve(queued);
    if (this.closedReason !== undefined) return Promise.resolve(undefined);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.eventWaiters = this.eventWaiters.filter((w) => w !== done);
        resolve(undefined);
      }, timeoutMs);
      const done = (event: QueuedEvent | undefined): void => {
        clearTimeout(timer);
        resolve(event);
      };
      this.eventWaiters.push(done);
    });
  }

  /** The next event of `kind`, answering every other one with CONTINUE (as an event loop would). */
  async nextEventOf(kind: EventKind, timeoutMs = LIBKVMI_TOOL_TIMEOUT_MS): Promise<QueuedEvent> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const left = deadline - Date.now();
      const event = left > 0 ? await this.nextEvent(left) : undefined;
      if (event === undefined) throw new Error(`no ${kind} event within ${timeoutMs} ms (${this.closedReason ?? "socket open"})`);
      if (event.kind === kind) return event;
      if (event.kind !== "UNHOOK") this.reply(event, "CONTINUE");
    }
  }

  /** Answers an event: `hdr{id = the dialect's reply id, seq = event seq}` and its reply data. */
  reply(event: QueuedEvent, action: EventActionName, data?: AnyValue): void {
    const spec = event.spec ?? requireEvent(this.dialect, event.kind!);
    const replyData = spec.replyData === null ? undefined : (data ?? zeroReplyData(spec.replyData.fields));
    this.socket.write(encodeEventReply(this.dialect, spec, event.seq, event.vcpu, EVENT_ACTION_VALUES[action], replyData));
  }

  /** Why the connection ended, or undefined while it is open. */
  get closed(): string | undefined {
    return this.closedReason;
  }

  /** Closes the socket (libkvmi's kvmi_domain_close). */
  close(reason = "closed by the tool"): void {
    if (this.closedReason !== undefined) return;
    this.closedReason = reason;
    this.waiter?.reject(new Error(reason));
    this.waiter = undefined;
    for (const waiter of this.eventWaiters.splice(0)) waiter(undefined);
    this.socket.destroy();
  }
}

/** Zero reply data for an event whose reply the test does not care about (CR/MSR new_val, PF reply). */
function zeroReplyData(fields: Readonly<Record<string, { readonly kind: string }>>): AnyValue {
  const out: AnyValue = {};
  for (const [name, field] of Object.entries(fields)) {
    if (field.kind === "pad") continue;
    out[name] = field.kind === "bytes" ? new Uint8Array(0) : 0n;
  }
  return out;
}

/** The tool: a listening UNIX socket that hands out one {@link LibkvmiConnection} per VM. */
export interface LibkvmiTool {
  readonly path: string;
  /** The next VM that connects and completes the handshake and GET_VERSION. */
  nextConnection(timeoutMs?: number): Promise<LibkvmiConnection>;
  close(): Promise<void>;
}

/** Starts listening like `kvmi_init_unix_socket(path)`. */
export async function startLibkvmiTool(dialect: Dialect, options: { readonly secret?: Uint8Array } = {}): Promise<LibkvmiTool> {
  const dir = mkdtempSync(join(tmpdir(), "libkvmi-tool-"));
  const path = join(dir, "introspector.sock");
  const ready: LibkvmiConnection[] = [];
  const waiting: Array<(c: LibkvmiConnection) => void> = [];
  const connections: LibkvmiConnection[] = [];
  const server: Server = createServer({ pauseOnConnect: true }, (socket) => {
    const connection = new LibkvmiConnection(dialect, socket);
    connections.push(connection);
    connection.start(options.secret).then(
      () => {
        const waiter = waiting.shift();
        if (waiter !== undefined) waiter(connection);
        else ready.push(connection);
      },
      () => connection.close("start failed"),
    );
  });
  server.listen(path);
  await once(server, "listening");
  return {
    path,
    nextConnection: (timeoutMs = 10_000) => {
      const c = ready.shift();
      if (c !== undefined) return Promise.resolve(c);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no VM connected within ${timeoutMs} ms`)), timeoutMs);
        waiting.push((conn) => {
          clearTimeout(timer);
          resolve(conn);
        });
      });
    },
    close: async () => {
      for (const c of connections) c.close();
      server.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
