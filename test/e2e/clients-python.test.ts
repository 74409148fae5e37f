// SPDX-License-Identifier: Apache-2.0
// The Python example (clients/examples/python): stubs generated at test time from proto/ with
// Debian's protoc and gRPC Python plugin, run with Debian's python3-grpcio against a real bridge.
// What it prints must match the guest: the VM list, the VM found by display name (resolved by the
// server), the bytes of guest memory, and the ErrorInfo of a refused read.
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { EmulatedVm } from "@kvmi/kvm-bridge/emulator";
import { REPO_ROOT, startClientsBridge } from "../support/clients-harness.js";
import type { ClientsBridge } from "../support/clients-harness.js";

/** Debian's interpreter: the one python3-grpcio installs into (a pyenv `python3` on PATH would not have it). */
const PYTHON = "/usr/bin/python3";
const EXAMPLE = join(REPO_ROOT, "clients/examples/python");

let bridge: ClientsBridge;
let vm: EmulatedVm;
let gen: string;

/** Fails with what is missing and how to install it (test/setup/prepare.sh installs all of it). */
function requireTools(): void {
  const missing: string[] = [];
  if (!existsSync(PYTHON) || spawnSync(PYTHON, ["-c", "import grpc, google.protobuf"]).status !== 0) missing.push("python3-grpcio (Debian's python3 with grpc and google.protobuf)");
  for (const [tool, pkg] of [["protoc", "protobuf-compiler"], ["grpc_python_plugin", "protobuf-compiler-grpc"]] as const) {
    if (spawnSync("sh", ["-c", `command -v ${tool}`]).status !== 0) missing.push(`${tool} (${pkg})`);
  }
  if (missing.length > 0) throw new Error(`the Python example test needs ${missing.join(", ")}: run bash test/setup/prepare.sh`);
}

beforeAll(async () => {
  requireTools();
  gen = mkdtempSync(join(tmpdir(), "kvmi-python-gen-"));
  const generated = spawnSync("bash", [join(EXAMPLE, "generate.sh"), gen], { encoding: "utf8" });
  if (generated.status !== 0) throw new Error(`generate.sh failed: ${generated.stderr}`);
  bridge = await startClientsBridge({ vms: [{ name: "py-vm", vcpus: 2, workload: { tickIntervalMs: 0 } }] });
  [vm] = bridge.vms as [EmulatedVm];
}, 60_000);

afterAll(async () => {
  await bridge?.stop();
  if (gen) rmSync(gen, { recursive: true, force: true });
});

/** Runs the example as a child process (asynchronously: the bridge serves it from this process). */
function runExample(...args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(PYTHON, [join(EXAMPLE, "kvmi_example.py"), "--target", bridge.target, ...args], {
      env: { ...process.env, PYTHONPATH: gen },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    child.on("error", reject);
    child.on("close", (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
  });
}

describe("the Python example", () => {
  it("lists VMs, gets one by display name, reads guest memory and decodes ErrorInfo", async () => {
    const r = await runExample("--vm", "py-vm", "--gpa", "0x1000", "--json");
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.vms).toEqual([{ name: `vms/${vm.uuid}`, displayName: "py-vm", state: "STATE_HOOKED" }]);
    expect(out.vm).toEqual({ name: `vms/${vm.uuid}`, uuid: vm.uuid, displayName: "py-vm", vcpuCount: 2 });
    const truth = vm.guest.memory.read(0x1000n, 64);
    expect(truth.ok && out.read.data).toBe(truth.ok && Buffer.from(truth.bytes).toString("hex"));
    expect(out.error).toMatchObject({ code: "INVALID_ARGUMENT", reason: "KVMI_INVALID_ARGUMENT", domain: "kvmi.v1.IntrospectionService", metadata: { command: "KVMI_VM_READ_PHYSICAL" } });
  });

  it("prints text, and names a VM by UUID as well", async () => {
    const r = await runExample("--vm", vm.uuid);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain(`vms/${vm.uuid} is 'py-vm', 2 vCPU(s)`);
    expect(r.stdout).toMatch(/^0000000000001000: ([0-9a-f]{2} ){15}[0-9a-f]{2}$/m);
    expect(r.stdout).toContain("unaligned read refused: INVALID_ARGUMENT, reason KVMI_INVALID_ARGUMENT, command KVMI_VM_READ_PHYSICAL");
  });
});
