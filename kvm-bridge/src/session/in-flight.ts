// SPDX-License-Identifier: Apache-2.0
/**
 * The KVMI channel's bookkeeping for commands in flight: how many may be outstanding at once, and
 * one timer for all of their deadlines.
 */
import type { CancelSignal } from "./channel-types.js";

/**
 * A bounded number of slots, granted strictly in arrival order. A batch takes all its slots at once
 * or waits: two batches each holding part of what they need would otherwise wait on each other
 * forever. A slot stands for one command the kernel has and has not answered yet, so it is given
 * back when the kernel answers (or the channel closes), not when the caller stops waiting
 * (docs/decisions/0140-in-flight-until-answered.md).
 */
export class InFlightSlots {
  private used = 0;
  private open = true;
  private readonly waiters: SlotWaiter[] = [];

  constructor(readonly limit: number) {}

  /** Slots taken right now. */
  get inUse(): number {
    return this.used;
  }

  /** Callers waiting for slots right now. */
  get waiting(): number {
    let count = 0;
    for (const waiter of this.waiters) if (!waiter.withdrawn) count++;
    return count;
  }

  /**
   * Takes `n` slots: at once (undefined, no promise: a microtask per command adds up) when they are
   * free and nobody waits before, otherwise a promise settled when they are granted (true), when
   * `deadline` (a `performance.now()` time) passes first (false: nothing taken), when `signal`
   * aborts first (rejected with its reason: nothing taken), or when {@link close} is called (true).
   * Give granted slots back with {@link release} in every case.
   */
  acquire(n: number, deadline = Number.POSITIVE_INFINITY, signal?: CancelSignal): Promise<boolean> | undefined {
    if (!this.open || (this.waiters.length === 0 && this.used + n <= this.limit)) {
      this.used += n;
      return undefined;
    }
    return new Promise<boolean>((resolve, reject) => {
      const waiter: SlotWaiter = { n, withdrawn: false, settle: () => undefined };
      const onAbort = (): void => leave(() => reject(signal!.reason));
      const timer = Number.isFinite(deadline)
        ? setTimeout(() => leave(() => resolve(false)), Math.max(1, Math.ceil(deadline - performance.now())))
        : undefined;
      const cleanUp = (): void => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
      };
      // A waiter that gives up is only marked: it is skipped when it reaches the head (cancelling
      // thousands of waiters must not cost a scan of the queue each).
      const leave = (settle: () => void): void => {
        if (waiter.withdrawn) return;
        waiter.withdrawn = true;
        cleanUp();
        settle();
        this.grantWaiting();
      };
      waiter.settle = () => {
        cleanUp();
        resolve(true);
      };
      this.waiters.push(waiter);
      signal?.addEventListener("abort", onAbort, { once: true });
      if (signal?.aborted) onAbort();
    });
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
      if (first.withdrawn) {
        this.waiters.shift();
        continue;
      }
      if (this.open && this.used + first.n > this.limit) return;
      this.waiters.shift();
      first.withdrawn = true;
      this.used += first.n;
      first.settle();
    }
  }
}

interface SlotWaiter {
  readonly n: number;
  /** Granted, timed out or aborted: no longer waiting. */
  withdrawn: boolean;
  settle: () => void;
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

/**
 * Commands sent to the kernel and not answered yet, by seq (kvmi-abi §2.5: replies may come out of
 * order): seq allocation, matching, deadlines, and the commands whose callers gave up.
 *
 * A command whose caller gave up (its deadline passed, its signal aborted) fails at once, but stays
 * here, without its caller, until the kernel answers it: its reply is then matched by seq and id and
 * dropped, and only then does the command give its in-flight slot back (`retire`). So the kernel
 * never holds more unanswered commands of a channel than its slots, whatever callers do, every
 * reply finds the command it answers, and the table is bounded by the slots. (A bounded memory of
 * given-up seqs, with the slot given back at once, let a client that cancels or times out commands
 * faster than the kernel answers push thousands into the kernel; past the memory's bound their
 * replies looked like protocol errors and closed the VM's socket: docs/decisions/0140.)
 */
export class PendingCommands<Spec> {
  private readonly entries = new Map<number, PendingCommand<Spec>>();
  /** Given-up commands (seq to command id) waiting for the reply that frees their slot. */
  private readonly givenUp = new Map<number, number>();
  private lastSeq = 1;
  private readonly deadlines = new DeadlineTimer((now) => this.expireDue(now));
  /** Commands to fail when a signal aborts; weak, so that a finished call's signal is not kept. */
  private readonly bySignal = new WeakMap<CancelSignal, Set<number>>();

