// SPDX-License-Identifier: Apache-2.0
/**
 * The KVMI channel's bookkeeping for commands in flight: how many may be outstanding at once, and
 * one timer for all of their deadlines.
 */

/**
 * A bounded number of slots, granted strictly in arrival order. A batch takes all its slots at once
 * or waits: two batches each holding part of what they need would otherwise wait on each other
 * forever.
 */
export class InFlightSlots {
  private used = 0;
  private open = true;
  private readonly waiters: Array<{ readonly n: number; readonly grant: () => void }> = [];

  constructor(readonly limit: number) {}

  /** Slots taken right now. */
  get inUse(): number {
    return this.used;
  }

  /**
   * Takes `n` slots: at once (undefined, no promise: a microtask per command adds up) when they are
   * free and nobody waits before, otherwise a promise settled when they are granted or {@link close}
   * is called. Give them back with {@link release} in every case.
   */
  acquire(n: number): Promise<void> | undefined {
    if (!this.open || (this.waiters.length === 0 && this.used + n <= this.limit)) {
      this.used += n;
      return undefined;
    }
    return new Promise<void>((grant) => this.waiters.push({ n, grant }));
  }

  release(n: number): void {
    this.used -= n;
    this.grantWaiting();
  }

  /** Lets every waiter through (the channel closed: each finds out and gives its slots back). */
  close(): void {
    this.open = false;
    this.grantWaiting();
  }

  private grantWaiting(): void {
    while (this.waiters.length > 0) {
      const first = this.waiters[0]!;
      if (this.open && this.used + first.n > this.limit) return;
      this.waiters.shift();
      this.used += first.n;
      first.grant();
    }
  }
}

/**
 * One timer for every deadline of a channel, armed for the earliest, instead of a timer per command:
 * arming and clearing a timer per page read was measurable on bulk reads. Unreferenced, as the
 * socket (which every pending command needs) keeps the process alive.
 */
export class DeadlineTimer {
  private timer: NodeJS.Timeout | undefined;
  private armedFor = Number.POSITIVE_INFINITY;

  /**
   * @param expireDue called when the earliest deadline may have passed, with `performance.now()`;
   *   fails what is due and returns the earliest deadline left (Infinity for none).
   */
  constructor(private readonly expireDue: (now: number) => number) {}

  /** Makes sure the timer fires no later than `deadline` (a `performance.now()` time). */
  arm(deadline: number): void {
    if (deadline >= this.armedFor) return;
    clearTimeout(this.timer);
    this.armedFor = deadline;
    this.timer = setTimeout(() => this.fire(), Math.max(1, Math.ceil(deadline - performance.now())));
    this.timer.unref();
  }

  cancel(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.armedFor = Number.POSITIVE_INFINITY;
  }

  private fire(): void {
    this.timer = undefined;
    this.armedFor = Number.POSITIVE_INFINITY;
    const next = this.expireDue(performance.now());
    if (next !== Number.POSITIVE_INFINITY) this.arm(next);
  }
}

/** One command waiting for its reply. */
export interface PendingCommand<Spec> {
  readonly id: number;
  readonly spec: Spec;
  readonly vcpu: number | undefined;
  readonly resolve: (value: Record<string, unknown>) => void;
  readonly reject: (err: Error) => void;
  /** `performance.now()` after which the command fails with the timeout error. */
  readonly deadline: number;
  readonly timeoutMs: number;
}

/** Remembered seqs of timed-out or abandoned commands, so their late replies are dropped quietly. */
const LATE_REPLY_MEMORY = 1024;

/**
 * Commands waiting for their replies, by seq (kvmi-abi §2.5: replies may come out of order): seq
 * allocation, matching, deadlines, and the memory of seqs given up on.
 */
export class PendingCommands<Spec> {
  private readonly entries = new Map<number, PendingCommand<Spec>>();
  private readonly late = new Set<number>();
  private lastSeq = 1;
  private readonly deadlines = new DeadlineTimer((now) => this.expireDue(now));
  /** Commands to fail when a signal aborts; weak, so that a finished call's signal is not kept. */
  private readonly bySignal = new WeakMap<AbortSignal, Set<number>>();

  /** @param timeoutError the error a command past its deadline fails with. */
  constructor(private readonly timeoutError: (entry: PendingCommand<Spec>) => Error) {}

