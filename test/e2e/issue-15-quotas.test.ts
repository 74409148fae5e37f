// SPDX-License-Identifier: Apache-2.0
/**
 * Issue 15, quotas and bounded memory, against the bridge as its own process (so that its RSS is
 * its own): a client misbehaves in each of the ways the issue found to wedge or bloat the bridge,
 * while a second client keeps calling GetVcpuInfo on another VM. The misbehaving client runs in a
 * process of its own too (support/misbehaving-client.ts), so that this process stays free to be
 * the neighbour and to measure; killing it makes the client vanish as a crashed tool would. Each
 * case asserts the refusals (RESOURCE_EXHAUSTED with a QuotaFailure naming the limit), that the
 * neighbour was answered throughout (every call, in time, as the client and the bridge saw it),
 * and that the bridge's RSS stayed bounded while the misbehaviour lasted long enough for an
 * unbounded bridge to blow far past the bound.
 *
 * - 2000 Session and 2000 WatchVms streams that never read, with VM changes fanned out to them;
 * - a session that sends BatchReadMemory commands and never reads the results, then cancels, and
 *   one that vanishes (SIGKILL): neither closes the VM's KVMI connection (docs/decisions/0140);
 * - a DumpMemory over a terabyte of unbacked addresses.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { Metadata } from "@grpc/grpc-js";
import type { ClientReadableStream, StatusObject } from "@grpc/grpc-js";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { Role, State } from "@kvmi/proto";
import type { DumpMemoryResponse } from "@kvmi/proto";
import { decodeStatus, readStatusDetails, STATUS_DETAILS_KEY } from "@kvmi/proto/status-details";
import { GrpcStatus, IntrospectionClient, waitUntil } from "../support/bridge-harness.js";
import { KVMI_SIM_BIN, REPO_ROOT, spawnNode, startBridgeProcess } from "../support/fault-tools.js";
import type { BridgeProcess, NodeChild } from "../support/fault-tools.js";
import type { MisbehaviourPlan } from "../support/misbehaving-client.js";

const MIB = 1024 * 1024;
/** Silent Session streams, and as many silent WatchVms streams. */
const STREAMS = 2000;
/**
 * RSS growth allowed per case. The unbounded versions grew by 13 to 35 MB per second, for minutes;
 * each case lasts long enough (MISBEHAVE_MS at least) for them to grow several times this.
 */
const RSS_BOUND_BYTES = 160 * MIB;
/** How long each misbehaviour goes on, at least, once under way. */
const MISBEHAVE_MS = 8_000;
/**
 * The neighbour's limits. The bridge wedged by the clients answered nothing for minutes;
 * a bridge that stays fair answers within milliseconds. But this test shares two cores with other
 * work (its own misbehaving client, the emulator, other suites running at once), and the bridge
 * needs some CPU seconds to refuse thousands of streams and fan 256 attaches out to hundreds of
 * receivers: on a machine loaded ten times over, that alone starved one neighbour call for 20 s
 * (measured: the bridge runnable, not blocked, getting a sixth of a core). So each call gets a
 * generous deadline and the slowest allowed is far below "minutes", while half of the calls must
 * still be quick and calls must keep completing; how much slower the bridge gets while a
 * neighbour misbehaves is measured by the benchmark's noisy-neighbour phase, as a ratio.
 */
const NEIGHBOUR_DEADLINE_MS = 60_000;
const NEIGHBOUR_SLOWEST_MS = 45_000;
const NEIGHBOUR_MEDIAN_MS = 1_000;
/** Calls the neighbour completes while a misbehaviour lasts, at least (one at least every 2 s). */
const neighbourCallsAtLeast = (spanMs: number): number => Math.max(3, Math.floor(spanMs / 2_000));
const MISBEHAVING_CLIENT = join(REPO_ROOT, "test/support/misbehaving-client.ts");
const LIMITS = {
  "--max-sessions-per-identity": "256",
  "--max-sessions": "512",
  "--max-watchers-per-identity": "128",
  "--max-watchers": "512",
  "--max-bulk-bytes-per-identity": String(16 * MIB),
  "--dump-max-hole-bytes": String(64 * MIB),
};

let dir: string;
let bridge: BridgeProcess;
let sim: NodeChild | undefined;
/** The neighbour's probe of the running case, stopped after it if the case failed first. */
let runningProbe: { stop(): Promise<unknown> } | undefined;
/** The misbehaving client of the running case. */
let noisy: NodeChild | undefined;
let vmUuids: string[] = [];
/** The well-behaved client, connected before any misbehaviour starts. */
let neighbourClient: IntrospectionClient;
const clients: IntrospectionClient[] = [];

const vmName = (i: number): string => `vms/${vmUuids[i]!}`;

