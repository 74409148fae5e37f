// SPDX-License-Identifier: Apache-2.0
/**
 * Seeded pseudo-random numbers for the workload. `Math.random` is never used: two guests created with
 * the same seed must make the same decisions, so tests can compare their ground truth.
 */

/** A deterministic generator of floats in [0, 1). */
export type Prng = () => number;

/**
 * mulberry32 (Tommy Ettinger, public domain): 32-bit state, full period 2^32, good enough to spread
 * syscall choices; not for anything security related.
 */
export function createPrng(seed: number): Prng {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Derives an independent stream per vCPU so one vCPU's progress never shifts another's choices. */
export function deriveSeed(seed: number, stream: number): number {
  return (Math.imul(seed >>> 0, 0x9e3779b1) ^ Math.imul(stream + 1, 0x85ebca77)) >>> 0;
}
