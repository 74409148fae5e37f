// SPDX-License-Identifier: Apache-2.0
// The `ps` and `cr3-monitor` examples against Debian's kernel behind kvmi-qemu, with the profile the
// guest build made (the `trace` example has trace-example.test.ts). The guest's own `ps` is the
// ground truth for the pids and names. cr3-monitor follows switches with an INT3 on
// switch_mm_irqs_off there, as QEMU's gdbstub cannot intercept CR3 writes (docs/qemu-backend.md);
// it used to refuse such a VM.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Profile } from "@kvmi/clients";
import { startClientsBridge, startNode, tsxArgs, type ClientsBridge } from "../support/clients-harness.js";
import { startLinuxVm, type LinuxVm } from "./linux-harness.js";

let bridge: ClientsBridge;
let vm: LinuxVm;

beforeAll(async () => {
  bridge = await startClientsBridge({ vms: [] });
  vm = await startLinuxVm(bridge);
});

afterAll(async () => {
  await vm?.stop();
  await bridge?.stop();
});

const example = (name: string, ...extra: string[]): string[] => [
  ...tsxArgs(`clients/examples/${name}.ts`),
  "--target", bridge.target, "--vm", "linux-0", "--profile", vm.image.profile, ...extra,
];

interface Switch {
  readonly vcpu: number;
  readonly fromPid: number | null;
  readonly fromComm: string | null;
  readonly toPid: number | null;
  readonly toComm: string | null;
  readonly cr3: string;
}

describe("examples on the real guest", () => {
  it("ps lists the guest's own processes with their pids, parents and names", async () => {
    const before = await vm.qemu.guestPs();
    const result = await startNode(example("ps", "--json")).exited;
    const after = await vm.qemu.guestPs();
    expect(result.code, result.stderr).toBe(0);
    const ours = new Map((JSON.parse(result.stdout) as Array<{ pid: number; ppid: number; comm: string; cr3: string | null }>).map((p) => [p.pid, p]));
    // Tasks alive at both moments (not the guest's `ps` itself); a busy kworker shows its workqueue in /proc only.
    const stable = before.filter((p) => p.comm !== "ps" && after.some((q) => q.pid === p.pid && q.comm === p.comm));
    expect(stable.length).toBeGreaterThan(20);
    for (const task of stable) {
      expect(ours.get(task.pid)?.comm, `pid ${task.pid}`).toBe(task.comm.replace(/^(kworker\/[^-]+)-.*$/, "$1"));
      expect(ours.get(task.pid)?.ppid, `ppid of ${task.pid}`).toBe(task.ppid);
    }
    for (const comm of ["kvmi-ticker", "kvmi-marker", "kvmi-idle"]) {
      const task = [...ours.values()].find((p) => p.comm === comm)!;
      expect(task.cr3, comm).toMatch(/^0x[0-9a-f]+000$/); // a user process has its own page tables
    }
  });

  it("cr3-monitor names the switches through a breakpoint, a new process included, and leaves the kernel as it was", async () => {
    const commands = bridge.client.vm(vm.backend.uuid);
    const gva = (await Profile.load(vm.image.profile)).requireSymbol("switch_mm_irqs_off");
    const gpa = (await commands.translate(0, gva))!;
    const original = await commands.readPhysical(gpa, 1);

    const monitor = startNode(example("cr3-monitor", "--json", "--duration", "5000"));
    await monitor.waitFor(/monitoring CR3 writes on 2 vCPU\(s\) of linux-0 \(no CR events: INT3 at switch_mm_irqs_off\)/, 60_000);
    // The guest's own `ps` is a process born after the monitor read the task list: its switches
    // (fork, exec) must name its pid, read from the switch itself.
    const ps = (await vm.qemu.guestPs()).find((p) => p.comm === "ps")!;
    const result = await monitor.exited;
    expect(result.code, result.stderr).toBe(0);
    const switches = result.stdout.trim().split("\n").map((line) => JSON.parse(line) as Switch);
    expect(switches.some((s) => s.toPid === ps.pid), result.stdout).toBe(true);
    const known = new Map(vm.snapshot.ps.map((p) => [p.pid, p.comm]));
    for (const s of switches) {
      expect(s.fromPid, JSON.stringify(s)).not.toBeNull();
      expect(s.toPid, JSON.stringify(s)).not.toBeNull();
      expect(s.cr3).toMatch(/^0x[0-9a-f]+000$/);
      // A process of the saved guest keeps its name (kvmi-ticker and kvmi-marker take turns on a vCPU).
      if (known.has(s.toPid!) && s.toPid !== 1) expect(s.toComm, JSON.stringify(s)).toBe(known.get(s.toPid!));
    }
    expect(result.stderr).toMatch(new RegExp(`\\b${switches.length} switches`));

    // The INT3 is gone (the function's byte reads as before) and the guest runs on.
    expect(await commands.readPhysical(gpa, 1)).toEqual(original);
    expect((await vm.qemu.guestPs()).some((p) => p.comm === "kvmi-ticker" && known.get(p.pid) === "kvmi-ticker")).toBe(true);
  });
});