function client(): IntrospectionClient {
  // Own subchannel per client: separate HTTP/2 connections, as separate tools would have.
  const c = new IntrospectionClient(bridge.target, undefined, { "grpc.use_local_subchannel_pool": 1 });
  clients.push(c);
  return c;
}

/** The bridge's resident set size; 0 once it is gone (a failed case's probe may outlive it). */
function rssBytes(): number {
  try {
    const kib = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${bridge.proc.child.pid}/status`, "utf8"))?.[1];
    return kib === undefined ? 0 : Number(kib) * 1024;
  } catch {
    return 0;
  }
}

/**
 * The well-behaved neighbour: GetVcpuInfo on VM 1, one after the other, until stopped. Every call
 * must succeed; returns the latencies and the RSS peak seen meanwhile.
 */
function neighbour(): { stop(): Promise<{ latenciesMs: number[]; peakRss: number; failures: string[] }> } {
  const probe = neighbourClient;
  let running = true;
  const latenciesMs: number[] = [];
  const failures: string[] = [];
  let peakRss = rssBytes();
  const sampler = setInterval(() => {
    if (bridge.proc.child.exitCode === null) peakRss = Math.max(peakRss, rssBytes());
  }, 50);
  const loop = (async () => {
    while (running) {
      const started = performance.now();
      try {
        const info = await probe.unary("getVcpuInfo", { name: `${vmName(1)}/vcpus/0` }, { deadlineMs: NEIGHBOUR_DEADLINE_MS });
        if (info === undefined) failures.push("empty response");
      } catch (err) {
        failures.push((err as Error).message);
      }
      latenciesMs.push(performance.now() - started);
      await new Promise((r) => setTimeout(r, 5));
    }
  })();
  const probeHandle = {
    stop: async () => {
      running = false;
      await loop;
      clearInterval(sampler);
      runningProbe = undefined;
      return { latenciesMs, peakRss: Math.max(peakRss, rssBytes()), failures };
    },
  };
  runningProbe = probeHandle;
  return probeHandle;
}

function quotaLimitOf(status: StatusObject): string | undefined {
  const value = status.metadata?.get(STATUS_DETAILS_KEY)[0];
  const st = value instanceof Uint8Array ? decodeStatus(value) : undefined;
  return (st === undefined ? undefined : readStatusDetails(st))?.quotaViolations?.[0]?.description.split(":")[0];
}

/** The neighbour's GetVcpuInfo calls as the bridge logged them (access log), from line `from` on. */
function neighbourCalls(from: number): Array<{ code: string; durationMs: number }> {
  return bridge.proc
    .lines()
    .slice(from)
    .filter((l) => l["method"] === "/kvmi.v1.IntrospectionService/GetVcpuInfo")
    .map((l) => ({ code: String(l["grpcCode"]), durationMs: Number(l["durationMs"]) }));
}

/**
 * The neighbour was served throughout: every GetVcpuInfo it made succeeded, the slowest within
 * NEIGHBOUR_SLOWEST_MS and the median within NEIGHBOUR_MEDIAN_MS, it kept completing calls all
 * along, and the bridge logged each of them as answered (none given up by the client).
 */
async function expectNeighbourServed(result: { latenciesMs: number[]; failures: string[] }, fromLine: number, spanMs: number): Promise<void> {
  expect(result.failures, "the neighbour's failed calls").toEqual([]);
  expect(result.latenciesMs.length, "GetVcpuInfo calls the neighbour completed").toBeGreaterThanOrEqual(neighbourCallsAtLeast(spanMs));
  expect(Math.max(...result.latenciesMs), "the neighbour's slowest GetVcpuInfo (ms)").toBeLessThan(NEIGHBOUR_SLOWEST_MS);
  const sorted = [...result.latenciesMs].sort((x, y) => x - y);
  expect(sorted[Math.floor(sorted.length / 2)], "the neighbour's median GetVcpuInfo (ms)").toBeLessThan(NEIGHBOUR_MEDIAN_MS);
  // The access log reaches this process through a pipe: wait for the lines of the last calls.
  const calls = await waitUntil(() => {
    const logged = neighbourCalls(fromLine);
    return logged.length >= result.latenciesMs.length ? logged : undefined;
  }, "the bridge's access log of the neighbour's calls", { timeoutMs: 10_000, intervalMs: 50 });
  expect(calls.filter((c) => c.code !== "OK"), "the neighbour's calls the bridge did not answer OK").toEqual([]);
}

/** Starts the misbehaving client in its own process. */
function misbehave(plan: MisbehaviourPlan): NodeChild {
  noisy = spawnNode(["--import", "tsx", MISBEHAVING_CLIENT, bridge.target, JSON.stringify(plan)]);
  return noisy;
}

/** What the misbehaving client saw end: one entry per stream the bridge ended. */
function endsOf(child: NodeChild, kind: string): Array<{ code: number; limit: string | undefined }> {
  return child
    .lines()
    .map((l) => l["end"] as { kind: string; code: number; limit?: string } | undefined)
    .filter((e) => e?.kind === kind)
    .map((e) => ({ code: e!.code, limit: e!.limit }));
}

/** The VM's KVMI connection was never closed nor made again since log line `from`. */
function expectKvmiConnectionsKept(from: number): void {
  const lines = bridge.proc.lines().slice(from);
  expect(lines.filter((l) => l["msg"] === "KVMI channel closed").map((l) => [l["vm"], l["reason"]])).toEqual([]);
  expect(lines.filter((l) => l["msg"] === "handshake complete").map((l) => l["vm"])).toEqual([]);
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "kvmi-quotas-"));
  const kvmiPath = join(dir, "kvmi.sock");
  bridge = await startBridgeProcess(kvmiPath, Object.entries(LIMITS).flat());
  // The VMs run in their own process too: the test process is busy being thousands of clients,
  // and the neighbour's GetVcpuInfo must measure the bridge, not this process.
  sim = spawnNode([KVMI_SIM_BIN, "--connect", `unix:${kvmiPath}`, "--vms", "2", "--memory-mib", "16", "--no-workload", "--reconnect-ms", "50", "--log-level", "warn"]);
  const c = client();
  vmUuids = await waitUntil(
    async () => {
      const { vms } = await c.unary("listVms", {}, { deadlineMs: 1000 });
      return vms.length === 2 && vms.every((v) => v.state === State.HOOKED) ? vms.map((v) => v.uuid) : undefined;
    },
    "both emulated VMs hooked",
    { timeoutMs: 20_000 },
  );
  neighbourClient = client();
  await neighbourClient.unary("getVcpuInfo", { name: `${vmName(1)}/vcpus/0` });
}, 90_000);

afterEach(async () => {
  await runningProbe?.stop();
  runningProbe = undefined;
  await noisy?.stop();
  noisy = undefined;
});

afterAll(async () => {
  for (const c of clients) c.close();
  await sim?.stop();
  await bridge?.proc.stop();
  if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
});

describe("a client that misbehaves does not starve its neighbour", () => {
  it("2000 Session and 2000 WatchVms streams that never read: refused past the limits, the neighbour answered, RSS bounded; all released when the client vanishes", async () => {
    const baseline = rssBytes();
    const fromLine = bridge.proc.lines().length;
    const started = performance.now();
    const probe = neighbour();
    const child = misbehave({ kind: "streams", vm: vmName(0), sessions: STREAMS, watchers: STREAMS, connections: 16 });
    await child.line((l) => l["opened"] !== undefined, "the misbehaving client's streams open", 120_000);
    const served = (method: string, ...codes: string[]): number =>
      bridge.proc.lines().filter((l) => l["method"] === `/kvmi.v1.IntrospectionService/${method}` && codes.includes(String(l["grpcCode"]))).length;
    // Everything past the limits is refused at once. The accepted sessions' attaches reach the
    // accepted watchers as a few changes (the bridge reports the attaches of a turn as one), so
    // nothing piles up for them; a watcher that falls behind a burst of changes is dropped
    // (watch.test.ts).
    await waitUntil(() => served("Session", "RESOURCE_EXHAUSTED") >= STREAMS - 256 && served("WatchVms", "RESOURCE_EXHAUSTED", "CANCELLED") >= STREAMS - 128, "the refusals", {
      timeoutMs: 120_000,
      intervalMs: 100,
    });
    await waitUntil(() => endsOf(child, "session").length >= 0.8 * (STREAMS - 256) && endsOf(child, "watcher").length >= 0.8 * (STREAMS - 128), "the refusals to reach the client", {
      timeoutMs: 60_000,
      intervalMs: 100,
    });
    const ends = [...endsOf(child, "session"), ...endsOf(child, "watcher")];
    for (const end of ends) expect([GrpcStatus.RESOURCE_EXHAUSTED, GrpcStatus.CANCELLED]).toContain(end.code);
    const limits = new Set(ends.filter((e) => e.code === GrpcStatus.RESOURCE_EXHAUSTED).map((e) => e.limit));
    expect(limits.has("maxSessionsPerIdentity")).toBe(true);
    expect(limits.has("maxWatchersPerIdentity")).toBe(true);
    expect([...limits].every((l) => ["maxSessionsPerIdentity", "maxWatchersPerIdentity", "watcherBacklog", "sessionSendBuffer"].includes(l!))).toBe(true);
    // The accepted streams stay open and unread for a while: nothing may pile up meanwhile.
    await new Promise((r) => setTimeout(r, Math.max(0, MISBEHAVE_MS - (performance.now() - started))));
    const result = await probe.stop();
    await expectNeighbourServed(result, fromLine, performance.now() - started);
    expect(result.peakRss - baseline, "RSS growth (bytes)").toBeLessThan(RSS_BOUND_BYTES);

    // The client vanishes: the bridge lets go of its streams and quotas (a session of the same
    // identity is accepted again).
    await child.stop();
    await waitUntil(
      async () => {
        try {
          const session = await neighbourClient.attach(vmName(0), Role.OBSERVER);
          session.release();
          return true;
        } catch {
          return undefined;
        }
      },
      "the vanished client's sessions released",
      { timeoutMs: 30_000, intervalMs: 250 },
    );
  }, 300_000);

  it.each([
    ["cancels its session", 4_000],
    ["vanishes (SIGKILL)", undefined],
  ] as const)(
    "a session that sends thousands of BatchReadMemory commands and never reads the results, then %s: the bridge stops reading it, the neighbour is answered, RSS bounded, the VM's KVMI connection kept",
    async (_how, cancelAfterMs) => {
      const baseline = rssBytes();
      const fromLine = bridge.proc.lines().length;
      const started = performance.now();
      const probe = neighbour();
      // 2000 reads of 1 MiB each: 512 000 page reads asked for, far more than the channel keeps in
      // flight (and than it used to remember as given up: docs/decisions/0140).
      const child = misbehave({ kind: "unread-batches", vm: vmName(0), batches: 2000, gpa: 0x100000, rangeBytes: MIB, ...(cancelAfterMs !== undefined && { cancelAfterMs }) });
      await child.line((l) => l["opened"] !== undefined, "the batches sent", 60_000);
      if (cancelAfterMs !== undefined) await child.line((l) => l["cancelled"] !== undefined, "the session cancelled", 60_000);
      else {
        await new Promise((r) => setTimeout(r, 4_000));
        await child.stop();
      }
      // The session was never refused while it misbehaved: it was simply not read further.
      expect(endsOf(child, "batcher").filter((e) => e.code !== GrpcStatus.CANCELLED)).toEqual([]);
      // The cancelled reads' late replies come back while the neighbour keeps calling.
      await new Promise((r) => setTimeout(r, Math.max(2_000, MISBEHAVE_MS - (performance.now() - started))));
      const result = await probe.stop();
      await expectNeighbourServed(result, fromLine, performance.now() - started);
      expect(result.peakRss - baseline, "RSS growth (bytes)").toBeLessThan(RSS_BOUND_BYTES);
      expectKvmiConnectionsKept(fromLine);
      // The VM the reads were cancelled on still answers, on the same connection.
      expect(await neighbourClient.unary("getVcpuInfo", { name: `${vmName(0)}/vcpus/0` }, { deadlineMs: NEIGHBOUR_DEADLINE_MS })).toBeDefined();
      expectKvmiConnectionsKept(fromLine);
    },
    180_000,
  );

  it("a DumpMemory over a terabyte of unbacked addresses: progress keeps coming, it stops at --dump-max-hole-bytes, the neighbour is answered, RSS bounded", async () => {
    const baseline = rssBytes();
    const fromLine = bridge.proc.lines().length;
    const started = performance.now();
    const probe = neighbour();
    const raw = client().raw;
    const TIB = 1n << 40n;
    const stream = raw["dumpMemory"]!(
      create((await import("@kvmi/proto")).DumpMemoryRequestSchema, { vm: vmName(0), startGpa: TIB, length: TIB }),
      new Metadata(),
    ) as ClientReadableStream<DumpMemoryResponse>;
    const progress: bigint[] = [];
    let holeBytes = 0n;
    stream.on("data", (r: DumpMemoryResponse) => {
      expect(r.data.length).toBe(0);
      progress.push(r.progress!.bytesDone);
      for (const h of r.holes) holeBytes += h.length;
    });
    const [status] = await new Promise<StatusObject[]>((resolve) => {
      stream.on("error", () => undefined);
      stream.on("status", (s) => resolve([s]));
    });
    const result = await probe.stop();
    expect(status!.code).toBe(GrpcStatus.RESOURCE_EXHAUSTED);
    expect(quotaLimitOf(status!)).toBe("dumpMaxHoleBytes");
    // Progress while only holes were found, increasing, and every hole reported.
    expect(progress.length).toBeGreaterThanOrEqual(4);
    expect(progress.every((p, i) => i === 0 || p > progress[i - 1]!)).toBe(true);
    expect(holeBytes).toBe(progress.at(-1));
    expect(holeBytes).toBeGreaterThan(BigInt(64 * MIB));
    expect(holeBytes).toBeLessThan(BigInt(64 * MIB) + 32n * BigInt(MIB));
    await expectNeighbourServed(result, fromLine, performance.now() - started);
    expect(result.peakRss - baseline, "RSS growth (bytes)").toBeLessThan(RSS_BOUND_BYTES);
  }, 120_000);
});