  get size(): number {
    return this.entries.size;
  }

  /** The next seq: u32 wrap-around, skipping 0 and seqs still in use (a reply must be unambiguous). */
  allocateSeq(): number {
    do {
      this.lastSeq = (this.lastSeq + 1) >>> 0;
    } while (this.entries.has(this.lastSeq) || this.lastSeq === 0);
    return this.lastSeq;
  }

  add(seq: number, entry: PendingCommand<Spec>): void {
    this.entries.set(seq, entry);
    this.deadlines.arm(entry.deadline);
  }

  /** The command a reply with `seq` answers, left in place. */
  get(seq: number): PendingCommand<Spec> | undefined {
    return this.entries.get(seq);
  }

  /** Removes and returns the command a reply with `seq` answers. */
  take(seq: number): PendingCommand<Spec> | undefined {
    const entry = this.entries.get(seq);
    if (entry !== undefined) this.entries.delete(seq);
    return entry;
  }

  /** True (once) for the seq of a command given up on: its reply comes late and is dropped. */
  wasGivenUp(seq: number): boolean {
    return this.late.delete(seq);
  }

  /**
   * Fails command `seq` with the signal's reason if `signal` aborts before {@link unwatch}. One
   * listener per signal, however many commands it covers: a session's signal covers every command
   * of the session, and a listener added and removed per command showed in profiles.
   */
  watch(signal: AbortSignal, seq: number): void {
    if (signal.aborted) return this.abandon(seq, signal.reason as Error);
    let seqs = this.bySignal.get(signal);
    if (seqs === undefined) {
      const watched = new Set<number>();
      seqs = watched;
      this.bySignal.set(signal, watched);
      signal.addEventListener(
        "abort",
        () => {
          for (const s of watched) this.abandon(s, signal.reason as Error);
          watched.clear();
        },
        { once: true },
      );
    }
    seqs.add(seq);
  }

  unwatch(signal: AbortSignal, seq: number): void {
    this.bySignal.get(signal)?.delete(seq);
  }

  /** Fails the command with `reason` now and remembers its seq (abort). */
  abandon(seq: number, reason: Error): void {
    const entry = this.take(seq);
    if (entry === undefined) return;
    this.rememberLate(seq);
    entry.reject(reason);
  }

  /** Fails every command with the error `errorOf` makes for it (the channel closed). */
  failAll(errorOf: (entry: PendingCommand<Spec>) => Error): void {
    this.deadlines.cancel();
    for (const [seq, entry] of this.entries) {
      this.entries.delete(seq);
      entry.reject(errorOf(entry));
    }
  }

  private expireDue(now: number): number {
    let next = Number.POSITIVE_INFINITY;
    for (const [seq, entry] of this.entries) {
      if (entry.deadline > now) {
        next = Math.min(next, entry.deadline);
        continue;
      }
      this.entries.delete(seq);
      this.rememberLate(seq);
      entry.reject(this.timeoutError(entry));
    }
    return next;
  }

  private rememberLate(seq: number): void {
    this.late.add(seq);
    if (this.late.size > LATE_REPLY_MEMORY) this.late.delete(this.late.values().next().value!);
  }
}

/** The results of one batch of commands (`KvmiChannel.commandBatch`), settled one reply at a time. */
export class BatchResults {
  private left: number;

  constructor(
    private readonly results: unknown[],
    private readonly done: () => void,
  ) {
    this.left = results.length;
  }

  settle(index: number, value: unknown): void {
    this.results[index] = value;
    if (--this.left === 0) this.done();
  }
}

/**
 * One command of a batch as a pending entry. A class with methods, not an object with two closures
 * per page: under tsx each named closure also costs a `__name` call.
 */
export class BatchedCommand<Spec extends { readonly id: number }> implements PendingCommand<Spec> {
  readonly id: number;

  constructor(
    readonly spec: Spec,
    readonly vcpu: number | undefined,
    readonly deadline: number,
    readonly timeoutMs: number,
    private readonly batch: BatchResults,
    private readonly index: number,
  ) {
    this.id = spec.id;
  }

  resolve(value: Record<string, unknown>): void {
    this.batch.settle(this.index, value);
  }

  reject(err: Error): void {
    this.batch.settle(this.index, err);
  }
}
