// SPDX-License-Identifier: Apache-2.0
/**
 * The buffer between a session's gRPC stream and `Session.events()`: bounded by flow control, one
 * reader at a time, abortable reads.
 */
import { abortError } from "./errors.js";
import type { KvmiBridgeError } from "./errors.js";
import type { SessionItem } from "./events.js";

/**
 * A FIFO of session items with one reader and flow control on the stream: once `high` items wait,
 * it calls `pause` (the session stops reading the gRPC stream, so the bridge's HTTP/2 flow control
 * pushes back), and `resume` once the reader has taken it down to half. The end (clean or with an
 * error) reaches the reader after the items already queued. @internal
 */
export class ItemQueue {
  private readonly items: SessionItem[] = [];
  private reader: { resolve(r: IteratorResult<SessionItem, void>): void; reject(e: unknown): void } | undefined;
  private ended = false;
  private error: KvmiBridgeError | undefined;
  private paused = false;

  constructor(
    private readonly high: number,
    private readonly pause: () => void,
    private readonly resume: () => void,
  ) {}

  push(item: SessionItem): void {
    if (this.reader !== undefined) {
      const reader = this.reader;
      this.reader = undefined;
      return reader.resolve({ value: item, done: false });
    }
    this.items.push(item);
    if (!this.paused && this.items.length >= this.high) {
      this.paused = true;
      this.pause();
    }
  }

  end(error: KvmiBridgeError | undefined): void {
    if (this.ended) return;
    this.ended = true;
    this.error = error;
    const reader = this.reader;
    this.reader = undefined;
    if (reader === undefined) return;
    if (error !== undefined) reader.reject(error);
    else reader.resolve({ value: undefined, done: true });
  }

  next(signal: AbortSignal | undefined): Promise<IteratorResult<SessionItem, void>> {
    const item = this.items.shift();
    if (item !== undefined) {
      if (this.paused && this.items.length <= this.high / 2) {
        this.paused = false;
        this.resume();
      }
      return Promise.resolve({ value: item, done: false });
    }
    if (this.ended) return this.error !== undefined ? Promise.reject(this.error) : Promise.resolve({ value: undefined, done: true });
    if (this.reader !== undefined) return Promise.reject(new Error("Session.events() already has a reader"));
    if (signal?.aborted) return Promise.reject(abortError(signal));
    return new Promise((resolve, reject) => {
      const onAbort = (): void => {
        if (this.reader?.reject === rejectOnce) this.reader = undefined;
        reject(abortError(signal!));
      };
      const rejectOnce = (e: unknown): void => {
        signal?.removeEventListener("abort", onAbort);
        reject(e);
      };
      this.reader = {
        resolve: (r) => {
          signal?.removeEventListener("abort", onAbort);
          resolve(r);
        },
        reject: rejectOnce,
      };
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }
}
