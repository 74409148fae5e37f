// SPDX-License-Identifier: Apache-2.0
/**
 * A rate-limited logger for paths a guest can trigger (events, faults, malformed frames): a guest
 * that traps a million times a second must not turn into a million log lines (conventions §9).
 *
 * Each key (level + message, optionally + some fields such as `vm`) owns a token bucket that is
 * refilled to `burst` tokens once per `intervalMs` (Linux `___ratelimit()` semantics), with
 * Firecracker's per-callsite defaults of 10 lines per 5 s. Refilling whole windows instead of
 * continuously keeps a sustained storm to one summary per window. Lines beyond the budget are counted, not written; the
 * next line of that key after the window (or a timer, or {@link RateLimitedLogger.flush}) writes
 * one summary `{"suppressed":N,"suppressedMsg":"..."} suppressed N messages` at the same level.
 * Count events in metrics; this only keeps the log readable.
 *
 * @see https://github.com/firecracker-microvm/firecracker/blob/main/src/vmm/src/logger/rate_limited.rs
 * @see https://github.com/torvalds/linux/blob/master/lib/ratelimit.c
 */
import type { Logger } from "@kvmi/kvm-bridge";

type Level = "trace" | "debug" | "info" | "warn" | "error";

/** Options of {@link createRateLimitedLogger}. */
export interface RateLimitOptions {
  /** Lines written per key and window. Default 10. */
  readonly burst?: number;
  /** Window length in ms. Default 5000. */
  readonly intervalMs?: number;
  /**
   * Fields (from child bindings or the call) that are part of the key, e.g. `["vm"]` gives every
   * VM its own budget so one noisy guest cannot hide another. Default: none (per message).
   */
  readonly keyFields?: readonly string[];
  /** Most keys tracked; the least recently used one is summarised and dropped. Default 1024. */
  readonly maxKeys?: number;
  /** Writes pending summaries from an unref'd timer once their window ends. Default true. */
  readonly autoFlush?: boolean;
  /** Clock in ms, for tests. Default `Date.now`. */
  readonly now?: () => number;
}

/** A {@link Logger} whose every level is rate-limited; children share the buckets. */
export interface RateLimitedLogger extends Logger {
  child(bindings: Record<string, unknown>): RateLimitedLogger;
  /** Writes the summary of every key with suppressed lines now. */
  flush(): void;
  /** Flushes and stops the timer; later calls still work but are summarised only on flush. */
  close(): void;
  /** Lines suppressed since creation, over all keys. */
  readonly suppressedTotal: number;
}

interface Bucket {
  readonly level: Level;
  readonly msg: string;
  windowStart: number;
  written: number;
  dropped: number;
  /** The logger of the last suppressed line, so the summary carries its bindings. */
  target: Logger;
}

class Limiter {
  readonly buckets = new Map<string, Bucket>();
  suppressedTotal = 0;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  readonly burst: number;
  readonly intervalMs: number;
  readonly keyFields: readonly string[];
  private readonly maxKeys: number;
  private readonly autoFlush: boolean;
  private readonly now: () => number;

  constructor(options: RateLimitOptions) {
    this.burst = options.burst ?? 10;
    this.intervalMs = options.intervalMs ?? 5_000;
    this.keyFields = options.keyFields ?? [];
    this.maxKeys = options.maxKeys ?? 1_024;
    this.autoFlush = options.autoFlush ?? true;
    this.now = options.now ?? (() => Date.now());
    if (!(this.burst >= 1 && this.intervalMs > 0 && this.maxKeys >= 1)) {
      throw new RangeError("rate limit needs burst >= 1, intervalMs > 0 and maxKeys >= 1");
    }
  }

  log(target: Logger, bindings: Readonly<Record<string, unknown>>, level: Level, fields: Record<string, unknown>, msg = ""): void {
    const isLevelEnabled = (target as { isLevelEnabled?: (level: string) => boolean }).isLevelEnabled;
    if (typeof isLevelEnabled === "function" && !isLevelEnabled.call(target, level)) return;
    let key = `${level}\u0000${msg}`;
    for (const field of this.keyFields) key += `\u0000${String(fields[field] ?? bindings[field] ?? "")}`;

    const t = this.now();
    let bucket = this.buckets.get(key);
    if (bucket === undefined) {
      bucket = { level, msg, windowStart: t, written: 0, dropped: 0, target };
      this.evictIfFull();
    } else {
      this.buckets.delete(key); // Re-insert below: Map order is the LRU order.
      if (t - bucket.windowStart >= this.intervalMs) {
        this.summarise(bucket);
        bucket.windowStart = t;
        bucket.written = 0;
      }
    }
    this.buckets.set(key, bucket);

    if (bucket.written < this.burst) {
      bucket.written++;
      target[level](fields, msg);
      return;
    }
    bucket.dropped++;
    bucket.target = target;
    this.suppressedTotal++;
    this.arm();
  }

  flush(onlyEndedWindows: boolean): void {
    const t = this.now();
    for (const bucket of this.buckets.values()) {
      if (!onlyEndedWindows || t - bucket.windowStart >= this.intervalMs) this.summarise(bucket);
    }
  }

  close(): void {
    this.closed = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    this.flush(false);
  }

  private summarise(bucket: Bucket): void {
    if (bucket.dropped === 0) return;
    const count = bucket.dropped;
    bucket.dropped = 0;
    bucket.target[bucket.level]({ suppressed: count, suppressedMsg: bucket.msg }, `suppressed ${count} messages`);
  }

  private evictIfFull(): void {
    while (this.buckets.size >= this.maxKeys) {
      const [oldestKey, oldest] = this.buckets.entries().next().value as [string, Bucket];
      this.summarise(oldest);
      this.buckets.delete(oldestKey);
    }
  }

  private arm(): void {
    if (!this.autoFlush || this.closed || this.timer !== undefined) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.flush(true);
      if ([...this.buckets.values()].some((bucket) => bucket.dropped > 0)) this.arm();
    }, this.intervalMs);
    this.timer.unref();
  }
}

function wrap(limiter: Limiter, target: Logger, bindings: Readonly<Record<string, unknown>>): RateLimitedLogger {
  const at =
    (level: Level) =>
    (fields: Record<string, unknown>, msg?: string): void =>
      limiter.log(target, bindings, level, fields, msg);
  return {
    trace: at("trace"),
    debug: at("debug"),
    info: at("info"),
    warn: at("warn"),
    error: at("error"),
    child: (more) => wrap(limiter, target.child(more), { ...bindings, ...more }),
    flush: () => limiter.flush(false),
    close: () => limiter.close(),
    get suppressedTotal() {
      return limiter.suppressedTotal;
    },
  };
}

/**
 * Wraps a logger so that every level is rate-limited per key. Use it only where a guest (or a
 * remote peer) decides how often a line is logged; lifecycle logs go to the plain logger.
 *
 * Messages must be constant strings with the variable parts in fields (conventions §9), because
 * the message is the key: `log.warn({ vm, gpa }, "page fault not handled")`.
 *
 * @throws RangeError for a non-positive `burst`, `intervalMs` or `maxKeys`.
 */
export function createRateLimitedLogger(logger: Logger, options: RateLimitOptions = {}): RateLimitedLogger {
  return wrap(new Limiter(options), logger, {});
}
