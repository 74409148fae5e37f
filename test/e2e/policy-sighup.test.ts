// SPDX-License-Identifier: Apache-2.0
/**
 * Issue 15: the policy is reloaded on SIGHUP without dropping sessions, against the bridge as its
 * own process (the in-process suites call the reload directly; this one proves `kvmi-bridge`
 * installs the handler: SIGHUP's default action would end the process). The file watcher reloads
 * on change too, so each SIGHUP is recognised by the reason it logs.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Role, State } from "@kvmi/proto";
import { GrpcStatus, IntrospectionClient, waitUntil } from "../support/bridge-harness.js";
import { KVMI_SIM_BIN, spawnNode, startBridgeProcess } from "../support/fault-tools.js";
import type { BridgeProcess, NodeChild } from "../support/fault-tools.js";

const policy = (verbs: string): string => `version: 1\ngrants:\n  - identities: [local]\n    verbs: [${verbs}]\n    vms: all\n`;

const RELOAD_FAILED = "policy reload failed; the previous policy stays in force";

let dir: string;
let policyFile: string;
let bridge: BridgeProcess;
let sim: NodeChild | undefined;
let client: IntrospectionClient;
let vm: string;

/** Sends SIGHUP and waits for the reload it causes, recognised by its reason. */
async function sighup(msg: string): Promise<void> {
  const before = bridge.logs(msg, { reason: "SIGHUP" }).length;
  bridge.proc.child.kill("SIGHUP");
  await waitUntil(() => bridge.logs(msg, { reason: "SIGHUP" }).length > before, `"${msg}" after SIGHUP`, { timeoutMs: 15_000, intervalMs: 50 });
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "kvmi-sighup-"));
  policyFile = join(dir, "policy.yaml");
  writeFileSync(policyFile, policy("list, observe, read"));
  const kvmiPath = join(dir, "kvmi.sock");
  bridge = await startBridgeProcess(kvmiPath, ["--policy-file", policyFile, "--audit-file", join(dir, "audit.jsonl")]);
  sim = spawnNode([KVMI_SIM_BIN, "--connect", `unix:${kvmiPath}`, "--vms", "1", "--memory-mib", "16", "--no-workload", "--log-level", "warn"]);
  client = new IntrospectionClient(bridge.target);
  vm = await waitUntil(
    async () => {
      const { vms } = await client.unary("listVms", {}, { deadlineMs: 5_000 });
      return vms[0]?.state === State.HOOKED ? `vms/${vms[0].uuid}` : undefined;
    },
    "the emulated VM hooked",
    { timeoutMs: 60_000, intervalMs: 100 },
  );
}, 90_000);

afterAll(async () => {
  client?.close();
  await sim?.stop();
  await bridge?.proc.stop();
  if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
});

describe("SIGHUP", () => {
  it("reloads the policy in the running bridge, keeps the last good one when the file is bad, and never drops a session", async () => {
    const session = await client.attach(vm, Role.OBSERVER);
    const read = { case: "readPhysicalMemory", value: { vm, gpa: 0x1000n, size: 8 } } as const;
    await session.ok(read);

    // A bad file: refused on SIGHUP as on change, with every error; the old policy stays.
    writeFileSync(policyFile, "version: 1\ngrants: [{ verbs: [fly] }]\n");
    await sighup(RELOAD_FAILED);
    const failed = bridge.logs(RELOAD_FAILED, { reason: "SIGHUP" }).at(-1)!;
    expect((failed["errors"] as string[]).length).toBeGreaterThanOrEqual(2);
    await session.ok(read);

    // Reading taken away: the same session is refused, and stays open.
    writeFileSync(policyFile, policy("list, observe"));
    await sighup("authorization policy reloaded").catch(async () => {
      // The watcher may have loaded it first; SIGHUP then finds nothing new and logs nothing.
      await waitUntil(() => bridge.logs("authorization policy reloaded").length > 0, "the policy reloaded", { timeoutMs: 15_000 });
    });
    const denied = await session.command(read);
    expect(denied.result.case === "error" && denied.result.value.code).toBe(GrpcStatus.PERMISSION_DENIED);
    await expect(client.unary("getVcpuInfo", { name: `${vm}/vcpus/0` })).rejects.toMatchObject({ code: GrpcStatus.PERMISSION_DENIED });

    // Given back: the same stream reads again.
    writeFileSync(policyFile, policy("list, observe, read"));
    bridge.proc.child.kill("SIGHUP");
    await waitUntil(async () => (await session.command(read)).result.case !== "error", "reading allowed again", { timeoutMs: 15_000, intervalMs: 100 });
    expect(bridge.proc.child.exitCode).toBeNull();
    expect(bridge.proc.child.signalCode).toBeNull();
    session.release();
    await session.closed();
  }, 90_000);
});
