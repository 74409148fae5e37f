// SPDX-License-Identifier: Apache-2.0
/**
 * Summarises a V8 `.cpuprofile` (as written by `node --cpu-prof`): self time per function and per
 * area of the code (grpc-js, protobuf-es, the bridge's packages, node internals, GC, idle).
 */
import { readFileSync } from "node:fs";

interface CallFrame {
  readonly functionName: string;
  readonly url: string;
  readonly lineNumber: number;
}

interface ProfileNode {
  readonly id: number;
  readonly callFrame: CallFrame;
}

interface CpuProfile {
  readonly nodes: readonly ProfileNode[];
  readonly startTime: number;
  readonly endTime: number;
  readonly samples: readonly number[];
  readonly timeDeltas: readonly number[];
}

/** One line of the summary. */
export interface ProfileEntry {
  readonly name: string;
  readonly selfMs: number;
  /** Share of the non-idle time. */
  readonly percent: number;
}

/** What {@link summarizeProfile} returns. */
export interface ProfileSummary {
  readonly file: string;
  readonly totalMs: number;
  readonly idleMs: number;
  readonly busyMs: number;
  readonly functions: readonly ProfileEntry[];
  readonly areas: readonly ProfileEntry[];
}

const AREAS: ReadonlyArray<readonly [string, RegExp]> = [
  ["grpc-js", /node_modules\/@grpc\/grpc-js\//],
  ["protobuf-es (runtime)", /node_modules\/@bufbuild\/protobuf\//],
  ["proto/gen (generated messages)", /\/proto\/gen\//],
  ["pino / logging", /node_modules\/(pino|sonic-boom|fast-redact|@pinojs|thread-stream|quick-format|safe-stable)/],
  ["prom-client", /node_modules\/prom-client\//],
  ["service/src/rpc", /\/service\/src\/rpc\//],
  ["service/src/mapping", /\/service\/src\/mapping\//],
  ["service/src/vm", /\/service\/src\/vm\//],
  ["service/src/log", /\/service\/src\/log\//],
  ["service/src/metrics", /\/service\/src\/metrics\//],
  ["service/src (other)", /\/service\/src\//],
  ["kvm-bridge/src/wire (codec)", /\/kvm-bridge\/src\/wire\//],
  ["kvm-bridge/src/session (channel, framer)", /\/kvm-bridge\/src\/session\//],
  ["kvm-bridge/src/emulator", /\/kvm-bridge\/src\/emulator\//],
  ["kvm-bridge/src (other)", /\/kvm-bridge\/src\//],
  ["tsx", /node_modules\/tsx\//],
  ["other node_modules", /node_modules\//],
  ["node internals", /^node:/],
];

function areaOf(frame: CallFrame): string {
  if (frame.url === "") {
    if (frame.functionName === "(garbage collector)") return "GC";
    if (frame.functionName === "(idle)") return "(idle)";
    if (frame.functionName === "(program)") return "(program: V8/native, unattributed)";
    return `native: ${frame.functionName || "(anonymous)"}`;
  }
  for (const [name, pattern] of AREAS) if (pattern.test(frame.url)) return name;
  return "other";
}

function shortUrl(url: string): string {
  const i = url.search(/\/(node_modules|service|kvm-bridge|proto|test|clients)\//);
  return i >= 0 ? url.slice(i + 1) : url.replace(/^file:\/\//, "");
}

/** Reads and summarises `file`; `top` functions by self time. */
export function summarizeProfile(file: string, top = 20): ProfileSummary {
  const profile = JSON.parse(readFileSync(file, "utf8")) as CpuProfile;
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  // Each sample is charged the time since the previous one. The first sample's delta covers the
  // profiler starting up, so it is dropped, and a delta is capped at 10 sampling intervals so that
  // one stall of the sampler (a loaded machine) is not charged to whatever ran next.
  const deltas = [...profile.timeDeltas].slice(1).sort((a, b) => a - b);
  const cap = 10 * (deltas[deltas.length >> 1] ?? 1000);
  const selfUs = new Map<number, number>();
  for (let i = 1; i < profile.samples.length; i++) {
    const id = profile.samples[i]!;
    selfUs.set(id, (selfUs.get(id) ?? 0) + Math.min(cap, profile.timeDeltas[i] ?? 0));
  }
  const fn = new Map<string, number>();
  const area = new Map<string, number>();
  let idle = 0;
  let total = 0;
  for (const [id, us] of selfUs) {
    const frame = byId.get(id)!.callFrame;
    total += us;
    const a = areaOf(frame);
    if (a === "(idle)") {
      idle += us;
      continue;
    }
    area.set(a, (area.get(a) ?? 0) + us);
    const name = frame.url === "" ? frame.functionName : `${frame.functionName || "(anonymous)"} ${shortUrl(frame.url)}:${frame.lineNumber + 1}`;
    fn.set(name, (fn.get(name) ?? 0) + us);
  }
  const busy = total - idle;
  const entries = (m: Map<string, number>, n: number): ProfileEntry[] =>
    [...m.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, n)
      .map(([name, us]) => ({ name, selfMs: us / 1000, percent: busy > 0 ? (100 * us) / busy : 0 }));
  return { file, totalMs: total / 1000, idleMs: idle / 1000, busyMs: busy / 1000, functions: entries(fn, top), areas: entries(area, 30) };
}

/** Renders a summary as text lines. */
export function formatProfile(title: string, s: ProfileSummary): string {
  const lines = [
    `${title}: ${s.file}`,
    `  busy ${s.busyMs.toFixed(0)} ms of ${s.totalMs.toFixed(0)} ms sampled (idle ${s.idleMs.toFixed(0)} ms)`,
    "  self time by area:",
    ...s.areas.map((e) => `    ${e.percent.toFixed(1).padStart(5)}%  ${e.selfMs.toFixed(0).padStart(6)} ms  ${e.name}`),
    "  top functions by self time:",
    ...s.functions.map((e) => `    ${e.percent.toFixed(1).padStart(5)}%  ${e.selfMs.toFixed(0).padStart(6)} ms  ${e.name}`),
  ];
  return lines.join("\n");
}
