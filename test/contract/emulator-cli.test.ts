// SPDX-License-Identifier: Apache-2.0
/**
 * `kvmi-sim` as a user runs it: `node kvm-bridge/bin/kvmi-sim.mjs` in a child process, against a
 * test listener that does the tool's half of the handshake (kvmi-abi §2.2) and then plays the tool
 * in the unhook flow (§2.6).
 */
import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { afterEach, describe, expect, it } from "vitest";
import { v9Ids } from "@kvmi/kvm-bridge/wire";
import { createTestListener } from "../support/test-listener.js";
import { within } from "../support/wire-tool.js";
import type { AcceptedConnection, TestListener } from "../support/test-listener.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const BIN = "kvm-bridge/bin/kvmi-sim.mjs";
const RUN_TIMEOUT_MS = 20_000;

interface Run {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly elapsedMs: number;
}

/** Runs kvmi-sim to completion; kills it (and fails) after `timeoutMs`. */
function runSim(args: readonly string[], timeoutMs = RUN_TIMEOUT_MS): Promise<Run> {
  return startSim(args, timeoutMs).done;
}

/** Starts kvmi-sim; `done` settles when it exits (rejects and kills it after `timeoutMs`). */
function startSim(args: readonly string[], timeoutMs = RUN_TIMEOUT_MS): { child: ChildProcess; done: Promise<Run> } {
  const started = performance.now();
  const child = spawn(process.execPath, [BIN, ...args], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk));
  child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
  const done = new Promise<Run>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`kvmi-sim ${args.join(" ")} did not exit within ${timeoutMs} ms\nstdout:\n${stdout}\nstderr:\n${stderr}`));
    }, timeoutMs);
    child.once("error", reject);
    child.once("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, elapsedMs: performance.now() - started });
    });
  });
  return { child, done };
}

let listener: TestListener | undefined;

afterEach(async () => {
  await listener?.close();
  listener = undefined;
});

