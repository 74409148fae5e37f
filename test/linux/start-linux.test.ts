// SPDX-License-Identifier: Apache-2.0
// The README's one command for a real Linux guest, `npm run start:linux` (test/guest/serve.ts): the
// bridge with its emulated VMs plus Debian's kernel booted under QEMU as linux-0, the `kvmictl ps`
// line it prints works as printed, and Ctrl-C (SIGINT to the process group, as a terminal sends it)
// ends QEMU and the bridge. Boots the guest (no snapshot): that is what the command does.
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import { runKvmictl } from "../support/clients-harness.js";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const dir = mkdtempSync(join(tmpdir(), "kvmi-start-linux-"));
let child: ChildProcess | undefined;

afterAll(() => {
  // A test that failed half-way leaves the group running.
  if (child?.exitCode === null && child.signalCode === null && child.pid !== undefined) process.kill(-child.pid, "SIGKILL");
  rmSync(dir, { recursive: true, force: true });
});

async function kvmictl(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return runKvmictl(args);
}

/** Resolves with the first match of `pattern` in what `read()` returns, once it appears. */
async function waitFor(read: () => string, pattern: RegExp, timeoutMs: number, what: string): Promise<RegExpExecArray> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const match = pattern.exec(read());
    if (match) return match;
    if (child?.exitCode !== null) throw new Error(`npm run start:linux exited (${child?.exitCode}) before ${what}:\n${read()}`);
    if (performance.now() > deadline) throw new Error(`no ${what} within ${timeoutMs} ms:\n${read()}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

describe("npm run start:linux", () => {
  it("serves linux-0 beside the emulated VMs; the printed kvmictl ps lists its workload; Ctrl-C ends everything", async () => {
    if (spawnSync("qemu-system-x86_64", ["--version"]).status !== 0) throw new Error("this test needs qemu-system-x86_64 (test/setup/prepare.sh installs it)");
    let stderr = "";
    child = spawn("npm", ["run", "--silent", "start:linux", "--", "--grpc-listen", "127.0.0.1:0", "--kvmi-listen", `unix:${join(dir, "kvmi.sock")}`, "--metrics-listen", "off"], {
      cwd: ROOT,
      detached: true, // its own process group, so that SIGINT reaches it the way a terminal's Ctrl-C does
      stdio: ["ignore", "ignore", "pipe"],
    });
    child.stderr!.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    const exited = new Promise<string>((resolve) => child!.once("exit", (code, signal) => resolve(`${code ?? signal}`)));

    const [, printed] = await waitFor(() => stderr, /try: npx kvmictl (--target \S+ ps linux-0 --profile \S+)/, 240_000, "the kvmictl line");
    await waitFor(() => stderr, /linux-0 is up/, 120_000, "linux-0 up");
    const target = printed!.split(" ")[1]!;
    const vms = await kvmictl(["--target", target, "--json", "vms", "list"]);
    expect(vms.code, vms.stderr).toBe(0);
    expect((JSON.parse(vms.stdout) as Array<{ displayName: string }>).map((v) => v.displayName)).toContain("linux-0");
    expect(JSON.parse(vms.stdout)).toHaveLength(3); // two emulated VMs, as `npm start`, and linux-0

    const ps = await kvmictl(["--json", ...printed!.split(" ")]);
    expect(ps.code, ps.stderr).toBe(0);
    const processes = JSON.parse(ps.stdout) as Array<{ pid: number; ppid: number; comm: string; kernelThread: boolean }>;
    for (const comm of ["kvmi-ticker", "kvmi-marker", "kvmi-idle"]) expect(processes.find((p) => p.comm === comm)?.ppid, comm).toBe(1);
    expect(processes.find((p) => p.pid === 1)?.kernelThread).toBe(false);

    process.kill(-child.pid!, "SIGINT");
    const code = await Promise.race([exited, new Promise<"hung">((resolve) => setTimeout(() => resolve("hung"), 30_000))]);
    expect(code, stderr).not.toBe("hung");
    // Nothing of it is left soon after (npm may return before QEMU and the bridge have finished).
    const group = () => spawnSync("pgrep", ["-a", "-g", String(child!.pid)], { encoding: "utf8" });
    const deadline = performance.now() + 30_000;
    while (group().status === 0 && performance.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 200));
    const left = group();
    expect(left.status, `still running after Ctrl-C:\n${left.stdout}`).toBe(1);
  });
});
