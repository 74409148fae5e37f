// SPDX-License-Identifier: Apache-2.0
/**
 * `npm run bench:ops`: CPU time per operation of the bridge (with the emulated VM in its process)
 * and of the client, over long steady loops of one operation at a time. Wall-clock ratios on a
 * noisy 2-core machine move by ±20% between runs; CPU per operation moves far less, so this is the
 * probe for before/after comparisons of a change (test/bench/README.md, "A/B").
 */
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { create } from "@bufbuild/protobuf";
import { AddressSpace, BatchReadMemoryRequestSchema, DumpMemoryRequestSchema, EventType, GetVcpuInfoRequestSchema, Role } from "@kvmi/proto";
import type { BridgeStarted } from "./bridge-child.js";
import { BRIDGE, BridgeClient, SessionClient } from "./lib/clients.js";
import type { EventLoopResult } from "./lib/emulator-host.js";
import { ChildHandle, startProfile, stopProfile } from "./lib/ipc.js";
import { CR3, MiB } from "./perf-phases.js";

const OPERATIONS = ["unary", "session", "event", "event4", "dump", "batch"] as const;
type Operation = (typeof OPERATIONS)[number];

const { values: flags, positionals } = parseArgs({
  args: process.argv.slice(2),
  allowPositionals: true,
  options: {
    seconds: { type: "string", default: "3" },
    rounds: { type: "string", default: "3" },
    // V8 profiles of each operation's last round: DIR/<op>.cpuprofile (the bridge child) and
    // DIR/<op>-client.cpuprofile (this process).
    profile: { type: "string" },
    // "off": the bridge without a logger, to see what logging costs (as `npm run bench -- --bridge-log off`).
    "bridge-log": { type: "string", default: "info" },
  },
});
const chosen = (positionals.length > 0 ? positionals : [...OPERATIONS]) as Operation[];
for (const op of chosen) {
  if (!OPERATIONS.includes(op)) {
    process.stderr.write(`unknown operation ${op}; choose from ${OPERATIONS.join(", ")}\n`);
    process.exit(2);
  }
}
const SECONDS = Number(flags.seconds);
const ROUNDS = Number(flags.rounds);
const PROFILE_DIR = flags.profile;
if (PROFILE_DIR !== undefined) mkdirSync(PROFILE_DIR, { recursive: true });

