// SPDX-License-Identifier: Apache-2.0
/**
 * The session's bound on commands in flight (SessionInfo.max_inflight_commands): a counting
 * semaphore whose waiters are served in call order and leave on abort. Separate from the stream in
 * `session-stream.ts` because it knows nothing about messages, only slots, and that order rule
 * (a freed slot goes straight to the oldest waiter) is easier to check on its own.
 */
import { abortError } from "./errors.js";
import type { KvmiBridgeError } from "./errors.js";

/** Slots for session commands; one is held from the write of a command until its result. @internal */
export class CommandSlots {
  private inUse = 0;
  private readonly waiters: Array<{ resolve(): void; reject(e: KvmiBridgeError): void }> = [];

  /** @param max - slots until the bridge says otherwise in Attached. */
  constructor(public max: number) {}

  /** Takes a free slot at once; false when all are in use (then use {@link acquire}). */
  tryTake(): boolean {
    if (this.inUse < this.max) {
      this.inUse++;
      return true;
    }
    return false;
  }

  /** Resolves once a slot is taken for the caller; rejects when `signal` fires first. */
  acquire(signal: AbortSignal | undefined): Promise<void> {
    if (this.tryTake()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const waiter = {
        resolve: () => {
          signal?.removeEventListener("abort", onAbort);
          resolve();
        },
        reject: (e: KvmiBridgeError) => {
          signal?.removeEventListener("abort", onAbort);
          reject(e);
        },
      };
      const onAbort = (): void => {
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(abortError(signal!));
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.waiters.push(waiter);
    });
  }

  release(): void {
    const next = this.waiters.shift();
    // Hand the slot over directly; the count stays the same.
    if (next !== undefined) next.resolve();
    else this.inUse--;
  }

  /** Rejects every waiter (the session ended); slots in use stay with their commands. */
  rejectAll(error: KvmiBridgeError): void {
    for (const waiter of this.waiters.splice(0)) waiter.reject(error);
  }
}
