// SPDX-License-Identifier: Apache-2.0
// The kvmictl commands a newcomer missed (issue 17 §3): cpuid, xcr, xsave, mtrr, regs set, inject,
// step, break, vms release, write --virtual, --version on every binary, and bash completion. Each
// output is checked against the SDK or the guest's own state; the workload runs on manual ticks, so
// the guest only executes when the test says so.
import { spawn } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runKvmictl } from "../support/clients-harness.js";
import { guestModel } from "@kvmi/kvm-bridge/emulator";
import type { EmulatedVm } from "@kvmi/kvm-bridge/emulator";
import { KVMICTL_BIN, REPO_ROOT, runNode, startClientsBridge } from "../support/clients-harness.js";
import type { ClientsBridge, RunResult } from "../support/clients-harness.js";

const { SYSCALL_ENTRY_GVA, LINUX_BANNER_GVA } = guestModel;
const manual = { tickIntervalMs: 0, hypercallEveryTicks: 0 };

let bridge: ClientsBridge;
let vm: EmulatedVm;
let released: EmulatedVm;

beforeAll(async () => {
  bridge = await startClientsBridge({
    vms: [
      { name: "cmd-vm", vcpus: 1, workload: manual, seed: 5 },
      { name: "cmd-release", vcpus: 1, workload: manual },
    ],
  });
  [vm, released] = bridge.vms as [EmulatedVm, EmulatedVm];
}, 30_000);

afterAll(async () => {
  await bridge?.stop();
});

async function kvmictl(...args: string[]): Promise<RunResult> {
  return runKvmictl(["--target", bridge.target, ...args]);
}

/** Runs `command` while ticking the guest until it ends (a vCPU must run for steps, traps and hits). */
async function whileTicking(command: Promise<RunResult>): Promise<RunResult> {
  let done = false;
  const result = command.finally(() => (done = true));
  const workload = vm.guest.workload!;
  while (!done) {
    await workload.step();
    await new Promise((r) => setTimeout(r, 10));
  }
  return result;
}

const hex = (v: bigint | number) => `0x${v.toString(16)}`;

describe("read-only vCPU commands", () => {
  it("cpuid, xcr, xsave and mtrr print what the SDK reads", async () => {
    const h = bridge.client.vm(vm.uuid);
    const [leaf, xcr0, area, mtrr] = await Promise.all([h.getCpuid(0, 1), h.getXcr(0), h.getXsave(0), h.getMtrrType(0, 0x1000n)]);
    const [cpuid, cpuidJson, xcr, xsave, xsaveText, mtrrOut] = await Promise.all([
      kvmictl("cpuid", "cmd-vm", "0", "1"),
      kvmictl("--json", "cpuid", "cmd-vm", "0", "0x1", "0"),
      kvmictl("--json", "xcr", "cmd-vm", "0"),
      kvmictl("--json", "xsave", "cmd-vm", "0"),
      kvmictl("xsave", "cmd-vm", "0"),
      kvmictl("mtrr", "cmd-vm", "0", "0x1000"),
    ]);
    for (const r of [cpuid, cpuidJson, xcr, xsave, xsaveText, mtrrOut]) expect(r.code, r.stderr).toBe(0);
    expect(cpuid.stdout).toMatch(new RegExp(`^cpuid 0x1\\.0x0: eax 0x${leaf.eax.toString(16).padStart(8, "0")} ebx 0x${leaf.ebx.toString(16).padStart(8, "0")} ecx 0x${leaf.ecx.toString(16).padStart(8, "0")} edx 0x${leaf.edx.toString(16).padStart(8, "0")}\\n$`));
    expect(JSON.parse(cpuidJson.stdout)).toMatchObject({ leaf: "0x1", subleaf: "0x0", eax: hex(leaf.eax), edx: hex(leaf.edx) });
    expect(JSON.parse(xcr.stdout)).toMatchObject({ xcr: 0, value: hex(xcr0) });
    expect(JSON.parse(xsave.stdout)).toMatchObject({ size: area.length, data: Buffer.from(area).toString("hex") });
    expect(xsaveText.stdout.split("\n")[0]).toMatch(/^0000000000000000: /);
    expect(mtrrOut.stdout).toBe(`0x1000: write-back (kernel value ${mtrr.rawType})\n`);
  });
});

