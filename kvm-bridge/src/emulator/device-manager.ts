// SPDX-License-Identifier: Apache-2.0
/**
 * The QEMU side of one VM (kvmi-abi §2.1, §2.2, §2.6): connect the introspection chardev to the
 * tool, send the handshake, check the tool's cookie, hand the socket to the kernel with
 * KVM_INTROSPECTION_HOOK, allow commands and events, reconnect like `reconnect=N`, and run the
 * PREUNHOOK / UNHOOK flow before pause, suspend, migrate and shutdown.
 */
import { EventEmitter } from "node:events";
import { connect as netConnect } from "node:net";
import type { Socket } from "node:net";
import { KvmiError } from "../errors.js";
import type { Logger } from "../logger.js";
import { silentLogger } from "../logger.js";
import { readExactly } from "../session/read-exactly.js";
import { viewOf } from "../wire/codec.js";
import type { E820Entry, HandshakeVariant } from "../wire/handshake.js";
import { checkHandshakeReply, encodeHandshake, HANDSHAKE_MAX_BYTES, parseUuid } from "../wire/handshake.js";
import type { KvmiVm } from "./kernel/kvmi-vm.js";

/** Where the tool listens: a UNIX socket path or a TCP endpoint. */
export type KvmiEndpoint =
  | { readonly kind: "unix"; readonly path: string }
  | { readonly kind: "tcp"; readonly host: string; readonly port: number };

/** Parses `unix:PATH` or `tcp:HOST:PORT`. */
export function parseEndpoint(text: string): KvmiEndpoint | undefined {
  if (text.startsWith("unix:") && text.length > 5) return { kind: "unix", path: text.slice(5) };
  const tcp = /^tcp:(.+):(\d{1,5})$/.exec(text);
  if (tcp !== null && Number(tcp[2]) < 65536) return { kind: "tcp", host: tcp[1]!.replace(/^\[|\]$/g, ""), port: Number(tcp[2]) };
  return undefined;
}

/** The VM facts QEMU reports in the handshake. */
export interface VmDescription {
  readonly uuid: string;
  readonly name: string;
  /** Highest guest-physical address + 1 (max-gpa variant). */
  readonly maxGpa: bigint;
  /** The e820 map (e820 variant). */
  readonly e820: readonly E820Entry[];
}

/** What the guest must offer the device manager. */
export interface ManagedGuest {
  stop(): void;
  resume(): void;
  /** Reinitialises the guest; resolves when it runs again. */
  reset(): void;
}

/** Options of {@link DeviceManager}, mirroring `-object introspection` (kvmi-abi §2.1). */
export interface DeviceManagerOptions {
  readonly endpoint: KvmiEndpoint;
  readonly vm: VmDescription;
  readonly guest: ManagedGuest;
  readonly kernel: KvmiVm;
  readonly handshake?: HandshakeVariant;
  /** `key=`: QEMU checks SHA-1(secret) against the tool's cookie_hash. */
  readonly secret?: Uint8Array;
  /** `reconnect=N`; QEMU counts seconds, tests want milliseconds. Default 1000. */
  readonly reconnectMs?: number;
  /** `handshake_timeout`, default 10 s. */
  readonly handshakeTimeoutMs?: number;
  /** `unhook_timeout`, default 60 s. */
  readonly unhookTimeoutMs?: number;
  /** `command=`: ids to allow; all (-1) when absent. */
  readonly commands?: readonly number[];
  /** `event=`: ids to allow; all (-1) when absent. */
  readonly events?: readonly number[];
  readonly logger?: Logger;
}

/** A device-manager action that goes through the unhook flow. */
export type VmAction = "pause" | "suspend" | "migrate" | "shutdown";

/** How one unhook flow went, one log line per VM in `kvmi-sim`. */
export interface UnhookOutcome {
  readonly action: VmAction;
  /** `ok` when the UNHOOK event was sent, `ENOENT` when the tool had not enabled it, `not-hooked`. */
  readonly preunhook: "ok" | "ENOENT" | "not-hooked";
  /** Who ended the wait: the tool closed the socket, the unhook timeout fired, or nothing to wait for. */
  readonly closedBy: "tool" | "timeout" | "immediate";
  readonly durationMs: number;
}

type State = "idle" | "connecting" | "handshaking" | "hooked" | "stopped";

