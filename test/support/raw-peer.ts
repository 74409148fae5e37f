// SPDX-License-Identifier: Apache-2.0
/**
 * The device-manager side of the KVMI socket, raw: {@link RawPeer} sends any bytes, and
 * {@link fakeHook} plays QEMU + kernel just far enough for the bridge to hook the VM; fast-check
 * arbitraries for malformed handshakes and frames.
 */
import { randomUUID } from "node:crypto";
import { connect } from "node:net";
import type { Socket } from "node:net";
import fc from "fast-check";
import {
  commandById,
  createFramer,
  encodeHandshake,
  encodeReply,
  errno,
  HANDSHAKE_REPLY_BYTES,
  HEADER_BYTES,
  zeroValue,
} from "@kvmi/kvm-bridge/wire";
import type { Dialect, HandshakeVariant, MsgHdr } from "@kvmi/kvm-bridge/wire";
import { E2E_DIALECT, waitUntil, withTimeout } from "./bridge-harness.js";

// -------------------------------------------------------------------------------------------------
// The device-manager side of the KVMI socket, raw

/** A raw connection to the bridge's KVMI socket (we are "QEMU"). */
export class RawPeer {
  private chunks: Buffer[] = [];
  private closedAt: number | undefined;
  private destroyedByUs = false;
  private readonly closedPromise: Promise<void>;
  private tap: ((chunk: Buffer) => void) | undefined;

  private constructor(readonly socket: Socket) {
    socket.on("data", (chunk: Buffer) => (this.tap ? this.tap(chunk) : this.chunks.push(chunk)));
    socket.on("error", () => undefined);
    this.closedPromise = new Promise((resolveClose) =>
      socket.once("close", () => {
        this.closedAt = Date.now();
        resolveClose();
      }),
    );
  }

  /** Connects to a UNIX socket path. */
  static async connect(path: string, timeoutMs = 2000): Promise<RawPeer> {
    const socket = connect({ path });
    await withTimeout(
      new Promise<void>((resolveConnect, reject) => {
        socket.once("connect", resolveConnect);
        socket.once("error", reject);
      }),
      timeoutMs,
      `connecting to ${path}`,
    );
    return new RawPeer(socket);
  }

  /** Bytes received so far. */
  get received(): Buffer {
    if (this.chunks.length > 1) this.chunks = [Buffer.concat(this.chunks)];
    return this.chunks[0] ?? Buffer.alloc(0);
  }

  /** Drops the first `n` received bytes. */
  consume(n: number): Buffer {
    const all = this.received;
    this.chunks = [all.subarray(n)];
    return all.subarray(0, n);
  }

  /** Hands what is buffered and every later chunk to `listener` instead of buffering it. */
  stream(listener: (chunk: Buffer) => void): void {
    const buffered = this.consume(this.received.length);
    this.tap = listener;
    if (buffered.length > 0) listener(buffered);
  }

  /** True once the socket is closed (by either side). */
  get isClosed(): boolean {
    return this.closedAt !== undefined;
  }

  /** True when the bridge closed the connection (we had not destroyed it). */
  get closedByBridge(): boolean {
    return this.closedAt !== undefined && !this.destroyedByUs;
  }

  /** Writes bytes (ignored once closed). */
  write(bytes: Uint8Array): void {
    if (!this.socket.destroyed) this.socket.write(bytes);
  }

  /** Waits up to `ms` for the bridge to close; resolves with whether it did. */
  async waitClosed(ms: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.closedPromise, new Promise((r) => (timer = setTimeout(r, ms)))]);
    clearTimeout(timer);
    return this.isClosed;
  }

  /** Waits (bounded) until at least `n` bytes arrived. */
  async waitBytes(n: number, timeoutMs = 2000): Promise<void> {
    await waitUntil(() => this.received.length >= n || this.isClosed, `${n} bytes from the bridge`, { timeoutMs, intervalMs: 2 });
    if (this.received.length < n) throw new Error(`the bridge closed after ${this.received.length} of ${n} bytes`);
  }

  /** Ends the connection from our side. */
  destroy(): void {
    if (!this.isClosed) this.destroyedByUs = true;
    this.socket.destroy();
  }
}

