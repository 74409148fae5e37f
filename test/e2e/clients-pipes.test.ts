// SPDX-License-Identifier: Apache-2.0
// kvmictl and the examples behind a shell pipe whose reader stops early (`| head`): they exit 0
// without a stack trace, as `cat` does, and release the session they held.
import { spawn } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { EmulatedVm } from "@kvmi/kvm-bridge/emulator";
import { KVMICTL_BIN, REPO_ROOT, startClientsBridge, tsxArgs } from "../support/clients-harness.js";
import type { ClientsBridge } from "../support/clients-harness.js";

let bridge: ClientsBridge;
let vm: EmulatedVm;

beforeAll(async () => {
  bridge = await startClientsBridge({ vms: [{ name: "pipe-vm", vcpus: 2 }] });
  [vm] = bridge.vms as [EmulatedVm];
}, 30_000);

afterAll(async () => {
  await bridge?.stop();
});

interface PipeResult {
  /** Exit status of the command on the left of the pipe. */
  readonly status: number;
  /** What `head` printed. */
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs `node ARGS | head HEAD_ARG` in bash and reports the status of node (PIPESTATUS[0]). */
function pipeToHead(args: readonly string[], headArg: string): Promise<PipeResult> {
  const quoted = [process.execPath, ...args].map((a) => `'${a.replace(/'/g, "'\\''")}'`).join(" ");
  const script = `${quoted} | head ${headArg}; echo "status=\${PIPESTATUS[0]}" >&2`;
  return new Promise((resolve, reject) => {
    const child = spawn("bash", ["-c", script], { cwd: REPO_ROOT, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
    child.on("error", reject);
    child.on("close", () => {
      clearTimeout(timer);
      const m = /status=(\d+)\n$/.exec(stderr);
      if (!m) return reject(new Error(`no status from the pipeline: ${stderr}`));
      resolve({ status: Number(m[1]), stdout, stderr: stderr.slice(0, m.index) });
    });
  });
}

const kvmictl = (...args: string[]): string[] => [KVMICTL_BIN, "--target", bridge.target, ...args];

describe("a reader that stops early", () => {
  it("ends `kvmictl events watch --controller | head -2` with status 0, and the controller session is released", async () => {
    const result = await pipeToHead(kvmictl("events", "watch", "pipe-vm", "--controller", "--type", "cr"), "-2");
    expect(result.stderr).not.toMatch(/EPIPE|Error|at /);
    expect(result.status, result.stderr).toBe(0);
    const lines = result.stdout.trim().split("\n");
    expect(lines).toHaveLength(2);
    for (const line of lines) expect(JSON.parse(line)).toMatchObject({ kind: "event", type: "cr" });
    await bridge.waitForVm(vm.uuid, (v) => !v.controllerAttached && v.observerCount === 0);
  });

  it("ends `kvmictl read … | head -0` with status 0 and no stack trace", async () => {
    const result = await pipeToHead(kvmictl("read", "pipe-vm", "0x100000", "1M"), "-0");
    expect(result.stdout).toBe("");
    expect(result.stderr).toBe("");
    expect(result.status).toBe(0);
  });

  it("ends `cr3-monitor --json | head -1` with status 0, and its controller session is released", async () => {
    const result = await pipeToHead([...tsxArgs("clients/examples/cr3-monitor.ts"), "--target", bridge.target, "--vm", "pipe-vm", "--json"], "-1");
    expect(result.stderr).not.toMatch(/EPIPE|Error|at /);
    expect(result.status, result.stderr).toBe(0);
    expect(JSON.parse(result.stdout)).toMatchObject({ vcpu: expect.any(Number), cr3: expect.stringMatching(/^0x/) });
    await bridge.waitForVm(vm.uuid, (v) => !v.controllerAttached);
  });

  it("refuses example flags that are not numbers", async () => {
    for (const flag of ["--count=abc", "--duration=-5"]) {
      const result = await pipeToHead([...tsxArgs("clients/examples/cr3-monitor.ts"), "--target", bridge.target, "--vm", "pipe-vm", flag], "-5");
      expect(result.status, flag).toBe(2);
      expect(result.stderr).toMatch(/is not a non-negative integer/);
    }
  });
});
