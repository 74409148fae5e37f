// SPDX-License-Identifier: Apache-2.0
/**
 * Per-identity and bridge-wide limits (README, "Quotas and bounded memory"): Session streams,
 * WatchVms streams, RPCs and session commands in flight, and bulk bytes in flight (BatchReadMemory
 * ranges, DumpMemory windows). A caller over a limit gets RESOURCE_EXHAUSTED with a QuotaFailure
 * naming the limit ({@link QuotaExceededError}); everyone else keeps being served, which is the
 * point: one misbehaving client must not starve the others of the bridge's memory or event loop.
 *
 * A lease is taken when the resource is and given back exactly once (releasing twice is a no-op),
 * so that the error paths of a stream cannot leak or double-free a slot.
 */
import { QuotaExceededError } from "../mapping/bridge-error.js";

/** The limits, as configured (`--max-sessions-per-identity`, …). */
export interface QuotaLimits {
  readonly maxSessionsPerIdentity: number;
  readonly maxSessions: number;
  readonly maxWatchersPerIdentity: number;
  readonly maxWatchers: number;
  /** Unary RPCs plus session commands in flight. */
  readonly maxInflightPerIdentity: number;
  readonly maxInflight: number;
  /** Bytes of bulk reads (batches, dump windows) held at once. */
  readonly maxBulkBytesPerIdentity: number;
  readonly maxBulkBytes: number;
}

/** Limits that bound nothing, for tests of other behaviour and for embedding. */
export const UNLIMITED: QuotaLimits = {
  maxSessionsPerIdentity: Infinity,
  maxSessions: Infinity,
  maxWatchersPerIdentity: Infinity,
  maxWatchers: Infinity,
  maxInflightPerIdentity: Infinity,
  maxInflight: Infinity,
  maxBulkBytesPerIdentity: Infinity,
  maxBulkBytes: Infinity,
};

/** What a quota counts. */
export type QuotaKind = "sessions" | "watchers" | "inflight" | "bulkBytes";

const LIMIT_NAMES: Readonly<Record<QuotaKind, readonly [perIdentity: keyof QuotaLimits, total: keyof QuotaLimits, what: string]>> = {
  sessions: ["maxSessionsPerIdentity", "maxSessions", "Session streams"],
  watchers: ["maxWatchersPerIdentity", "maxWatchers", "WatchVms streams"],
  inflight: ["maxInflightPerIdentity", "maxInflight", "calls and session commands in flight"],
  bulkBytes: ["maxBulkBytesPerIdentity", "maxBulkBytes", "bytes of bulk memory reads in flight"],
};

/** A held amount of one quota; {@link release} gives it back (once). */
export interface QuotaLease {
  release(): void;
}

const NO_LEASE: QuotaLease = { release: () => undefined };

/** The bridge's counters against {@link QuotaLimits}. */
export class Quotas {
  private readonly totals: Record<QuotaKind, number> = { sessions: 0, watchers: 0, inflight: 0, bulkBytes: 0 };
  private readonly byIdentity = new Map<string, Record<QuotaKind, number>>();

  constructor(readonly limits: QuotaLimits) {}

  /**
   * Takes `amount` of `kind` for `identity`.
   * @throws QuotaExceededError (RESOURCE_EXHAUSTED) when the identity's or the bridge's limit would be passed.
   */
  acquire(kind: QuotaKind, identity: string, amount = 1): QuotaLease {
    if (amount <= 0) return NO_LEASE;
    const [perIdentityName, totalName, what] = LIMIT_NAMES[kind];
    const perIdentity = this.limits[perIdentityName];
    const total = this.limits[totalName];
    const mine = this.byIdentity.get(identity);
    const held = mine?.[kind] ?? 0;
    if (held + amount > perIdentity) {
      throw new QuotaExceededError(`identity:${identity}`, perIdentityName, `${identity} has ${held} ${what} of at most ${perIdentity}; end some or retry later`);
    }
    if (this.totals[kind] + amount > total) {
      throw new QuotaExceededError("bridge", totalName, `the bridge serves ${this.totals[kind]} ${what} of at most ${total}; retry later`);
    }
    const counters = mine ?? { sessions: 0, watchers: 0, inflight: 0, bulkBytes: 0 };
    if (mine === undefined) this.byIdentity.set(identity, counters);
    counters[kind] += amount;
    this.totals[kind] += amount;
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        counters[kind] -= amount;
        this.totals[kind] -= amount;
        if (counters.sessions + counters.watchers + counters.inflight + counters.bulkBytes === 0 && this.byIdentity.get(identity) === counters) {
          this.byIdentity.delete(identity);
        }
      },
    };
  }

  /** What `identity` holds now (tests, metrics). */
  held(kind: QuotaKind, identity?: string): number {
    return identity === undefined ? this.totals[kind] : (this.byIdentity.get(identity)?.[kind] ?? 0);
  }
}