describe("commands that change a vCPU", () => {
  it("regs set changes registers in the reply to a pause, and the guest keeps them", async () => {
    const h = bridge.client.vm(vm.uuid);
    const before = await h.getRegisters(0);
    const result = await kvmictl("regs", "set", "cmd-vm", "0", "r12=0x1234", "R13=77");
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toBe(`r12    0x${before.regs.r12.toString(16).padStart(16, "0")} -> 0x0000000000001234\nr13    0x${before.regs.r13.toString(16).padStart(16, "0")} -> 0x000000000000004d\n`);
    const after = await h.getRegisters(0);
    expect(after.regs.r12).toBe(0x1234n);
    expect(after.regs.r13).toBe(77n);
    const [bad, none] = await Promise.all([kvmictl("regs", "set", "cmd-vm", "0", "cr3=1"), kvmictl("regs", "set", "cmd-vm", "0")]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/"cr3=1" is not REGISTER=VALUE/);
    expect(none.code).toBe(2);
    // `regs VM VCPU` still reads.
    const read = await kvmictl("regs", "cmd-vm", "0");
    expect(read.stdout).toContain("r12 0x0000000000001234");
  });

  it("inject queues an exception and reports the TRAP event that confirms it", async () => {
    const result = await whileTicking(kvmictl("--json", "inject", "cmd-vm", "0", "6"));
    expect(result.code, result.stderr).toBe(0);
    expect(JSON.parse(result.stdout)).toMatchObject({ vcpu: 0, vector: 6, injected: true });
    await bridge.waitForVm(vm.uuid, (v) => !v.controllerAttached);
  });

  it("step single-steps a vCPU and prints RIP after each instruction", async () => {
    const result = await whileTicking(kvmictl("--json", "step", "cmd-vm", "0", "--count", "3"));
    expect(result.code, result.stderr).toBe(0);
    const lines = result.stdout.trim().split("\n").map((l) => JSON.parse(l) as { step: number; rip: string });
    expect(lines.map((l) => l.step)).toEqual([0, 1, 2, 3]);
    for (const l of lines) expect(l.rip).toMatch(/^0x[0-9a-f]+$/);
    await bridge.waitForVm(vm.uuid, (v) => !v.controllerAttached);
  });

  it("break stops at a function the workload runs, steps over it, and leaves the code byte-identical", async () => {
    const gpa = (await bridge.client.vm(vm.uuid).translateGva(0, SYSCALL_ENTRY_GVA))!;
    const before = await bridge.client.vm(vm.uuid).readPhysical(gpa, 16);
    const result = await whileTicking(kvmictl("--json", "break", "cmd-vm", hex(SYSCALL_ENTRY_GVA), "--count", "2"));
    expect(result.code, result.stderr).toBe(0);
    const hits = result.stdout.trim().split("\n").map((l) => JSON.parse(l) as { hit: number; gpa: string; rip: string });
    expect(hits.map((h) => h.hit)).toEqual([1, 2]);
    for (const h of hits) expect(h.gpa).toBe(hex(gpa));
    expect(await bridge.client.vm(vm.uuid).readPhysical(gpa, 16)).toEqual(before);
    await bridge.waitForVm(vm.uuid, (v) => !v.controllerAttached);
    const unmapped = await kvmictl("break", "cmd-vm", "0x100000000000");
    expect(unmapped.code).toBe(2);
    expect(unmapped.stderr).toMatch(/is not mapped in vCPU 0's address space/);
  });
});

describe("memory and registry commands", () => {
  it("write --virtual writes through the vCPU's paging", async () => {
    const gva = LINUX_BANNER_GVA + 0x200n;
    const h = bridge.client.vm(vm.uuid);
    const gpa = (await h.translateGva(0, gva))!;
    const result = await kvmictl("--json", "write", "cmd-vm", hex(gva), "c0ffee", "--virtual", "--yes");
    expect(result.code, result.stderr).toBe(0);
    expect(JSON.parse(result.stdout)).toMatchObject({ gva: hex(gva), written: 3, verified: true });
    expect(Buffer.from(await h.readPhysical(gpa, 3)).toString("hex")).toBe("c0ffee");
  });

  it("vms release unhooks a VM, which QEMU's reconnect hooks again", async () => {
    const result = await kvmictl("vms", "release", "cmd-release", "--grace", "0");
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toMatch(new RegExp(`^released vms/${released.uuid} \\(cmd-release\\): DISCONNECTED`));
    await bridge.waitForVm(released.uuid, (v) => v.generation === 2n);
  });
});

describe("--version and completion", () => {
  it("kvmictl, kvmi-bridge and kvmi-sim print their version", async () => {
    const version = (JSON.parse((await import("node:fs")).readFileSync(`${REPO_ROOT}/package.json`, "utf8")) as { version: string }).version;
    const [ctl, bridgeBin, sim] = await Promise.all([
      runNode([KVMICTL_BIN, "--version"]),
      runNode([`${REPO_ROOT}/service/bin/kvmi-bridge.mjs`, "--version"]),
      runNode([`${REPO_ROOT}/kvm-bridge/bin/kvmi-sim.mjs`, "--version"]),
    ]);
    expect(ctl).toMatchObject({ code: 0, stdout: `${version}\n` });
    expect(bridgeBin).toMatchObject({ code: 0, stdout: `kvmi-bridge ${version}\n` });
    expect(sim).toMatchObject({ code: 0, stdout: `kvmi-sim ${version}\n` });
  });

  it("kvmictl completion bash completes commands, subcommands and options in bash", async () => {
    const complete = (words: string[]): Promise<string> =>
      new Promise((resolve, reject) => {
        const script = `source <('${process.execPath}' '${KVMICTL_BIN}' completion bash) && COMP_WORDS=(${words.map((w) => `'${w}'`).join(" ")}) && COMP_CWORD=${words.length - 1} && _kvmictl && echo "\${COMPREPLY[*]}"`;
        const child = spawn("bash", ["-c", script], { cwd: REPO_ROOT, stdio: ["ignore", "pipe", "pipe"] });
        let out = "";
        child.stdout.on("data", (d: Buffer) => (out += d.toString()));
        child.on("error", reject);
        child.on("close", (code) => (code === 0 ? resolve(out.trim()) : reject(new Error(`bash exited ${code}`))));
      });
    const [top, vms, breakOptions, regs] = await Promise.all([
      complete(["kvmictl", "b"]),
      complete(["kvmictl", "vms", ""]),
      complete(["kvmictl", "break", "cmd-vm", "--c"]),
      complete(["kvmictl", "regs", "s"]),
    ]);
    expect(top).toBe("break");
    expect(vms.split(" ").sort()).toEqual(["--help", "get", "list", "release", "watch"]);
    expect(breakOptions).toBe("--count");
    expect(regs).toBe("set");
  });
});
