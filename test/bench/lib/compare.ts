// SPDX-License-Identifier: Apache-2.0
/** Bridge figures against their baselines: ratios, targets, the fastest bulk size. */
import { median } from "./stats.js";
import type { Figure, Results } from "./report.js";

export interface Comparison {
  readonly metric: string;
  readonly bridge: string;
  readonly baseline: string;
  /** "≤" for latencies (bridge / baseline), "≥" for throughput (bridge / baseline); undefined: informational. */
  readonly target: { readonly op: "≤" | "≥"; readonly ratio: number } | undefined;
}

export interface ComparisonResult {
  readonly metric: string;
  readonly bridgeId: string;
  readonly baselineId: string;
  readonly bridge: Figure | undefined;
  readonly baseline: Figure | undefined;
  /** Median over runs of the per-run ratio, and the runs' range. */
  readonly ratio: number;
  readonly ratioRange: readonly [number, number] | undefined;
  readonly target: string;
  readonly pass: boolean | undefined;
}

export function bestOf(results: Results, prefix: string, sizes: readonly number[]): number {
  let best = sizes[0]!;
  for (const size of sizes) if ((results.figure(`${prefix}.${size}`)?.median ?? 0) > (results.figure(`${prefix}.${best}`)?.median ?? 0)) best = size;
  return best;
}

/** A figure's value in each run: the run's median latency, or the run's rate. */
function perRun(f: Figure): number[] {
  return f.kind === "latency" ? f.runs.map((r) => r.p50) : [...f.runs];
}

/**
 * The ratio of two figures: the median over runs of bridge ÷ baseline in the same run. Bridge and
 * baseline of one run are measured back to back, so the machine's slow drifts (other tenants, CPU
 * clocks) cancel in each pair; a ratio of medians would pair a bridge run with some other run's
 * baseline.
 */
function pairedRatios(bridge: Figure, baseline: Figure): number[] {
  const a = perRun(bridge);
  const b = perRun(baseline);
  return a.slice(0, Math.min(a.length, b.length)).map((v, i) => v / b[i]!);
}

export function compare(results: Results, c: Comparison): ComparisonResult {
  const bridge = results.figure(c.bridge);
  const baseline = results.figure(c.baseline);
  const ratios = bridge !== undefined && baseline !== undefined ? pairedRatios(bridge, baseline) : [];
  const ratio = ratios.length > 0 ? median(ratios) : Number.NaN;
  const pass = c.target === undefined || Number.isNaN(ratio) ? undefined : c.target.op === "≤" ? ratio <= c.target.ratio : ratio >= c.target.ratio;
  return {
    metric: c.metric,
    bridgeId: c.bridge,
    baselineId: c.baseline,
    bridge,
    baseline,
    ratio,
    ratioRange: ratios.length > 0 ? [Math.min(...ratios), Math.max(...ratios)] : undefined,
    target: c.target === undefined ? "(info)" : `${c.target.op} ${c.target.ratio.toFixed(2)}×`,
    pass,
  };
}
