// SPDX-License-Identifier: Apache-2.0
// The retry policy: only idempotent methods, only UNAVAILABLE, bounded, backoff with jitter that
// never undercuts RetryInfo.
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { IDEMPOTENT_METHODS } from "./dispatch.js";
import { CancelledError, createError, InvalidArgumentError, StatusCode, UnavailableError } from "./errors.js";
import type { KvmiBridgeError } from "./errors.js";
import { DEFAULT_RETRY_POLICY, isRetryable, retryDelayMs, withRetry } from "./retry.js";
import type { RetryPolicy } from "./retry.js";

const unavailable = (retryDelayMs?: number, reason = "KVMI_TRY_AGAIN"): KvmiBridgeError =>
  createError({ code: StatusCode.UNAVAILABLE, message: "try again", reason, details: { retryDelayMs } });

describe("IDEMPOTENT_METHODS", () => {
  it("holds the reads and the idempotent changes, as the proto's guest_effect options declare them", () => {
    // Written from introspection_service.proto: not PauseVcpu, InjectException, ReleaseVm, nor the streams.
    expect([...IDEMPOTENT_METHODS].sort()).toEqual(
      [
        "getVm", "listVms", "getVersion", "checkCommand", "checkEvent", "getVmInfo", "readPhysicalMemory", "getVcpuInfo",
        "getRegisters", "getCpuid", "getMaxGfn", "getXcr", "getXsave", "getMtrrType", "translateGva", "getPageAccess", "batchReadMemory",
        "controlVmEvents", "writePhysicalMemory", "controlVcpuEvents", "setRegisters", "controlCleanup", "controlCr",
        "setXsave", "controlMsr", "setPageAccess", "controlSingleStep",
      ].sort(), // prettier-ignore
    );
  });
});

describe("isRetryable", () => {
  it("retries only UNAVAILABLE of idempotent calls, never a lost session", () => {
    expect(isRetryable(unavailable(), true)).toBe(true);
    expect(isRetryable(unavailable(), false)).toBe(false);
    expect(isRetryable(unavailable(undefined, "KVMI_SESSION_LOST"), true)).toBe(false);
    for (const code of [1, 2, 3, 4, 5, 8, 9, 13]) expect(isRetryable(createError({ code, message: "" }), true)).toBe(false);
  });
});

describe("retryDelayMs", () => {
  const policy: RetryPolicy = { ...DEFAULT_RETRY_POLICY, jitter: 0 };

  it("grows exponentially up to the cap", () => {
    expect([1, 2, 3, 4, 5, 6, 7].map((n) => retryDelayMs(policy, n, unavailable(), 0.5))).toEqual([50, 100, 200, 400, 800, 1600, 2000]);
  });

  it("never waits less than RetryInfo asks, but at most the cap", () => {
    expect(retryDelayMs(policy, 1, unavailable(100), 0.5)).toBe(100);
    expect(retryDelayMs(policy, 4, unavailable(100), 0.5)).toBe(400);
    expect(retryDelayMs(policy, 1, unavailable(60_000), 0.5)).toBe(2000);
  });

  it("stays within the jitter band and above RetryInfo (property)", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 20 }),
        fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }),
        fc.double({ min: 0, max: 1, noNaN: true }),
        fc.option(fc.integer({ min: 0, max: 5000 }), { nil: undefined }),
        (attempt, random, jitter, server) => {
          const p = { ...DEFAULT_RETRY_POLICY, jitter };
          const base = Math.min(p.maxBackoffMs, p.initialBackoffMs * p.multiplier ** (attempt - 1));
          const delay = retryDelayMs(p, attempt, unavailable(server), random);
          expect(delay).toBeLessThanOrEqual(p.maxBackoffMs);
          expect(delay).toBeGreaterThanOrEqual(Math.min(p.maxBackoffMs, Math.max(Math.floor(base * (1 - jitter)), server ?? 0)));
          expect(delay).toBeLessThanOrEqual(Math.max(Math.ceil(base * (1 + jitter)), Math.min(p.maxBackoffMs, server ?? 0)));
        },
      ),
    );
  });
});

describe("withRetry", () => {
  const sleeps: number[] = [];
  const sleep = async (ms: number) => void sleeps.push(ms);

  it("retries an idempotent read on UNAVAILABLE until it succeeds", async () => {
    sleeps.length = 0;
    let calls = 0;
    const value = await withRetry(
      async () => {
        if (++calls < 3) throw unavailable(100);
        return "ok";
      },
      { idempotent: true, policy: DEFAULT_RETRY_POLICY, sleep, random: () => 0.5 },
    );
    expect(value).toBe("ok");
    expect(calls).toBe(3);
    expect(sleeps).toEqual([100, 100]);
  });

  it("gives up after maxAttempts with the last error", async () => {
    let calls = 0;
    const err = await withRetry(
      async () => {
        calls++;
        throw unavailable();
      },
      { idempotent: true, policy: { ...DEFAULT_RETRY_POLICY, maxAttempts: 3 }, sleep },
    ).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnavailableError);
    expect(calls).toBe(3);
  });

  it("never retries a mutation, another code, or a transport that is gone", async () => {
    for (const [idempotent, error, canRetry] of [
      [false, unavailable(), true],
      [true, createError({ code: StatusCode.INVALID_ARGUMENT, message: "bad" }), true],
      [true, unavailable(), false],
    ] as const) {
      let calls = 0;
      await expect(
        withRetry(
          async () => {
            calls++;
            throw error;
          },
          { idempotent, policy: DEFAULT_RETRY_POLICY, sleep, canRetry: () => canRetry },
        ),
      ).rejects.toBe(error);
      expect(calls).toBe(1);
    }
  });

  it("normalizes raw errors", async () => {
    const err = await withRetry(
      async () => {
        throw Object.assign(new Error("3 INVALID_ARGUMENT: x"), { code: 3, details: "x", metadata: undefined });
      },
      { idempotent: true, policy: DEFAULT_RETRY_POLICY, sleep },
    ).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InvalidArgumentError);
  });

  it("stops waiting when the signal fires", async () => {
    const controller = new AbortController();
    const started = Date.now();
    const pending = withRetry(
      async () => {
        throw unavailable(10_000);
      },
      { idempotent: true, policy: { ...DEFAULT_RETRY_POLICY, maxBackoffMs: 10_000 }, signal: controller.signal },
    );
    setTimeout(() => controller.abort(), 20);
    await expect(pending).rejects.toBeInstanceOf(CancelledError);
    expect(Date.now() - started).toBeLessThan(2000);
  });
});