/** QEMU's handshake for a fake VM. */
export function handshakeBytes(uuid: string, variant: HandshakeVariant = "base", name = `fake-${uuid.slice(0, 8)}`): Uint8Array {
  return encodeHandshake({ variant, uuid, name, startTime: BigInt(Math.floor(Date.now() / 1000)), maxGpa: 1n << 32n, e820: [] });
}

/** One KVMI frame: `kvmi_msg_hdr{id, size, seq}` and `body` (size may lie about the body). */
export function frame(id: number, seq: number, body: Uint8Array, size = body.length): Uint8Array {
  const out = new Uint8Array(HEADER_BYTES + body.length);
  const view = new DataView(out.buffer);
  view.setUint16(0, id, true);
  view.setUint16(2, size, true);
  view.setUint32(4, seq, true);
  out.set(body, HEADER_BYTES);
  return out;
}

/** A fake VM the bridge hooked: the raw connection, and the bridge's commands it answered. */
export interface FakeVm {
  readonly uuid: string;
  readonly peer: RawPeer;
  /** Commands the bridge sent, by kernel name, in order. */
  readonly commands: string[];
}

/**
 * Plays QEMU and the KVMI kernel just far enough that the bridge hooks a VM: handshake, then the
 * answers to the bridge's hook-time commands (ops GET_VERSION, GET_VM_INFO, CONTROL_VM_EVENTS). Later
 * commands are answered -KVM_EPERM. Resolves after the hook-time commands were answered.
 */
export async function fakeHook(
  path: string,
  options: {
    uuid?: string;
    vcpus?: number;
    timeoutMs?: number;
    /** Answer the bridge's commands only once this settles. */
    hold?: Promise<unknown>;
    /** The dialect the bridge listens with (default: the e2e project's, `KVMI_E2E_DIALECT`). */
    dialect?: Dialect;
  } = {},
): Promise<FakeVm> {
  const uuid = options.uuid ?? randomUUID();
  const peer = await RawPeer.connect(path);
  const commands: string[] = [];
  try {
    peer.write(handshakeBytes(uuid));
    await peer.waitBytes(HANDSHAKE_REPLY_BYTES, options.timeoutMs ?? 2000);
    peer.consume(HANDSHAKE_REPLY_BYTES);
    // The bridge's hook-time commands, answered by op in the dialect the bridge listens with.
    const dialect = options.dialect ?? E2E_DIALECT;
    const framer = createFramer(dialect);
    const ops: string[] = [];
    const answer = async (hdr: MsgHdr): Promise<void> => {
      await options.hold;
      const spec = commandById(dialect, hdr.id);
      if (spec === undefined) return;
      commands.push(spec.name);
      ops.push(spec.op);
      const reply = spec.reply.layout === null ? {} : (zeroValue(spec.reply.layout) as Record<string, unknown>);
      if (spec.op === "GET_VERSION") {
        const size = "max_msg_size" in reply ? { max_msg_size: dialect.maxMessageBytes } : {};
        peer.write(encodeReply(dialect, spec, hdr.seq, 0, { ...reply, ...size, version: dialect.kvmiVersion }));
      } else if (spec.op === "GET_VM_INFO") {
        peer.write(encodeReply(dialect, spec, hdr.seq, 0, { ...reply, vcpu_count: options.vcpus ?? 1 }));
      } else if (spec.op === "CONTROL_VM_EVENTS") {
        peer.write(encodeReply(dialect, spec, hdr.seq, 0));
      } else {
        peer.write(encodeReply(dialect, spec, hdr.seq, -errno.KVM_EPERM));
      }
    };
    const feed = (chunk: Buffer): void => {
      try {
        framer.push(chunk, (hdr) => void answer(hdr));
      } catch {
        peer.destroy();
      }
    };
    peer.stream(feed);
    await waitUntil(() => ops.includes("CONTROL_VM_EVENTS") || peer.isClosed, "the bridge's hook-time commands", {
      timeoutMs: options.timeoutMs ?? 2000,
      intervalMs: 2,
    });
    if (peer.isClosed) throw new Error(`the bridge closed the fake VM during its hook (commands: ${commands.join(", ")})`);
    return { uuid, peer, commands };
  } catch (err) {
    peer.destroy();
    throw err;
  }
}