const dir = mkdtempSync(join(tmpdir(), "kvmi-bench-ops-"));
const bridgeChild = await ChildHandle.start("bridge", new URL("./bridge-child.ts", import.meta.url), { quiet: true });
try {
  const started = await bridgeChild.call<BridgeStarted>("start", { kvmiSocket: join(dir, "kvmi.sock"), logLevel: flags["bridge-log"], metrics: false });
  const [spec] = await bridgeChild.call<Array<{ uuid: string }>>("addVms", {
    specs: [{ key: "ops", endpoint: { kind: "unix", path: started.kvmiSocket }, vcpus: 4, memoryMiB: 64, workload: false }],
  });
  const vm = `vms/${spec!.uuid}`;
  // What `dump` and `batch` read: written memory, as in `npm run bench` (lib/pseudo-random.ts).
  await bridgeChild.call("fillRam", { key: "ops", gpa: 16 * MiB, bytes: 16 * MiB, seed: 1 });
  const bridge = new BridgeClient(started.grpcTarget);
  // Events in batches, answered with one EventReplyBatch, as the SDK and the bench do.
  const controller = new SessionClient(bridge, vm, Role.CONTROLLER, undefined, true);
  await controller.attached;
  const vcpu = `${vm}/vcpus/0`;
  // CR3 events on every vCPU: `event` drives vCPU 0, `event4` all four at once.
  for (let index = 0; index < 4; index++) {
    const name = `${vm}/vcpus/${index}`;
    await controller.commandOk({ case: "controlVcpuEvents", value: { name, event: EventType.CR, enable: true } });
    await controller.commandOk({ case: "controlCr", value: { name, cr: CR3, enable: true } });
  }
  const vcpuInfo = create(GetVcpuInfoRequestSchema, { name: vcpu });
  const dumpRequest = create(DumpMemoryRequestSchema, { vm, startGpa: 16n * BigInt(MiB), length: 16n * BigInt(MiB), chunkSize: 256 * 1024 });
  // The bench's bulk phase reads 16 MiB in sequential 2 MiB BatchReadMemory calls; one call here.
  const batchRequest = create(BatchReadMemoryRequestSchema, {
    vm,
    ranges: [{ address: 16n * BigInt(MiB), length: 2n * BigInt(MiB), space: AddressSpace.PHYSICAL }],
  });

  /** One step of each operation; returns how many units it did (operations, events, MiB). */
  const steps: Record<Operation, { unit: string; step: () => Promise<number> }> = {
    unary: { unit: "op", step: async () => (await bridge.unary(BRIDGE.getVcpuInfo, vcpuInfo), 1) },
    session: { unit: "op", step: async () => (await controller.command({ case: "getVcpuInfo", value: vcpuInfo }), 1) },
    event: {
      unit: "event",
      step: async () => (await bridgeChild.call<EventLoopResult>("eventLoop", { key: "ops", vcpus: 1, durationMs: 500, maxSamples: 1 })).completed,
    },
    event4: {
      unit: "event",
      step: async () => (await bridgeChild.call<EventLoopResult>("eventLoop", { key: "ops", vcpus: 4, durationMs: 500, maxSamples: 1 })).completed,
    },
    dump: {
      unit: "MiB",
      step: async () => (await bridge.dump(dumpRequest)) / MiB,
    },
    batch: {
      unit: "MiB",
      step: async () => {
        const response = await bridge.unary(BRIDGE.batchReadMemory, batchRequest);
        const result = response.results[0]?.result;
        if (result?.case !== "data" || result.value.length !== 2 * MiB) throw new Error("BatchReadMemory: unexpected result");
        return 2;
      },
    },
  };

  const lines = ["operation | unit | round | units | wall µs/unit | bridge+emulator CPU µs/unit (user) | client CPU µs/unit"];
  for (const op of chosen) {
    const { unit, step } = steps[op];
    // Round 0 warms up (JIT, connection) and is not printed.
    for (let round = 0; round <= ROUNDS; round++) {
      const profiling = PROFILE_DIR !== undefined && round === ROUNDS;
      const clientProfiler = profiling ? await startProfile() : undefined;
      if (profiling) await bridgeChild.call("profileStart", { intervalUs: 250 });
      const t0 = performance.now();
      const client0 = process.cpuUsage();
      const bridge0 = await bridgeChild.call<NodeJS.CpuUsage>("cpu");
      let units = 0;
      while (performance.now() - t0 < (round === 0 ? 1000 : SECONDS * 1000)) units += await step();
      const wallUs = (performance.now() - t0) * 1000;
      const client = process.cpuUsage(client0);
      const bridge1 = await bridgeChild.call<NodeJS.CpuUsage>("cpu");
      if (profiling) await bridgeChild.call("profileStop", { file: join(PROFILE_DIR, `${op}.cpuprofile`) });
      if (clientProfiler !== undefined) await stopProfile(clientProfiler, join(PROFILE_DIR!, `${op}-client.cpuprofile`));
      if (round === 0) continue;
      const per = (us: number): string => (us / units).toFixed(units >= 100 ? 0 : 1);
      const bridgeUser = bridge1.user - bridge0.user;
      const bridgeAll = bridgeUser + bridge1.system - bridge0.system;
      lines.push(`${op} | ${unit} | ${round} | ${units} | ${per(wallUs)} | ${per(bridgeAll)} (${per(bridgeUser)}) | ${per(client.user + client.system)}`);
    }
  }
  process.stdout.write(`${lines.join("\n")}\n`);
  controller.end();
  bridge.close();
} finally {
  await bridgeChild.stop();
  rmSync(dir, { recursive: true, force: true });
}
