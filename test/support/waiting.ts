// SPDX-License-Identifier: Apache-2.0
/**
 * Bounded waits of the end-to-end tests: every wait has a deadline ({@link waitUntil},
 * {@link withTimeout}, {@link StreamQueue.take}); nothing sleeps unbounded.
 */
import { status as GrpcStatus } from "@grpc/grpc-js";
import type { StatusObject } from "@grpc/grpc-js";

/** Default bound of every wait in the e2e tests. */
export const WAIT_MS = 5_000;

/** Rejects with a message naming `what` when `promise` has not settled within `ms`. */
export function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not happen within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Polls `probe` every `intervalMs` until it returns something other than undefined/false, and
 * resolves with that; rejects after `timeoutMs` with `what` and the last error the probe threw.
 */
export async function waitUntil<T>(
  probe: () => T | undefined | false | Promise<T | undefined | false>,
  what: string,
  { timeoutMs = WAIT_MS, intervalMs = 10 }: { timeoutMs?: number; intervalMs?: number } = {},
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined && value !== false) return value;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() >= deadline) {
      const suffix = lastError === undefined ? "" : ` (last error: ${(lastError as Error).message})`;
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${suffix}`);
    }
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

/**
 * The items of a gRPC response stream, buffered in arrival order. `take` removes and returns the
 * first item that matches (already buffered or arriving later) and leaves the others in place.
 */
export class StreamQueue<T> {
  private readonly items: T[] = [];
  private readonly waiters: Array<{ match: (item: T) => boolean; resolve: (item: T) => void; reject: (err: Error) => void }> = [];
  private status: StatusObject | undefined;
  private readonly endWaiters: Array<(status: StatusObject) => void> = [];

  constructor(private readonly describe: (item: T) => string) {}

  push(item: T): void {
    const index = this.waiters.findIndex((w) => w.match(item));
    if (index >= 0) this.waiters.splice(index, 1)[0]!.resolve(item);
    else this.items.push(item);
  }

  end(status: StatusObject): void {
    if (this.status !== undefined) return;
    this.status = status;
    for (const waiter of this.waiters.splice(0)) {
      waiter.reject(new Error(`the stream ended (${GrpcStatus[status.code]}: ${status.details}) before the awaited message arrived`));
    }
    for (const resolve of this.endWaiters.splice(0)) resolve(status);
  }

  /** The final status, once the stream ended. */
  get ended(): StatusObject | undefined {
    return this.status;
  }

  /** Items buffered and not taken yet. */
  get pending(): readonly T[] {
    return this.items;
  }

  /** Removes and returns the first item matching `match`, waiting up to `timeoutMs` for it. */
  take(match: (item: T) => boolean, what: string, timeoutMs = WAIT_MS): Promise<T> {
    const index = this.items.findIndex(match);
    if (index >= 0) return Promise.resolve(this.items.splice(index, 1)[0]!);
    if (this.status !== undefined) {
      return Promise.reject(new Error(`${what}: the stream already ended (${GrpcStatus[this.status.code]}: ${this.status.details})`));
    }
    let waiter!: (typeof this.waiters)[number];
    const arrived = new Promise<T>((resolve, reject) => {
      waiter = { match, resolve, reject };
      this.waiters.push(waiter);
    });
    return withTimeout(arrived, timeoutMs, `${what} [buffered: ${this.items.map(this.describe).join(", ") || "nothing"}]`).finally(() => {
      const at = this.waiters.indexOf(waiter);
      if (at >= 0) this.waiters.splice(at, 1);
    });
  }

  /** Removes and returns every buffered item. */
  drain(): T[] {
    return this.items.splice(0);
  }

  /** Resolves with the final status; rejects after `timeoutMs`. */
  closed(timeoutMs = WAIT_MS): Promise<StatusObject> {
    if (this.status !== undefined) return Promise.resolve(this.status);
    return withTimeout(new Promise<StatusObject>((resolve) => this.endWaiters.push(resolve)), timeoutMs, "the end of the stream");
  }

  /** Asserts that no matching item arrives within `ms` (a bounded negative check). */
  async expectNone(match: (item: T) => boolean, ms: number, what: string): Promise<void> {
    await new Promise((resolve) => setTimeout(resolve, ms));
    const found = this.items.find(match);
    if (found !== undefined) throw new Error(`unexpected ${what}: ${this.describe(found)}`);
  }
}

