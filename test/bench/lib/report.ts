// SPDX-License-Identifier: Apache-2.0
/** Collects the benchmark's figures and renders the comparison table. */
import { concat, median, percentileSorted, sorted, summarizeRun } from "./stats.js";
import type { LatencyRun } from "./stats.js";

/** A latency figure: median of the run medians, and p50/p99 over all samples of all runs. */
export interface LatencyFigure {
  readonly kind: "latency";
  readonly label: string;
  readonly unit: "µs";
  readonly median: number;
  readonly p50: number;
  readonly p99: number;
  readonly samples: number;
  readonly runs: readonly LatencyRun[];
}

/** A throughput figure: median over runs. */
export interface RateFigure {
  readonly kind: "rate";
  readonly label: string;
  readonly unit: string;
  readonly median: number;
  readonly min: number;
  readonly max: number;
  readonly runs: readonly number[];
}

export type Figure = LatencyFigure | RateFigure;

/** Every measurement of the benchmark; only recorded while {@link recording} (not in warm-up). */
export class Results {
  recording = false;
  private readonly latencies = new Map<string, { label: string; runs: LatencyRun[]; samples: Float64Array[] }>();
  private readonly rates = new Map<string, { label: string; unit: string; runs: number[] }>();

  latency(id: string, label: string, samples: Float64Array): void {
    if (!this.recording) return;
    let entry = this.latencies.get(id);
    if (entry === undefined) this.latencies.set(id, (entry = { label, runs: [], samples: [] }));
    entry.runs.push(summarizeRun(samples));
    entry.samples.push(samples);
  }

  rate(id: string, label: string, unit: string, value: number): void {
    if (!this.recording) return;
    let entry = this.rates.get(id);
    if (entry === undefined) this.rates.set(id, (entry = { label, unit, runs: [] }));
    entry.runs.push(value);
  }

  figure(id: string): Figure | undefined {
    const l = this.latencies.get(id);
    if (l !== undefined) {
      const all = sorted(concat(l.samples));
      return {
        kind: "latency",
        label: l.label,
        unit: "µs",
        median: median(l.runs.map((r) => r.p50)),
        p50: percentileSorted(all, 50),
        p99: percentileSorted(all, 99),
        samples: all.length,
        runs: l.runs,
      };
    }
    const r = this.rates.get(id);
    if (r !== undefined) {
      return { kind: "rate", label: r.label, unit: r.unit, median: median(r.runs), min: Math.min(...r.runs), max: Math.max(...r.runs), runs: r.runs };
    }
    return undefined;
  }

  all(): Record<string, Figure> {
    const out: Record<string, Figure> = {};
    for (const id of [...this.latencies.keys(), ...this.rates.keys()]) out[id] = this.figure(id)!;
    return out;
  }
}

/** Formats a figure for the table. */
export function formatFigure(f: Figure | undefined): string {
  if (f === undefined) return "n/a";
  if (f.kind === "latency") return `${f.median.toFixed(0)} µs (p50 ${f.p50.toFixed(0)}, p99 ${f.p99.toFixed(0)})`;
  const digits = f.median >= 100 ? 0 : 1;
  return `${f.median.toFixed(digits)} ${f.unit} (${f.min.toFixed(digits)}–${f.max.toFixed(digits)})`;
}

/** Renders rows as a plain-text table with a header rule. */
export function renderTable(header: readonly string[], rows: ReadonlyArray<readonly string[]>): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: readonly string[]): string => cells.map((c, i) => c.padEnd(widths[i]!)).join(" | ").trimEnd();
  return [line(header), widths.map((w) => "-".repeat(w)).join("-|-"), ...rows.map(line)].join("\n");
}
