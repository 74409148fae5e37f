// SPDX-License-Identifier: Apache-2.0
/**
 * The queue between a rule's answer and the notification it sends (docs/event-filters.md,
 * docs/decisions/0175-notifications-off-the-event-path.md).
 *
 * A `notify` rule answers the kernel in the turn that decoded the event; the notification is
 * encoded and written to the sessions later, so that the vCPU never waits for that work:
 * - an isolated item (none queued for `quietMs` before it) goes out after the I/O of the current
 *   loop iteration (setImmediate): events that arrived together are all answered first and their
 *   notifications leave together, and a lone notification loses no time;
 * - while items keep coming, they are collected for `lingerMs` and leave together, so that a vCPU
 *   raising events back to back finds the bridge reading its socket, not building and writing one
 *   gRPC message per event (the message, its HTTP/2 write and the controller's wake-up are paid
 *   once per batch);
 * - `flushAt` items go out at once, and a scheduled flush sends at most that many per turn (the
 *   rest in the next one), so a KVMI event read meanwhile waits for one batch, not for all of them.
 * The queue holds at most `capacity` items; one more is refused and the caller counts the drop: a
 * controller that stops reading cannot make the bridge's memory grow.
 */

/** Sizes and timing of a {@link NoticeQueue}. */
export interface NoticeQueueOptions {
  /** Items the queue holds at most; `push` refuses more. */
  readonly capacity: number;
  /** A flush is due at once when this many are queued. */
  readonly flushAt: number;
  /** How long items that keep coming are collected before they go out (ms). */
  readonly lingerMs: number;
  /** An item with none before it for this long (ms) is isolated: it goes out without lingering. */
  readonly quietMs: number;
}

/** A bounded FIFO whose items are handed to `deliver` in batches, off the turn that queued them. */
export class NoticeQueue<T> {
  private items: T[] = [];
  private immediate: NodeJS.Immediate | undefined;
  private timer: NodeJS.Timeout | undefined;
  /** performance.now() of the last push; -Infinity before the first. */
  private lastPushMs = -Infinity;
  private readonly flushNow = (): void => this.flushBatch();

  constructor(
    private readonly deliver: (items: readonly T[]) => void,
    private readonly options: NoticeQueueOptions,
  ) {}

  /** Items waiting. */
  get length(): number {
    return this.items.length;
  }

  /**
   * Queues `item` and makes sure a flush is scheduled.
   * @returns false when the queue is full: the item was not queued (the caller counts the drop).
   */
  push(item: T): boolean {
    const count = this.items.length;
    if (count >= this.options.capacity) return false;
    this.items.push(item);
    const now = performance.now();
    const isolated = now - this.lastPushMs >= this.options.quietMs;
    this.lastPushMs = now;
    if (this.immediate !== undefined) return true;
    if (count + 1 >= this.options.flushAt || (count === 0 && isolated)) {
      this.cancelTimer();
      this.immediate = setImmediate(this.flushNow);
    } else if (this.timer === undefined) {
      this.timer = setTimeout(this.flushNow, this.options.lingerMs);
      this.timer.unref();
    }
    return true;
  }

  /** Delivers what is queued now (in order) and cancels the scheduled flush. */
  flush(): void {
    this.cancelScheduled();
    if (this.items.length === 0) return;
    const items = this.items;
    this.items = [];
    this.deliver(items);
  }

  /**
   * A scheduled flush: at most `flushAt` items; the rest follow in the next turn, so that events
   * read meanwhile are answered between two batches rather than after all of them.
   */
  private flushBatch(): void {
    this.cancelScheduled();
    if (this.items.length <= this.options.flushAt) return this.flush();
    const items = this.items.splice(0, this.options.flushAt);
    this.immediate = setImmediate(this.flushNow);
    this.deliver(items);
  }

  /** Forgets what is queued (the sessions are gone) and cancels the scheduled flush. */
  clear(): void {
    this.cancelScheduled();
    this.items = [];
  }

  private cancelScheduled(): void {
    if (this.immediate !== undefined) clearImmediate(this.immediate);
    this.immediate = undefined;
    this.cancelTimer();
  }

  private cancelTimer(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }
}
