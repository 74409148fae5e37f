// SPDX-License-Identifier: Apache-2.0
/**
 * The SDK's only retry logic (conventions §5, AIP-194): a call is retried automatically only when
 * its method is idempotent (a read or an idempotent change, IDEMPOTENT_METHODS) and failed with
 * UNAVAILABLE, a bounded number of times, with exponential
 * backoff and jitter that never undercuts the server's RetryInfo delay. Every unary RPC and every
 * session command goes through {@link withRetry}; nothing else in the SDK retries.
 *
 * @see https://google.aip.dev/194
 */
import { abortError, StatusCode, toSdkError } from "./errors.js";
import type { KvmiBridgeError } from "./errors.js";

/** How the SDK retries idempotent methods that fail with UNAVAILABLE. */
export interface RetryPolicy {
  /** Total attempts including the first, at least 1 (1 disables retries). Default 4. */
  readonly maxAttempts: number;
  /** Backoff before the second attempt, in ms. Default 50. */
  readonly initialBackoffMs: number;
  /** Growth factor of the backoff per attempt. Default 2. */
  readonly multiplier: number;
  /** Largest backoff, in ms; also caps a RetryInfo delay. Default 2000. */
  readonly maxBackoffMs: number;
  /** Relative jitter in 0..1: the backoff is scaled by a random factor in [1 − jitter, 1 + jitter]. Default 0.2. */
  readonly jitter: number;
}

/** The default {@link RetryPolicy}: 4 attempts, 50 ms doubling up to 2 s, ±20 % jitter. */
export const DEFAULT_RETRY_POLICY: RetryPolicy = Object.freeze({
  maxAttempts: 4,
  initialBackoffMs: 50,
  multiplier: 2,
  maxBackoffMs: 2000,
  jitter: 0.2,
});

/**
 * Whether a failed attempt may be retried: only idempotent methods, only UNAVAILABLE (AIP-194), and
 * never a session that is gone (`KVMI_SESSION_LOST`: the caller must attach again).
 */
export function isRetryable(err: KvmiBridgeError, idempotent: boolean): boolean {
  return idempotent && err.code === StatusCode.UNAVAILABLE && err.reason !== "KVMI_SESSION_LOST";
}

/**
 * The delay before the next attempt, in ms.
 * @param failedAttempt the attempt that just failed, 1-based.
 * @param err its error; `details.retryDelayMs` (RetryInfo) is a lower bound.
 * @param random a number in [0, 1) for the jitter.
 */
export function retryDelayMs(policy: RetryPolicy, failedAttempt: number, err: KvmiBridgeError, random: number): number {
  const exponential = policy.initialBackoffMs * policy.multiplier ** Math.max(0, failedAttempt - 1);
  const capped = Math.min(policy.maxBackoffMs, exponential);
  const jittered = capped * (1 - policy.jitter + 2 * policy.jitter * random);
  const serverMs = err.details.retryDelayMs ?? 0;
  return Math.round(Math.min(policy.maxBackoffMs, Math.max(jittered, serverMs)));
}

/** Options of {@link withRetry}. */
export interface WithRetryOptions {
  /** True for methods that may run twice without further effect (IDEMPOTENT_METHODS). Others are never retried. */
  readonly idempotent: boolean;
  readonly policy: RetryPolicy;
  /** Stops waiting and retrying; the call rejects with CancelledError. */
  readonly signal?: AbortSignal | undefined;
  /** Randomness for the jitter (tests pass a constant). */
  readonly random?: () => number;
  /** Waits `ms` (tests pass a fake). */
  readonly sleep?: (ms: number, signal: AbortSignal | undefined) => Promise<void>;
  /** False when the transport is gone for good (a closed session): no retry then. */
  readonly canRetry?: () => boolean;
}

/**
 * Runs `attempt` and retries it as {@link RetryPolicy} says. Every error is normalized with
 * `toSdkError`, so callers always see a `KvmiBridgeError`.
 * @throws KvmiBridgeError the last attempt's error, or CancelledError when `signal` fires.
 */
export async function withRetry<T>(attempt: (n: number) => Promise<T>, options: WithRetryOptions): Promise<T> {
  const { policy, signal } = options;
  const sleep = options.sleep ?? abortableSleep;
  const random = options.random ?? Math.random;
  for (let n = 1; ; n++) {
    if (signal?.aborted) throw abortError(signal);
    try {
      return await attempt(n);
    } catch (raw) {
      const err = toSdkError(raw);
      const more = n < Math.max(1, policy.maxAttempts) && (options.canRetry?.() ?? true);
      if (!more || !isRetryable(err, options.idempotent)) throw err;
      await sleep(retryDelayMs(policy, n, err, random()), signal);
    }
  }
}

/** Resolves after `ms`, or rejects with CancelledError when `signal` fires first. */
export function abortableSleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortError(signal));
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(abortError(signal!));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