  /**
   * @param timeoutError the error a command past its deadline fails with.
   * @param retire called with the number of commands that left for good (answered, never sent, or
   *   the channel closed): their slots are free again.
   */
  constructor(
    private readonly timeoutError: (entry: PendingCommand<Spec>) => Error,
    private readonly retire: (count: number) => void = () => undefined,
  ) {}

  /** Commands whose callers still wait for the reply. */
  get size(): number {
    return this.entries.size;
  }

  /** Commands given up on whose replies have not come yet (each still holds its slot). */
  get givenUpCount(): number {
    return this.givenUp.size;
  }

  /** The next seq: u32 wrap-around, skipping 0 and seqs still in use (a reply must be unambiguous). */
  allocateSeq(): number {
    do {
      this.lastSeq = (this.lastSeq + 1) >>> 0;
    } while (this.entries.has(this.lastSeq) || this.givenUp.has(this.lastSeq) || this.lastSeq === 0);
    return this.lastSeq;
  }

  /** Adds a command about to be sent; it holds one slot from now until it is retired. */
  add(seq: number, entry: PendingCommand<Spec>): void {
    this.entries.set(seq, entry);
    this.deadlines.arm(entry.deadline);
  }

  /** The command a reply with `seq` answers, left in place. */
  get(seq: number): PendingCommand<Spec> | undefined {
    return this.entries.get(seq);
  }

  /** True while the caller of `seq` still waits (false once it gave up or was answered). */
  isWaited(seq: number): boolean {
    return this.entries.has(seq);
  }

  /** Removes and returns the command a reply with `seq` answers; its slot is free again. */
  take(seq: number): PendingCommand<Spec> | undefined {
    const entry = this.entries.get(seq);
    if (entry !== undefined) {
      this.entries.delete(seq);
      this.retire(1);
    }
    return entry;
  }

  /**
   * The reply with `seq` answers a command given up on: removes it (its slot is free again) and
   * returns its command id, for the caller to check against the reply's; undefined when `seq` was
   * not given up.
   */
  takeGivenUp(seq: number): number | undefined {
    const id = this.givenUp.get(seq);
    if (id !== undefined) {
      this.givenUp.delete(seq);
      this.retire(1);
    }
    return id;
  }

  /** Forgets a command given up on before it was written: no reply will come, its slot is free. */
  forgetUnsent(seq: number): void {
    if (this.givenUp.delete(seq)) this.retire(1);
  }

  /**
   * Fails command `seq` with the signal's reason if `signal` aborts before {@link unwatch}. One
   * listener per signal, however many commands it covers: a session's signal covers every command
   * of the session, and a listener added and removed per command showed in profiles.
   */
  watch(signal: CancelSignal, seq: number): void {
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

  unwatch(signal: CancelSignal, seq: number): void {
    this.bySignal.get(signal)?.delete(seq);
  }

  /** Fails the command with `reason` now; it waits for its reply without its caller (abort). */
  abandon(seq: number, reason: Error): void {
    const entry = this.entries.get(seq);
    if (entry === undefined) return;
    this.giveUp(seq, entry);
    entry.reject(reason);
  }

  /** Fails every command with the error `errorOf` makes for it (the channel closed). */
  failAll(errorOf: (entry: PendingCommand<Spec>) => Error): void {
    this.deadlines.cancel();
    const count = this.entries.size + this.givenUp.size;
    this.givenUp.clear();
    for (const [seq, entry] of this.entries) {
      this.entries.delete(seq);
      entry.reject(errorOf(entry));
    }
    if (count > 0) this.retire(count);
  }

  private giveUp(seq: number, entry: PendingCommand<Spec>): void {
    this.entries.delete(seq);
    this.givenUp.set(seq, entry.id);
  }

  private expireDue(now: number): number {
    let next = Number.POSITIVE_INFINITY;
    for (const [seq, entry] of this.entries) {
      if (entry.deadline > now) {
        next = Math.min(next, entry.deadline);
        continue;
      }
      this.giveUp(seq, entry);
      entry.reject(this.timeoutError(entry));
    }
    return next;
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
