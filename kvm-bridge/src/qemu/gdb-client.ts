// SPDX-License-Identifier: Apache-2.0
/**
 * A client for QEMU's gdbstub (docs/qemu-backend.md "gdbstub"). QEMU's stub is all-stop: every
 * vCPU stops together, and a byte received while the VM runs stops it, so the client keeps an
 * explicit state: requests only while `stopped`, `resume()` → `running`, and the next stop reply
 * (breakpoint, watchpoint, step, interrupt) brings it back. One request is in flight at a time.
 *
 * On every connect it sets `Qqemu.PhyMemMode:1`: the mode is global to the stub and survives
 * disconnects, so a previous client may have left it either way; `m`/`M` then address guest
 * physical memory, which is what KVMI's READ/WRITE_PHYSICAL mean. Breakpoint and watchpoint
 * addresses stay virtual (they compare with RIP and linear addresses).
 */
import type { Socket } from "node:net";
import { KvmiProtocolError, KvmiTimeoutError, KvmiTransportError } from "../errors.js";
import { openSocket, type SocketEndpoint } from "./endpoint.js";
import {
  INTERRUPT_BYTE,
  MAX_MEMORY_CHUNK,
  RspParser,
  bigintToHexLe,
  encodePacket,
  fromHex,
  hexLeToBigint,
  isStopReply,
  parseStopReply,
  toHex,
  type StopReply,
} from "./rsp-packets.js";
import { parseTargetDescription, type GdbRegister } from "./target-description.js";

export type { StopReply } from "./rsp-packets.js";
export type { GdbRegister } from "./target-description.js";

/** Breakpoint and watchpoint kinds of `Z`/`z` packets. */
export const enum GdbPoint {
  Software = 0,
  Hardware = 1,
  WriteWatch = 2,
  ReadWatch = 3,
  AccessWatch = 4,
}

export interface GdbClientOptions {
  /** Deadline of one request/reply exchange. */
  readonly requestTimeoutMs?: number;
  /** Physical memory for `m`/`M` (default true: `Qqemu.PhyMemMode:1`). */
  readonly physicalMemory?: boolean;
}

type Waiter = { resolve(payload: string): void; reject(error: Error): void; timer: NodeJS.Timeout; expectsStop: boolean };

/** A connected gdbstub; create with `connectGdb`. */
export class GdbClient {
  private readonly parser = new RspParser();
  private waiter: Waiter | undefined;
  private stopWaiters: Array<(stop: StopReply) => void> = [];
  private readonly stopListeners = new Set<(stop: StopReply) => void>();
  private readonly closeListeners = new Set<(error?: Error) => void>();
  private queue: Promise<unknown> = Promise.resolve();
  /** The end of the last `Hg` sequence: see {@link withThread}. */
  private threadSequence: Promise<unknown> = Promise.resolve();
  private ackMode = true;
  private closedError: Error | undefined;
  /** `running` after resume() until the next stop reply. */
  state: "stopped" | "running" = "stopped";
  /** The register file as the stub describes it (target.xml), in `g` packet order. */
  registers: readonly GdbRegister[] = [];
  /** One thread id per vCPU, in vCPU order (`qfThreadInfo`). */
  threads: readonly string[] = [];
  /** The stop reply that put the target in `stopped`. */
  lastStop: StopReply | undefined;

  constructor(private readonly socket: Socket, private readonly requestTimeoutMs: number) {
    socket.on("data", (chunk: Buffer) => this.onData(chunk));
    socket.on("error", (error) => this.fail(new KvmiTransportError(`gdbstub connection failed: ${error.message}`, {}, { cause: error })));
    socket.on("close", () => this.fail(new KvmiTransportError("the gdbstub closed the connection")));
  }

