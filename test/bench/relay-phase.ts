// SPDX-License-Identifier: Apache-2.0
/**
 * The relay part of `npm run bench` (docs/decisions/0100-kvmi-relay.md): what a libkvmi tool pays
 * for running against a remote VM through kvmi-relay + bridge, against the same tool on a local
 * KVMI socket. Both tools are the libkvmi-like tool of the tests (kvmi-v7, one command at a time);
 * the remote path is tool -> relay -> gRPC Session -> bridge -> KVMI v9 -> emulated VM, the local
 * one tool <-> emulated kvmi-v7 VM. Everything runs in this process, the relay, bridge and
 * emulator included, so the ratio counts the work of every hop but no process wake-ups.
 *
 *   - READ_PHYSICAL 4 KiB round trip, as the tool sees it;
 *   - CR event round trip: the guest's MOV CR3 until the tool's reply lets it complete.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect } from "@kvmi/clients";
import { runRelay } from "@kvmi/clients/relay";
import { silentLogger } from "@kvmi/kvm-bridge";
import { kvmiV7, v9 } from "@kvmi/kvm-bridge/codec";
import { createEmulatedVm } from "@kvmi/kvm-bridge/emulator";
import type { EmulatedVm } from "@kvmi/kvm-bridge/emulator";
import { loadConfigOrThrow, startBridge } from "@kvmi/service";
import { startLibkvmiTool } from "../support/libkvmi-tool.js";
import type { LibkvmiConnection } from "../support/libkvmi-tool.js";
import { progress, waitFor } from "./lib/child-helpers.js";
import type { Results } from "./lib/report.js";
import { timeLoop } from "./perf-phases.js";

const READ_GPA = 0x100000n;
const X86_CR3_PWT = 1n << 3n;
const CR_EVENT = kvmiV7.events.find((e) => e.kind === "CR")!.id;

export interface RelaySettings {
  readonly runs: number;
  readonly windowMs: number;
}

/** Answers every CR event with the value the guest wrote, until stopped. */
function answerCrEvents(conn: LibkvmiConnection): () => void {
  let stopped = false;
  void (async () => {
    while (!stopped && conn.closed === undefined) {
      const event = await conn.nextEvent(200);
      if (event !== undefined) conn.reply(event, "CONTINUE", { new_val: (event.payload?.["new_value"] as bigint | undefined) ?? 0n });
    }
  })();
  return () => (stopped = true);
}

async function enableCr3(conn: LibkvmiConnection): Promise<void> {
  await conn.command("CONTROL_VCPU_EVENTS", { event_id: CR_EVENT, enable: 1 }, 0);
  await conn.command("CONTROL_CR", { cr: 3, enable: 1 }, 0);
}

/** One MOV CR3 on vCPU 0 that the tool must answer; fails loudly if it does not complete. */
function crWriter(vm: EmulatedVm): () => Promise<void> {
  const vcpu = vm.guest.vcpus[0]!;
  const base = vcpu.state.sregs.cr3;
  let flip = false;
  return async () => {
    flip = !flip;
    const target = flip ? base ^ X86_CR3_PWT : base;
    const out = await vcpu.writeCr(3, target);
    if (out.status !== "done") throw new Error(`MOV CR3 did not complete: ${out.status}`);
  };
}

/** Runs the relay measurements into `results` (ids `relay.*` and `local.*`). */
export async function relayPart(settings: RelaySettings, results: Results): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "kvmi-bench-relay-"));
  const closers: Array<() => Promise<unknown> | unknown> = [];
  try {
    const config = loadConfigOrThrow({
      argv: ["--grpc-listen", "127.0.0.1:0", "--kvmi-dialect", v9.name, "--kvmi-listen", `unix:${join(dir, "kvmi.sock")}`],
      env: {},
      cwd: dir,
    });
    const bridge = await startBridge({ config, logger: silentLogger });
    closers.unshift(() => bridge.stop());
    const spec = { vcpus: 1, memoryMiB: 16, workload: false, reconnectMs: 50 } as const;
    const remoteVm = createEmulatedVm({ kind: "unix", path: join(dir, "kvmi.sock") }, { name: "relay-bench", dialect: v9, ...spec });
    remoteVm.start();
    closers.unshift(() => remoteVm.stop());
    await waitFor(async () => bridge.hosts.get(remoteVm.uuid)?.isServing === true, 10_000, "the bench VM hooked to the bridge");

    const client = connect({ target: bridge.grpcTarget });
    closers.unshift(() => client.close());
    const remoteTool = await startLibkvmiTool(kvmiV7);
    closers.unshift(() => remoteTool.close());
    const relay = runRelay({ client, vm: remoteVm.uuid, toolPath: remoteTool.path, dialect: kvmiV7 });
    relay.catch(() => undefined);
    const remote = await remoteTool.nextConnection();
    closers.unshift(async () => {
      remote.close();
      await relay.catch(() => undefined);
    });

    const localTool = await startLibkvmiTool(kvmiV7);
    closers.unshift(() => localTool.close());
    const localVm = createEmulatedVm({ kind: "unix", path: localTool.path }, { name: "local-bench", dialect: kvmiV7, ...spec });
    localVm.start();
    closers.unshift(() => localVm.stop());
    const local = await localTool.nextConnection();

    for (const conn of [remote, local]) {
      await enableCr3(conn);
      const stop = answerCrEvents(conn);
      closers.unshift(stop);
    }
    const remoteCr = crWriter(remoteVm);
    const localCr = crWriter(localVm);
    const read = (conn: LibkvmiConnection) => () => conn.command("READ_PHYSICAL", { gpa: READ_GPA, size: 4096 });

    for (let run = 0; run <= settings.runs; run++) {
      results.recording = run > 0;
      progress(`relay: ${run === 0 ? "warm-up" : `run ${run}/${settings.runs}`}`);
      results.latency("relay.read4k", "libkvmi tool READ_PHYSICAL 4 KiB via relay + bridge", await timeLoop(settings.windowMs, read(remote)));
      results.latency("local.read4k", "libkvmi tool READ_PHYSICAL 4 KiB on a local KVMI socket", await timeLoop(settings.windowMs, read(local)));
      results.latency("relay.event.cr", "CR event round trip to a libkvmi tool via relay + bridge", await timeLoop(settings.windowMs, remoteCr));
      results.latency("local.event.cr", "CR event round trip to a libkvmi tool on a local KVMI socket", await timeLoop(settings.windowMs, localCr));
    }
    results.recording = false;
  } finally {
    for (const close of closers) await close();
    rmSync(dir, { recursive: true, force: true });
  }
}