describe("kvmi-sim", () => {
  it("--help prints the usage and exits 0", async () => {
    const run = await runSim(["--help"]);
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(/^Usage: kvmi-sim --connect unix:PATH\|tcp:HOST:PORT/);
    for (const flag of ["--vms", "--unhook-timeout-ms", "--migrate-after", "--handshake", "--secret-file"]) {
      expect(run.stdout).toContain(flag);
    }
    expect(run.stderr).toBe("");
  });

  it("bad flag values exit 2 listing every error, and start nothing", async () => {
    const run = await runSim([
      "--connect",
      "bogus",
      "--vms=0",
      "--vcpus=two",
      "--memory-mib=-1",
      "--handshake",
      "fancy",
      "--log-level",
      "loud",
      "--reconnect-ms=0",
      "--migrate-after",
      "soon",
      "--secret-file",
      "/nonexistent/kvmi-secret",
    ]);
    expect(run.code).toBe(2);
    expect(run.stdout).toBe("");
    const expected = [
      '--connect must be unix:PATH or tcp:HOST:PORT, got "bogus"',
      '--vms must be a positive integer, got "0"',
      '--vcpus must be a positive integer, got "two"',
      '--memory-mib must be a positive integer, got "-1"',
      "--handshake must be base, max-gpa or e820",
      "--log-level must be trace, debug, info, warn or error",
      '--reconnect-ms must be a positive integer, got "0"',
      "--migrate-after must be a number of seconds",
      "--secret-file: ENOENT",
    ];
    for (const message of expected) expect(run.stderr).toContain(`kvmi-sim: ${message}`);
    expect(run.stderr.match(/^kvmi-sim: /gm)).toHaveLength(expected.length);
    expect(run.stderr).toContain("Run kvmi-sim --help for usage.");
  });

  it("unknown options and values the guest model rejects exit 2 with a message, not a crash", async () => {
    const unknown = await runSim(["--bogus"]);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain("kvmi-sim: Unknown option '--bogus'");
    expect(unknown.stderr).toContain("Usage: kvmi-sim");

    const tooMany = await runSim(["--connect", "unix:/nonexistent/kvmi.sock", "--vcpus", "65"]);
    expect(tooMany.code).toBe(2);
    expect(tooMany.stderr).toMatch(/^kvmi-sim: vcpus must be an integer in 1\.\.64, got 65$/m);
    expect(tooMany.stderr).not.toContain("    at ");
  });

  it("--vms 2 --migrate-after 0.5 connects two VMs, logs one outcome line per VM and exits 0", async () => {
    const unhookTimeoutMs = 300;
    const tools: Array<Promise<void>> = [];
    // The first VM's tool cleans up and closes on UNHOOK; the second enables UNHOOK and never closes.
    const play = (connection: AcceptedConnection): void => {
      tools.push(
        (async () => {
          const { tool } = connection;
          const enabled = await tool.command("KVMI_VM_CONTROL_EVENTS", { event_id: v9Ids.KVMI_EVENT_UNHOOK, enable: 1 });
          expect(enabled.err).toBe(0);
          const event = await tool.nextEvent(RUN_TIMEOUT_MS);
          expect(event.spec?.name).toBe("KVMI_EVENT_UNHOOK");
          if (connection.index === 1) connection.socket.destroy();
          else await within(tool.closed, RUN_TIMEOUT_MS, "the simulator force-closing after the unhook timeout");
        })(),
      );
    };
    listener = await createTestListener({ onAccepted: play });
    const run = await runSim([
      "--connect",
      `unix:${listener.path}`,
      "--vms",
      "2",
      "--migrate-after",
      "0.5",
      "--unhook-timeout-ms",
      String(unhookTimeoutMs),
    ]);
    expect(run.stderr).toBe("");
    expect(run.code).toBe(0);
    await within(Promise.all(tools), RUN_TIMEOUT_MS, "both tools done");

    expect(listener.connections).toHaveLength(2);
    const [first, second] = listener.connections;
    expect(first!.identity.uuid).not.toBe(second!.identity.uuid);

    const lines = run.stdout
      .trim()
      .split("\n")
      .map((line) => JSON.parse(line) as Record<string, unknown>);
    const outcomes = lines.filter((line) => "preunhook" in line);
    expect(outcomes).toHaveLength(2);
    for (const outcome of outcomes) {
      expect(outcome).toMatchObject({ level: "info", action: "migrate", preunhook: "ok" });
      expect(typeof outcome["durationMs"]).toBe("number");
    }
    const byVm = new Map(outcomes.filter((o) => o["msg"] === "migrate outcome").map((o) => [o["vm"], o]));
    expect(byVm.size).toBe(2);
    const closedByTool = byVm.get(first!.identity.uuid)!;
    const timedOut = byVm.get(second!.identity.uuid)!;
    expect(closedByTool).toMatchObject({ closedBy: "tool" });
    expect(closedByTool["durationMs"] as number).toBeLessThan(unhookTimeoutMs);
    expect(timedOut).toMatchObject({ closedBy: "timeout" });
    expect(timedOut["durationMs"] as number).toBeGreaterThanOrEqual(unhookTimeoutMs - 5);
    expect(timedOut["durationMs"] as number).toBeLessThan(unhookTimeoutMs + 1000);
    // No reconnect after a migration.
    expect(listener.attempts).toBe(2);
  });

  it("SIGTERM stops the VMs (QEMU killed: the connection just closes) and exits 0", async () => {
    listener = await createTestListener();
    const sim = startSim(["--connect", `unix:${listener.path}`, "--no-workload", "--vcpus", "1", "--memory-mib", "16"]);
    const connection = await listener.connection(1, RUN_TIMEOUT_MS);
    expect((await connection.tool.command("KVMI_GET_VERSION")).err).toBe(0);
    sim.child.kill("SIGTERM");
    const run = await sim.done;
    expect(run.code).toBe(0);
    await within(connection.tool.closed, RUN_TIMEOUT_MS, "the connection closing");
    expect(connection.tool.queuedEvents).toBe(0);
    expect(listener.attempts).toBe(1);
  });
});