  /** Sends one packet and waits for its reply (only while stopped). */
  request(payload: string): Promise<string> {
    const run = this.queue.then(() => this.exchange(payload));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private exchange(payload: string): Promise<string> {
    if (this.closedError) return Promise.reject(this.closedError);
    if (this.state === "running") return Promise.reject(new KvmiProtocolError(`gdbstub request "${payload.slice(0, 16)}" while the VM runs (all-stop stub)`));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        reject(new KvmiTimeoutError(`gdbstub did not answer "${payload.slice(0, 24)}" within ${this.requestTimeoutMs} ms`));
      }, this.requestTimeoutMs);
      this.waiter = { resolve, reject, timer, expectsStop: payload === "?" };
      this.socket.write(encodePacket(payload));
    });
  }

  private onData(chunk: Buffer): void {
    let items;
    try {
      items = this.parser.push(chunk);
    } catch (error) {
      this.socket.destroy();
      this.fail(new KvmiProtocolError(`gdbstub: ${(error as Error).message}`));
      return;
    }
    for (const item of items) {
      if (item.kind !== "packet") continue;
      if (this.ackMode) this.socket.write("+");
      const payload = item.payload;
      // A stop reply nobody asked for: the stop QEMU announces when a client connects to a running
      // VM (it pauses the VM on connect), or a breakpoint/step/interrupt after resume().
      if (isStopReply(payload) && !(this.state === "stopped" && this.waiter?.expectsStop)) {
        this.onStop(parseStopReply(payload));
        continue;
      }
      const waiter = this.waiter;
      if (waiter) {
        this.waiter = undefined;
        clearTimeout(waiter.timer);
        waiter.resolve(payload);
      }
    }
  }

  private onStop(stop: StopReply): void {
    this.state = "stopped";
    this.lastStop = stop;
    const waiters = this.stopWaiters;
    this.stopWaiters = [];
    for (const waiter of waiters) waiter(stop);
    if (waiters.length === 0) for (const listener of this.stopListeners) listener(stop);
  }

  private fail(error: Error): void {
    if (this.closedError) return;
    this.closedError = error;
    if (this.waiter) {
      clearTimeout(this.waiter.timer);
      this.waiter.reject(error);
      this.waiter = undefined;
    }
    for (const listener of this.closeListeners) listener(error);
  }

  /** Stops the target reaches on its own while running (breakpoints, watchpoints). */
  onUnsolicitedStop(listener: (stop: StopReply) => void): () => void {
    this.stopListeners.add(listener);
    return () => this.stopListeners.delete(listener);
  }

  onClose(listener: (error?: Error) => void): () => void {
    this.closeListeners.add(listener);
    return () => this.closeListeners.delete(listener);
  }

  get closed(): boolean {
    return this.closedError !== undefined;
  }

  /** @internal the handshake, called by connectGdb. */
  async init(options: GdbClientOptions): Promise<void> {
    const supported = await this.request("qSupported:multiprocess+;swbreak+;hwbreak+;xmlRegisters=i386;vContSupported+");
    if (supported.includes("QStartNoAckMode+") && (await this.request("QStartNoAckMode")) === "OK") this.ackMode = false;
    const mode = await this.request(`Qqemu.PhyMemMode:${options.physicalMemory === false ? 0 : 1}`);
    if (mode !== "OK") throw new KvmiProtocolError(`gdbstub refused Qqemu.PhyMemMode (${mode || "unsupported"}): is this QEMU's gdbstub?`);
    this.lastStop = parseStopReply(await this.request("?"));
    this.registers = await parseTargetDescription(await this.readXfer("features", "target.xml"), (name) => this.readXfer("features", name));
    this.threads = await this.listThreads();
  }

  private async readXfer(object: string, annex: string): Promise<string> {
    let text = "";
    for (;;) {
      const reply = await this.request(`qXfer:${object}:read:${annex}:${text.length.toString(16)},ffb`);
      if (reply.startsWith("E") || reply === "") throw new KvmiProtocolError(`gdbstub cannot read ${object} ${annex}: ${reply}`);
      text += reply.slice(1);
      if (reply[0] === "l") return text;
    }
  }

  private async listThreads(): Promise<string[]> {
    const threads: string[] = [];
    for (let reply = await this.request("qfThreadInfo"); reply.startsWith("m"); reply = await this.request("qsThreadInfo")) {
      threads.push(...reply.slice(1).split(","));
    }
    return threads;
  }

  private thread(vcpu: number): string {
    const thread = this.threads[vcpu];
    if (thread === undefined) throw new KvmiProtocolError(`no gdbstub thread for vCPU ${vcpu}`);
    return thread;
  }

  /** The vCPU index of a stop reply's thread. */
  vcpuOf(stop: StopReply | undefined): number {
    const index = stop?.thread === undefined ? -1 : this.threads.indexOf(stop.thread);
    return index < 0 ? 0 : index;
  }

  private async expectOk(payload: string): Promise<void> {
    const reply = await this.request(payload);
    if (reply !== "OK") throw new KvmiProtocolError(`gdbstub answered "${reply}" to "${payload.slice(0, 24)}"`);
  }

  /**
   * Selects vCPU `vcpu`'s thread (`Hg`) and runs `work` with no other selection in between: `Hg`
   * applies to every later `g`, `p` and `P`, so two vCPUs' register reads that interleaved would
   * read one vCPU's registers for the other (a breakpoint event once carried the RIP of the vCPU
   * idling next to the one that hit it).
   */
  private withThread<T>(vcpu: number, work: () => Promise<T>): Promise<T> {
    const run = this.threadSequence.then(async () => {
      await this.expectOk(`Hg${this.thread(vcpu)}`);
      return work();
    });
    this.threadSequence = run.catch(() => undefined);
    return run;
  }

  /** Every register of one vCPU by name (`g`, then `p` for those the `g` packet leaves out). */
  readRegisters(vcpu: number): Promise<Map<string, bigint>> {
    return this.withThread(vcpu, () => this.readSelectedRegisters());
  }

  private async readSelectedRegisters(): Promise<Map<string, bigint>> {
    const hex = await this.request("g");
    if (hex.startsWith("E")) throw new KvmiProtocolError(`gdbstub refused g: ${hex}`);
    const values = new Map<string, bigint>();
    let offset = 0;
    for (const register of this.registers) {
      const width = register.bitsize / 4;
      if (offset + width > hex.length) {
        {
          const reply = await this.request(`p${register.regnum.toString(16)}`);
          if (!reply.startsWith("E") && reply !== "") values.set(register.name, hexLeToBigint(reply));
        }
        continue;
      }
      values.set(register.name, hexLeToBigint(hex.slice(offset, offset + width)));
      offset += width;
    }
    return values;
  }

  /** Writes one register by name (`P`). */
  async writeRegister(vcpu: number, name: string, value: bigint): Promise<void> {
    const register = this.registers.find((r) => r.name === name);
    if (!register) throw new KvmiProtocolError(`the gdbstub has no register "${name}"`);
    await this.withThread(vcpu, () => this.expectOk(`P${register.regnum.toString(16)}=${bigintToHexLe(value, register.bitsize / 8)}`));
  }

  /** Reads memory (physical with PhyMemMode) in `m` packets of up to MAX_MEMORY_CHUNK bytes. */
  async readMemory(address: bigint, length: number): Promise<Uint8Array> {
    const out = new Uint8Array(length);
    for (let done = 0; done < length; ) {
      const size = Math.min(MAX_MEMORY_CHUNK, length - done);
      const reply = await this.request(`m${(address + BigInt(done)).toString(16)},${size.toString(16)}`);
      if (reply.startsWith("E") || reply.length !== size * 2) {
        throw new GdbMemoryError(address + BigInt(done), size, reply);
      }
      out.set(fromHex(reply), done);
      done += size;
    }
    return out;
  }

  async writeMemory(address: bigint, data: Uint8Array): Promise<void> {
    for (let done = 0; done < data.length; ) {
      const size = Math.min(MAX_MEMORY_CHUNK / 2, data.length - done);
      const reply = await this.request(`M${(address + BigInt(done)).toString(16)},${size.toString(16)}:${toHex(data.subarray(done, done + size))}`);
      if (reply !== "OK") throw new GdbMemoryError(address + BigInt(done), size, reply);
      done += size;
    }
  }

  async insertPoint(kind: GdbPoint, address: bigint, length = 1): Promise<void> {
    await this.expectOk(`Z${kind},${address.toString(16)},${length.toString(16)}`);
  }

  async removePoint(kind: GdbPoint, address: bigint, length = 1): Promise<void> {
    await this.expectOk(`z${kind},${address.toString(16)},${length.toString(16)}`);
  }

  /** Lets every vCPU run; the next stop reply arrives through a stop waiter or onUnsolicitedStop. */
  async resume(): Promise<void> {
    await this.queue;
    if (this.closedError) throw this.closedError;
    if (this.state === "running") return;
    this.state = "running";
    this.socket.write(encodePacket("c"));
  }

  /** Stops a running target (0x03) and returns the stop reply; no-op when stopped. */
  async interrupt(timeoutMs = this.requestTimeoutMs): Promise<StopReply> {
    if (this.state === "stopped") return this.lastStop ?? parseStopReply("S00");
    const stop = this.nextStop(timeoutMs);
    this.socket.write(Buffer.from([INTERRUPT_BYTE]));
    return stop;
  }

  /** Executes one instruction on one vCPU (the others stay stopped) and returns the stop reply. */
  async step(vcpu: number, timeoutMs = this.requestTimeoutMs): Promise<StopReply> {
    await this.queue;
    if (this.state === "running") throw new KvmiProtocolError("step while the VM runs");
    const stop = this.nextStop(timeoutMs);
    this.state = "running";
    this.socket.write(encodePacket(`vCont;s:${this.thread(vcpu)}`));
    return stop;
  }

  private nextStop(timeoutMs: number): Promise<StopReply> {
    return new Promise((resolve, reject) => {
      const waiter = (stop: StopReply) => {
        clearTimeout(timer);
        unsubscribe();
        resolve(stop);
      };
      const timer = setTimeout(() => {
        unsubscribe();
        this.stopWaiters = this.stopWaiters.filter((w) => w !== waiter);
        reject(new KvmiTimeoutError(`the gdbstub did not stop within ${timeoutMs} ms`));
      }, timeoutMs);
      const unsubscribe = this.onClose((error) => {
        clearTimeout(timer);
        reject(error ?? new KvmiTransportError("gdbstub closed"));
      });
      this.stopWaiters.push(waiter);
    });
  }

  /**
   * Leaves the VM running and closes. QEMU keeps breakpoints of a closed connection, so the caller
   * removes its own first; `D` is not used because QEMU's multiprocess detach can leave the VM stopped.
   */
  async detach(): Promise<void> {
    if (this.closedError) return;
    await this.resume().catch(() => undefined);
    this.close();
  }

  close(): void {
    this.socket.destroy();
    this.fail(new KvmiTransportError("gdbstub client closed"));
  }
}

/** An `m`/`M` the stub refused (`E14` for an unbacked physical address). */
export class GdbMemoryError extends KvmiProtocolError {
  constructor(readonly address: bigint, readonly size: number, readonly reply: string) {
    super(`gdbstub memory access at 0x${address.toString(16)} (+${size}) failed: ${reply || "empty reply"}`);
  }
}

/** Connects to a gdbstub and runs the handshake: no-ack mode, PhyMemMode, registers, threads. */
export async function connectGdb(endpoint: SocketEndpoint, options: GdbClientOptions = {}): Promise<GdbClient> {
  const socket = await openSocket(endpoint, "QEMU gdbstub");
  const client = new GdbClient(socket, options.requestTimeoutMs ?? 5000);
  try {
    await client.init(options);
  } catch (error) {
    client.close();
    throw error;
  }
  return client;
}