/** Emits `hooked`, `unhooked`, `handshake-refused` and `connect-failed`. */
export class DeviceManager extends EventEmitter {
  private readonly log: Logger;
  private state: State = "idle";
  private socket: Socket | undefined;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private reconnectAllowed = true;
  private startTime = BigInt(Math.floor(Date.now() / 1000));

  constructor(private readonly options: DeviceManagerOptions) {
    super();
    this.log = (options.logger ?? silentLogger).child({ vm: options.vm.uuid });
  }

  /** `start_time` of the current boot, in seconds since the epoch. */
  get vmStartTime(): bigint {
    return this.startTime;
  }

  get isHooked(): boolean {
    return this.state === "hooked";
  }

  /** Starts connecting (and reconnecting) to the tool. */
  start(): void {
    this.reconnectAllowed = true;
    if (this.state === "idle" || this.state === "stopped") this.connectSoon(0);
  }

  /** Stops reconnecting and drops the connection without the unhook flow (QEMU killed). */
  async stop(): Promise<void> {
    this.reconnectAllowed = false;
    clearTimeout(this.reconnectTimer);
    this.socket?.destroy();
    await this.options.kernel.unhook();
    this.state = "stopped";
  }

  private connectSoon(delayMs: number): void {
    clearTimeout(this.reconnectTimer);
    if (!this.reconnectAllowed) return;
    this.state = "connecting";
    this.reconnectTimer = setTimeout(() => void this.connectOnce(), delayMs);
  }

  private async connectOnce(): Promise<void> {
    if (!this.reconnectAllowed) return;
    const { endpoint } = this.options;
    const socket =
      endpoint.kind === "unix" ? netConnect({ path: endpoint.path }) : netConnect({ host: endpoint.host, port: endpoint.port });
    socket.pause();
    this.socket = socket;
    try {
      await new Promise<void>((resolve, reject) => {
        socket.once("connect", resolve);
        socket.once("error", reject);
      });
    } catch (err) {
      this.log.debug({ err: (err as Error).message }, "connect failed");
      this.emit("connect-failed", err);
      this.connectSoon(this.options.reconnectMs ?? 1000);
      return;
    }
    socket.on("error", (err) => this.log.debug({ err: err.message }, "socket error"));
    this.state = "handshaking";
    try {
      await this.handshake(socket);
      // An action (pause, suspend, migrate, shutdown) or stop() came during the handshake: QEMU
      // does not hook a VM it is taking down, reconnects stay off (kvmi-abi §2.6 step 5).
      if (!this.reconnectAllowed || this.socket !== socket) throw new HandshakeAbandonedError();
      this.hook(socket);
    } catch (err) {
      if (!(err instanceof HandshakeAbandonedError) && socket === this.socket && this.reconnectAllowed) {
        this.log.warn({ err: (err as Error).message }, "handshake refused");
        this.emit("handshake-refused", err);
      }
      socket.destroy();
      await this.options.kernel.unhook();
      this.connectSoon(this.options.reconnectMs ?? 1000);
    }
  }

  private async handshake(socket: Socket): Promise<void> {
    const { vm } = this.options;
    socket.write(
      encodeHandshake({
        variant: this.options.handshake ?? "base",
        uuid: vm.uuid,
        name: vm.name,
        startTime: this.startTime,
        maxGpa: vm.maxGpa,
        e820: vm.e820,
      }),
    );
    // Two reads, as QEMU does: struct_size, then exactly struct_size - 4 more bytes (kvmi-abi §2.2).
    const timeoutMs = this.options.handshakeTimeoutMs ?? 10_000;
    const head = await readExactly(socket, 4, timeoutMs);
    const structSize = viewOf(head).getUint32(0, true);
    if (structSize < 24 || structSize > HANDSHAKE_MAX_BYTES) {
      throw new HandshakeRefusedError(`tool answered with struct_size ${structSize}`);
    }
    const rest = await readExactly(socket, structSize - 4, timeoutMs);
    const reply = new Uint8Array(structSize);
    reply.set(head);
    reply.set(rest, 4);
    const refusal = checkHandshakeReply(reply, this.options.secret);
    if (refusal !== undefined) throw new HandshakeRefusedError(refusal);
    if (this.options.secret === undefined) this.log.warn({}, "no introspection key: accepting any tool");
  }

