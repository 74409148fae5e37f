// SPDX-License-Identifier: Apache-2.0
/**
 * The memory part of `npm run bench`: a fresh bridge and emulator (in their own processes, so that
 * the bridge's RSS is its own), 50 VMs raising CR3 events, one slow controller session per VM, and
 * the bridge's RSS sampled every second (test/bench/README.md, "Memory").
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { EventType, Role } from "@kvmi/proto";
import type { BridgeStarted } from "./bridge-child.js";
import { drainBridge, profiled, progress, sleep, waitFor } from "./lib/child-helpers.js";
import { BridgeClient, SessionClient } from "./lib/clients.js";
import type { VmSpec } from "./lib/emulator-host.js";
import { ChildHandle } from "./lib/ipc.js";
import { CR3, MiB } from "./perf-phases.js";
import { slope } from "./lib/stats.js";

/** What the memory phase takes from the run's settings. */
export interface MemorySettings {
  readonly memoryMs: number;
  readonly memoryWarmupS: number;
  readonly sampleMs: number;
  readonly bridgeLog: string;
}

export const MEMORY_VMS = 50;
export const MEMORY_VM_MIB = 16;
/** "Bounded": the least-squares RSS slope after the warm-up stays under this. */
const MEMORY_SLOPE_LIMIT_MB_PER_MIN = 10;

interface MemorySample {
  /** Seconds since the slow controller started. */
  readonly t: number;
  readonly rssMB: number;
  readonly heapUsedMB: number;
  /** Heap after a forced full GC (every {@link GC_EVERY}th sample; what is really retained). */
  readonly heapAfterGcMB: number | undefined;
  readonly externalMB: number;
  readonly arrayBuffersMB: number;
  /** CR3 writes the guests made (each raises an event) and events the controller read, cumulative. */
  readonly guestEvents: number;
  readonly clientEvents: number;
}

export interface MemoryReport {
  readonly vms: number;
  readonly eventDeadlineMs: number;
  readonly slowReadForMs: number;
  readonly slowReadEveryMs: number;
  readonly durationS: number;
  readonly warmupS: number;
  readonly idleRssMB: number;
  readonly startRssMB: number;
  readonly peakRssMB: number;
  readonly endRssMB: number;
  readonly slopeMBPerMin: number;
  readonly heapAfterGcSlopeMBPerMin: number;
  readonly limitMBPerMin: number;
  readonly bounded: boolean;
  readonly guestEventsPerSecond: number;
  readonly clientEventsPerSecond: number;
  readonly autoReplies: Record<string, number>;
  readonly samples: readonly MemorySample[];
}

/** Every this many samples, the bridge runs a full GC before reporting its heap. */
const GC_EVERY = 5;
/**
 * The slow controller's reply deadline (the minimum a session may ask for): events it does not
 * read in time are answered by the bridge, so the guests keep running and events keep pouring in.
 */
const MEMORY_EVENT_DEADLINE_MS = 10;
/**
 * The slow controller reads for this long every {@link SLOW_READ_EVERY_MS}: between reads, one
 * VM's events (≈50/s) overflow what grpc-js and HTTP/2 hold in flight (16 messages + a 64 KiB
 * window ≈ 120 events) and the bridge's own per-session buffer (256 responses).
 */
const SLOW_READ_FOR_MS = 20;
const SLOW_READ_EVERY_MS = 10_000;

function rssOf(pid: number): number | undefined {
  try {
    const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return match ? Number(match[1]) / 1024 : undefined;
  } catch {
    return undefined;
  }
}

