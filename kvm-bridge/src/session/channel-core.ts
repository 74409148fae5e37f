// SPDX-License-Identifier: Apache-2.0
/**
 * What the channel (channel.ts) does with its socket whichever message it carries: the order of
 * writes (a write waits its turn behind `drain`, messages of one tick leave corked in one syscall),
 * the in-flight table and its slots, error contexts, and the channel's end (close fails everything
 * pending and tells the listeners). Separate from channel.ts, which keeps the command path and the
 * receive path (replies, events); it is the channel's base class, so the write path is called
 * directly, with no wrapper in between (every command, event reply and page read goes through it).
 */
import type { Socket } from "node:net";
import { KvmiTimeoutError, KvmiTransportError } from "../errors.js";
import type { KvmiErrorContext } from "../errors.js";
import type { Logger } from "../logger.js";
import { silentLogger } from "../logger.js";
import type { CommandSpec, Dialect } from "../wire/dialect.js";
import type { KvmiChannelOptions } from "./channel-types.js";
import { InFlightSlots, PendingCommands } from "./in-flight.js";

/**
 * The socket side of {@link KvmiChannel}: writes, in-flight bookkeeping, close.
 * @internal
 */
export abstract class KvmiChannelCore {
  readonly dialect: Dialect;
  protected readonly log: Logger;
  protected readonly pending = new PendingCommands<CommandSpec>(
    (entry) => this.timeoutError(entry.spec, entry.vcpu, entry.timeoutMs),
    (count) => this.slots.release(count),
  );
  protected readonly slots: InFlightSlots;
  protected drained: Promise<void> | undefined;
  private corked = false;
  protected closeError: KvmiTransportError | undefined;
  private readonly closeListeners: Array<(err: KvmiTransportError) => void> = [];
  protected readonly defaultTimeoutMs: number;
  private readonly vm: string | undefined;

  constructor(
    protected readonly socket: Socket,
    options: KvmiChannelOptions,
  ) {
    this.dialect = options.dialect;
    this.log = options.logger ?? silentLogger;
    this.slots = new InFlightSlots(options.maxInFlight ?? 256);
    this.defaultTimeoutMs = options.defaultTimeoutMs ?? 30_000;
    this.vm = options.vm;
  }

  /** True until the socket closed or {@link close} was called. */
  get isOpen(): boolean {
    return this.closeError === undefined;
  }

  /** Commands whose callers wait for a reply. */
  get pendingCommands(): number {
    return this.pending.size;
  }

  /**
   * Commands whose callers gave up (deadline, abort) and whose replies have not come yet: each
   * still holds its in-flight slot until the kernel answers (docs/decisions/0140).
   */
  get unansweredGivenUpCommands(): number {
    return this.pending.givenUpCount;
  }

  /** Registers a listener for the channel's end; called at once if already closed. */
  onClose(listener: (err: KvmiTransportError) => void): void {
    if (this.closeError !== undefined) listener(this.closeError);
    else this.closeListeners.push(listener);
  }

  /** Closes the socket (both directions) and fails everything pending with KvmiTransportError. */
  close(reason: string, cause?: unknown): void {
    if (this.closeError !== undefined) return;
    const err = new KvmiTransportError(reason, { ...(this.vm && { vm: this.vm }) }, { cause });
    this.closeError = err;
    // Flush what this tick corked (e.g. the last event reply of an unhook) before tearing down.
    if (this.corked) this.socket.uncork();
    this.socket.destroy();
    this.pending.failAll(
      (entry) => new KvmiTransportError(`${reason} while ${entry.spec.name} was in flight`, this.contextOf(entry.spec, entry.vcpu), { cause }),
    );
    // Every waiter proceeds, finds the channel closed and gives its slots back.
    this.slots.close();
    for (const listener of this.closeListeners.splice(0)) listener(err);
    this.log.info({ reason }, "KVMI channel closed");
  }

  // ---------------------------------------------------------------------------------------------

  /** Error context of a command or event reply, built only when an error needs it. */
  protected contextOf(spec: { readonly name: string }, vcpu: number | undefined): KvmiErrorContext {
    return { command: spec.name, ...(this.vm && { vm: this.vm }), ...(vcpu !== undefined && { vcpu }) };
  }

  protected assertOpen(context: KvmiErrorContext): void {
    if (this.closeError !== undefined) {
      throw new KvmiTransportError(`KVMI session closed: ${this.closeError.message}`, context, { cause: this.closeError });
    }
  }

  protected timeoutError(spec: CommandSpec, vcpu: number | undefined, timeoutMs: number): KvmiTimeoutError {
    return new KvmiTimeoutError(`${spec.name} got no reply within ${timeoutMs} ms`, this.contextOf(spec, vcpu));
  }

  /** Writes one message, after the writes that wait for `drain` before it. */
  protected async write(message: Uint8Array, spec: { readonly name: string }, vcpu: number | undefined): Promise<void> {
    await this.waitForTurn(spec, vcpu);
    this.send(message);
  }

  /**
   * Waits until the writes that wait for `drain` before this one are out.
   * @throws KvmiTransportError when the channel closed while waiting.
   */
  protected async waitForTurn(spec: { readonly name: string }, vcpu: number | undefined): Promise<void> {
    while (this.drained !== undefined) await this.drained;
    // The socket may have closed while this write waited: a 'close' that already fired would never
    // resolve a new drain promise, and every later write would wait behind it forever.
    if (this.closeError !== undefined) this.assertOpen(this.contextOf(spec, vcpu));
  }

  /** Writes `message` now (its turn has come: {@link waitForTurn}); nothing for an empty one. */
  protected send(message: Uint8Array): void {
    if (message.length === 0) return;
    this.corkUntilNextTick();
    // A destroyed socket never drains; its 'close' (due now) fails the pending replies. Writers
    // released by the same drain may each write before the first sets up the next wait: one
    // wait for the next drain serves them all (one listener pair, not one per writer).
    if (!this.socket.write(message) && !this.socket.destroyed && this.drained === undefined) {
      this.drained = new Promise<void>((resolve) => {
        const done = (): void => {
          this.socket.off("drain", done);
          this.socket.off("close", done);
          this.drained = undefined;
          resolve();
        };
        this.socket.once("drain", done);
        this.socket.once("close", done);
      });
    }
  }

  /**
   * Messages written in the same tick leave in one syscall: a batch read queues dozens of page
   * reads at once. Each message still lies whole inside the write, which is all the kernel needs
   * (it reads a header, then its body, kvmi-abi §3.1).
   */
  private corkUntilNextTick(): void {
    if (this.corked) return;
    this.corked = true;
    this.socket.cork();
    process.nextTick(() => {
      this.corked = false;
      this.socket.uncork();
    });
  }
}
