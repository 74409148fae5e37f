// SPDX-License-Identifier: Apache-2.0
/**
 * How busy a process's event loop is during a measurement: its utilization (the share of the
 * window spent running JavaScript and callbacks rather than waiting for I/O,
 * `performance.eventLoopUtilization`) and how late a 1 ms timer fires (`monitorEventLoopDelay`),
 * which shows long stretches the loop cannot leave (a burst of events parsed and written in one
 * turn). Used on the event phases, where events of several vCPUs serialize on one loop per process.
 */
import { monitorEventLoopDelay, performance } from "node:perf_hooks";
import type { EventLoopUtilization, IntervalHistogram } from "node:perf_hooks";

/** The histogram's timer period (ms); its samples are the time between two firings. */
const RESOLUTION_MS = 1;

/** One window's figures (delays in µs beyond the timer's period). */
export interface LoopStats {
  readonly utilization: number;
  readonly delayP50Us: number;
  readonly delayP99Us: number;
  readonly delayMaxUs: number;
}

export class LoopMeter {
  private histogram: IntervalHistogram | undefined;
  private elu0: EventLoopUtilization | undefined;

  start(): void {
    this.histogram?.disable();
    this.histogram = monitorEventLoopDelay({ resolution: RESOLUTION_MS });
    this.histogram.enable();
    this.elu0 = performance.eventLoopUtilization();
  }

  stop(): LoopStats {
    const h = this.histogram;
    if (h === undefined || this.elu0 === undefined) throw new Error("LoopMeter.stop without start");
    h.disable();
    this.histogram = undefined;
    // Samples are the time between firings (ns): what exceeds the period is the loop's delay.
    const late = (ns: number): number => Math.max(0, ns / 1000 - RESOLUTION_MS * 1000);
    const utilization = performance.eventLoopUtilization(this.elu0).utilization;
    return { utilization, delayP50Us: late(h.percentile(50)), delayP99Us: late(h.percentile(99)), delayMaxUs: late(h.max) };
  }
}

/** Median of each figure over several windows. */
export function medianStats(windows: readonly LoopStats[]): LoopStats {
  const median = (pick: (s: LoopStats) => number): number => {
    const v = windows.map(pick).sort((a, b) => a - b);
    return v.length === 0 ? Number.NaN : v.length % 2 === 1 ? v[(v.length - 1) / 2]! : (v[v.length / 2 - 1]! + v[v.length / 2]!) / 2;
  };
  return { utilization: median((s) => s.utilization), delayP50Us: median((s) => s.delayP50Us), delayP99Us: median((s) => s.delayP99Us), delayMaxUs: median((s) => s.delayMaxUs) };
}