  private hook(socket: Socket): void {
    const { kernel } = this.options;
    kernel.hook({ fd: socket, padding: 0, uuid: parseUuid(this.options.vm.uuid) });
    try {
      for (const id of this.options.commands ?? [-1]) kernel.allowCommand({ allow: 1, id });
      for (const id of this.options.events ?? [-1]) kernel.allowEvent({ allow: 1, id });
    } catch (err) {
      // Any failure leads to UNHOOK and a disconnect (kvmi-abi §2.2 step 6).
      socket.destroy();
      throw err;
    }
    this.state = "hooked";
    this.log.info({ startTime: String(this.startTime) }, "hooked");
    this.emit("hooked");
    // The chardev CLOSE event: QEMU calls UNHOOK and reconnects (kvmi-abi §2.8 step 3).
    socket.once("close", () => {
      if (this.socket !== socket) return;
      void this.afterClose();
    });
  }

  private async afterClose(): Promise<void> {
    if (this.state !== "hooked") return;
    this.state = "connecting";
    await this.options.kernel.unhook();
    this.emit("unhooked");
    this.log.info({}, "tool disconnected; unhooked");
    this.connectSoon(this.options.reconnectMs ?? 1000);
  }

  /**
   * Runs the seed's flow before `action` (kvmi-abi §2.6): PREUNHOOK; if the UNHOOK event went out,
   * wait for the tool to close the socket or for `unhook_timeout`; then UNHOOK. Reconnects stay
   * disabled until {@link resume} (pause and suspend) or for good (migrate and shutdown).
   */
  async runAction(action: VmAction): Promise<UnhookOutcome> {
    const started = performance.now();
    this.reconnectAllowed = false;
    clearTimeout(this.reconnectTimer);
    const { kernel } = this.options;
    const socket = this.socket;
    let preunhook: UnhookOutcome["preunhook"] = "not-hooked";
    let closedBy: UnhookOutcome["closedBy"] = "immediate";
    if (this.state === "hooked" && socket !== undefined) {
      this.state = "stopped";
      try {
        kernel.preunhook();
        preunhook = "ok";
        closedBy = await waitForClose(socket, this.options.unhookTimeoutMs ?? 60_000);
      } catch (err) {
        if (!(err instanceof KvmiError)) throw err;
        preunhook = "ENOENT";
      }
      socket.destroy();
      await kernel.unhook();
      this.emit("unhooked");
    } else {
      // A connection still in its handshake is dropped: it must not be hooked after the action.
      socket?.destroy();
    }
    this.state = "stopped";
    this.options.guest.stop();
    const outcome: UnhookOutcome = { action, preunhook, closedBy, durationMs: Math.round(performance.now() - started) };
    // debug, not info: the caller gets the outcome and logs it once (kvmi-sim: one line per VM).
    this.log.debug({ ...outcome }, `${action} after unhook`);
    return outcome;
  }

  /** Resumes after pause or suspend: the guest runs and reconnects are allowed again. */
  resume(): void {
    this.options.guest.resume();
    this.start();
  }

  /** A guest reset: disconnect and unhook, reset, and reconnect with a new start time (kvmi-abi §2.6 step 7). */
  async reset(): Promise<void> {
    clearTimeout(this.reconnectTimer);
    this.reconnectAllowed = false;
    this.socket?.destroy();
    await this.options.kernel.unhook();
    if (this.state === "hooked") this.emit("unhooked");
    this.options.guest.reset();
    // start_time has seconds granularity; a tool tells boots apart by it, so a reset within the
    // same second (or two) must still move it forward (kvmi-abi §2.3, §2.6 step 7).
    const now = BigInt(Math.floor(Date.now() / 1000));
    this.startTime = now > this.startTime ? now : this.startTime + 1n;
    this.state = "idle";
    this.start();
  }
}

/** The tool refused or failed the handshake. */
class HandshakeRefusedError extends Error {
  override readonly name = "HandshakeRefusedError";
}

/** The device manager itself gave the connection up during the handshake (an action or stop()). */
class HandshakeAbandonedError extends Error {
  override readonly name = "HandshakeAbandonedError";
}

function waitForClose(socket: Socket, timeoutMs: number): Promise<"tool" | "timeout"> {
  if (socket.destroyed) return Promise.resolve("tool");
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      socket.off("close", onClose);
      resolve("timeout");
    }, timeoutMs);
    const onClose = (): void => {
      clearTimeout(timer);
      resolve("tool");
    };
    socket.once("close", onClose);
  });
}