export async function memoryPhase(settings: MemorySettings, dir: string, profileDir: string | undefined, warnings: string[]): Promise<MemoryReport> {
  const bridgeChild = await ChildHandle.start("bridge(memory)", new URL("./bridge-child.ts", import.meta.url), {
    nodeFlags: ["--expose-gc"],
    quiet: true,
  });
  const emulatorChild = await ChildHandle.start("emulator(memory)", new URL("./emulator-child.ts", import.meta.url));
  const client = { current: undefined as BridgeClient | undefined };
  try {
    const kvmiSocket = join(dir, "kvmi-memory.sock");
    const started = await bridgeChild.call<BridgeStarted>("start", { kvmiSocket, logLevel: settings.bridgeLog, metrics: true });
    const specs: VmSpec[] = Array.from({ length: MEMORY_VMS }, (_, i) => ({
      key: `mem-${i}`,
      endpoint: { kind: "unix", path: kvmiSocket },
      vcpus: 1,
      memoryMiB: MEMORY_VM_MIB,
      workload: true,
    }));
    const vms = await emulatorChild.call<Array<{ key: string; uuid: string }>>("addVms", { specs });
    await waitFor(async () => (await bridgeChild.call<number>("hooked")) >= MEMORY_VMS, 30_000, "50 VMs hooked to the bridge");
    const memory = async (gc: boolean) => {
      const rss = rssOf(bridgeChild.pid);
      const m = await bridgeChild.call<NodeJS.MemoryUsage>("memory", { gc });
      return { rss: rss ?? m.rss / MiB, heapUsed: m.heapUsed / MiB, external: m.external / MiB, arrayBuffers: m.arrayBuffers / MiB };
    };
    await sleep(1000);
    const idleRssMB = (await memory(false)).rss;

    const bridge = new BridgeClient(started.grpcTarget);
    client.current = bridge;
    const sessions = vms.map((vm) => new SessionClient(bridge, `vms/${vm.uuid}`, Role.CONTROLLER, MEMORY_EVENT_DEADLINE_MS));
    await Promise.all(sessions.map((s) => s.attached));
    await Promise.all(
      sessions.map(async (s) => {
        await s.commandOk({ case: "controlVcpuEvents", value: { name: `${s.vm}/vcpus/0`, event: EventType.CR, enable: true } });
        await s.commandOk({ case: "controlCr", value: { name: `${s.vm}/vcpus/0`, cr: CR3, enable: true } });
      }),
    );
    progress(`memory: ${MEMORY_VMS} VMs hooked, CR3 events on; the controller reads for ${SLOW_READ_FOR_MS} ms every ${SLOW_READ_EVERY_MS / 1000} s`);

    // The slow controller: its streams stay paused, except for a short read now and then.
    for (const s of sessions) s.stream.pause();
    const slow = setInterval(() => {
      for (const s of sessions) s.stream.resume();
      setTimeout(() => {
        for (const s of sessions) s.stream.pause();
      }, SLOW_READ_FOR_MS);
    }, SLOW_READ_EVERY_MS);

    const samples: MemorySample[] = [];
    const t0 = performance.now();
    const clientEvents = (): number => sessions.reduce((n, s) => n + s.events, 0);
    const guest0 = (await emulatorChild.call<{ cr3Switches: number }>("stats")).cr3Switches;
    const client0 = clientEvents();
    await profiled(profileDir, "memory-test", { bridge: bridgeChild }, async () => {
      for (let i = 0; performance.now() - t0 < settings.memoryMs; i++) {
        const gc = i % GC_EVERY === GC_EVERY - 1;
        const m = await memory(gc);
        const g = await emulatorChild.call<{ cr3Switches: number }>("stats");
        samples.push({
          t: (performance.now() - t0) / 1000,
          rssMB: m.rss,
          heapUsedMB: gc ? Number.NaN : m.heapUsed,
          heapAfterGcMB: gc ? m.heapUsed : undefined,
          externalMB: m.external,
          arrayBuffersMB: m.arrayBuffers,
          guestEvents: g.cr3Switches - guest0,
          clientEvents: clientEvents() - client0,
        });
        await sleep(settings.sampleMs);
      }
    });
    clearInterval(slow);
    const metricsText = await bridgeChild.call<string>("metrics");
    for (const s of sessions) s.stream.resume();
    for (const s of sessions) s.end();
    await drainBridge(bridgeChild, "bridge (memory test)", warnings);

    const autoReplies: Record<string, number> = {};
    for (const line of metricsText.split("\n")) {
      const m = /^kvmi_bridge_event_auto_replies_total\{([^}]*)\} (\S+)$/.exec(line);
      const reason = m && /reason="([^"]+)"/.exec(m[1]!)?.[1];
      if (m && reason) autoReplies[reason] = (autoReplies[reason] ?? 0) + Number(m[2]);
    }
    const warmupS = Math.min(settings.memoryWarmupS, settings.memoryMs / 2000);
    const steady = samples.filter((s) => s.t >= warmupS);
    const gcd = steady.filter((s) => s.heapAfterGcMB !== undefined);
    const last = samples.at(-1)!;
    const rssSlope = slope(steady.map((s) => s.t), steady.map((s) => s.rssMB)) * 60;
    return {
      vms: MEMORY_VMS,
      eventDeadlineMs: MEMORY_EVENT_DEADLINE_MS,
      slowReadForMs: SLOW_READ_FOR_MS,
      slowReadEveryMs: SLOW_READ_EVERY_MS,
      durationS: last.t,
      warmupS,
      idleRssMB,
      startRssMB: samples[0]!.rssMB,
      peakRssMB: Math.max(...samples.map((s) => s.rssMB)),
      endRssMB: last.rssMB,
      slopeMBPerMin: rssSlope,
      heapAfterGcSlopeMBPerMin: slope(gcd.map((s) => s.t), gcd.map((s) => s.heapAfterGcMB!)) * 60,
      limitMBPerMin: MEMORY_SLOPE_LIMIT_MB_PER_MIN,
      bounded: rssSlope <= MEMORY_SLOPE_LIMIT_MB_PER_MIN,
      guestEventsPerSecond: last.guestEvents / last.t,
      clientEventsPerSecond: last.clientEvents / last.t,
      autoReplies,
      samples,
    };
  } finally {
    client.current?.close();
    await emulatorChild.stop();
    await bridgeChild.stop();
  }
}