// -------------------------------------------------------------------------------------------------
// fast-check arbitraries for the device-manager side

/** KVMI_MSG_SIZE of the dialect under test: the largest body a frame may declare (docs/protocol/). */
export const MAX_FRAME_BODY = E2E_DIALECT.maxMessageBytes;

/** A handshake that is wrong in some way: random bytes, a bad struct_size, or a truncated valid one. */
export const arbitraryBadHandshake: fc.Arbitrary<{ readonly kind: string; readonly bytes: Uint8Array }> = fc.oneof(
  fc.uint8Array({ minLength: 0, maxLength: 160 }).map((bytes) => ({ kind: "random", bytes })),
  fc
    .tuple(fc.oneof(fc.integer({ min: 0, max: 31 }), fc.integer({ min: 64 * 1024 + 1, max: 0xffff_ffff })), fc.uint8Array({ maxLength: 64 }))
    .map(([size, rest]) => {
      const bytes = new Uint8Array(4 + rest.length);
      new DataView(bytes.buffer).setUint32(0, size, true);
      bytes.set(rest, 4);
      return { kind: `struct_size ${size}`, bytes };
    }),
  fc.tuple(fc.constantFrom<HandshakeVariant>("base", "max-gpa", "e820"), fc.integer({ min: 1, max: 95 })).map(([variant, keep]) => ({
    kind: `truncated ${variant} handshake`,
    bytes: handshakeBytes(randomUUID(), variant).subarray(0, keep),
  })),
  fc.uint8Array({ minLength: 92, maxLength: 92 }).map((rest) => {
    // A complete base-size handshake with random contents (it may even parse).
    const bytes = new Uint8Array(96);
    new DataView(bytes.buffer).setUint32(0, 96, true);
    bytes.set(rest, 4);
    return { kind: "random 96-byte handshake", bytes };
  }),
);

/** One KVMI frame from "the kernel", malformed or not. */
export const arbitraryFrame: fc.Arbitrary<{ readonly kind: string; readonly bytes: Uint8Array }> = fc.oneof(
  // Oversize header: 8185 (one past KVMI_MSG_SIZE) or anything larger.
  fc.tuple(fc.integer({ min: 0, max: 0xffff }), fc.oneof(fc.constant(MAX_FRAME_BODY + 1), fc.integer({ min: MAX_FRAME_BODY + 1, max: 0xffff }))).map(
    ([id, size]) => ({ kind: `oversize ${size}`, bytes: frame(id, 1, new Uint8Array(0), size) }),
  ),
  // A reply (or an unknown id) with a random seq and body.
  fc.tuple(fc.integer({ min: 1, max: 0xffff }), fc.nat(), fc.uint8Array({ maxLength: 48 })).map(([id, seq, body]) => ({
    kind: `message id ${id}`,
    bytes: frame(id, seq, body),
  })),
  // An event (id 0) with a random body: too short, inconsistent size, unknown event id.
  fc.tuple(fc.nat(), fc.uint8Array({ maxLength: 700 })).map(([seq, body]) => ({ kind: "event", bytes: frame(E2E_DIALECT.eventFraming.vcpuEventMessageId, seq, body) })),
  // A header that promises more than follows (the connection is closed mid-body).
  fc.tuple(fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 1, max: MAX_FRAME_BODY })).map(([id, size]) => ({
    kind: `truncated body of ${size}`,
    bytes: frame(id, 7, new Uint8Array(Math.floor(size / 2)), size),
  })),
  // Random bytes.
  fc.uint8Array({ minLength: 1, maxLength: 64 }).map((bytes) => ({ kind: "random bytes", bytes })),
);

