// SPDX-License-Identifier: Apache-2.0
// The example tools (clients/examples) against the emulator's workload, through a real bridge:
// what they print must match the guest's own ground truth exactly. The workload runs on manual
// ticks, so the tests decide when the guest does anything.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { guestModel } from "@kvmi/kvm-bridge/emulator";
import type { EmulatedVm } from "@kvmi/kvm-bridge/emulator";
import { runNode, startClientsBridge, startNode, tsxArgs } from "../support/clients-harness.js";
import type { ClientsBridge, LiveProcess } from "../support/clients-harness.js";

const { WORKLOAD_TASKS, SYSCALL_ENTRY_GVA } = guestModel;

let bridge: ClientsBridge;
let psVm: EmulatedVm;
let traceVm: EmulatedVm;
let cr3Vm: EmulatedVm;
let eptVm: EmulatedVm;

const manual = { tickIntervalMs: 0, hypercallEveryTicks: 0 };

beforeAll(async () => {
  bridge = await startClientsBridge({
    vms: [
      { name: "ps-vm", vcpus: 2, workload: manual, seed: 7 },
      { name: "trace-vm", vcpus: 1, workload: manual, seed: 11 },
      { name: "cr3-vm", vcpus: 2, workload: manual, seed: 13 },
      { name: "trace-ept-vm", vcpus: 2, workload: manual, seed: 17 },
    ],
    // An event that waits for a stopped tool holds its vCPU for a minute: a test that sees the guest
    // run on while the tool is stopped knows a filter rule answered.
    bridgeArgs: ["--event-timeout-ms", "60000"],
  });
  [psVm, traceVm, cr3Vm, eptVm] = bridge.vms as [EmulatedVm, EmulatedVm, EmulatedVm, EmulatedVm];
  // The first tick starts the application processors, so every vCPU can be introspected.
  await Promise.all([cr3Vm.guest.workload!.step(), eptVm.guest.workload!.step()]);
}, 30_000);

afterAll(async () => {
  await bridge?.stop();
});

const example = (name: string, ...args: string[]): string[] => [...tsxArgs(`clients/examples/${name}.ts`), "--target", bridge.target, ...args];

/** Runs `ticks` while `tool` is stopped (SIGSTOP): only events a filter rule answers let them finish. */
async function ticksWhileStopped(tool: LiveProcess, run: () => Promise<void>): Promise<void> {
  tool.child.kill("SIGSTOP");
  try {
    let timer: NodeJS.Timeout | undefined;
    const waited = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error("the guest waited for the stopped tool: its events were not answered by filter rules")), 20_000);
    });
    await Promise.race([run(), waited]).finally(() => clearTimeout(timer));
  } finally {
    tool.child.kill("SIGCONT");
  }
}

/** The per-pid syscall counts the workload made between two ground-truth snapshots. */
function syscallsBetween(before: guestModel.WorkloadGroundTruth, after: guestModel.WorkloadGroundTruth): Record<string, number> {
  const expected: Record<string, number> = {};
  for (const [pid, n] of after.syscallsByPid) {
    const delta = n - (before.syscallsByPid.get(pid) ?? 0);
    if (delta > 0) expected[String(pid)] = delta;
  }
  return expected;
}

describe("ps", () => {
  it("prints exactly the workload's tasks with their pids, parents and page tables", async () => {
    const result = await runNode(example("ps", "--vm", "ps-vm"));
    expect(result.stderr).toBe("");
    expect(result.code).toBe(0);
    const lines = result.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^\s+PID\s+PPID\s+CR3\s+COMM$/);
    const rows = lines.slice(1).map((line) => {
      const [pid, ppid, cr3, comm] = line.trim().split(/\s+/);
      return { pid: Number(pid), ppid: Number(ppid), cr3: BigInt(cr3!), comm: comm!.replace(/^\[(.*)\]$/, "$1") };
    });
    const truth = psVm.guest.workload!.tasks;
    expect(rows).toEqual(truth.map((t) => ({ pid: t.pid, ppid: t.ppid, cr3: t.cr3, comm: t.comm })));
    expect(rows.map((r) => r.comm)).toEqual(WORKLOAD_TASKS.map((t) => t.comm));
    // Kernel threads are shown in brackets, like ps does.
    expect(lines.filter((l) => l.includes("["))).toHaveLength(WORKLOAD_TASKS.filter((t) => t.kernelThread).length);
  });

  it("prints JSON with --json and fails with one line for an unknown VM", async () => {
    const [json, unknown] = await Promise.all([runNode(example("ps", "--vm", psVm.uuid, "--json")), runNode(example("ps", "--vm", "no-such-vm"))]);
    expect(json.code).toBe(0);
    expect(JSON.parse(json.stdout).map((t: { pid: number }) => t.pid)).toEqual(WORKLOAD_TASKS.map((t) => t.pid));
    expect(unknown.code).toBe(1);
    expect(unknown.stderr.trim().split("\n")).toHaveLength(1);
    expect(unknown.stderr).toContain('no VM is named "no-such-vm"');
  });
});

describe("trace", () => {
  it("--method int3 counts exactly the syscalls each process made while the breakpoint was armed, and restores the entry", async () => {
    const workload = traceVm.guest.workload!;
    await workload.runTicks(3); // activity before the trace must not be counted
    const original = (await bridge.client.vm(traceVm.uuid).readVirtual(0, SYSCALL_ENTRY_GVA, 1))[0];
    const trace = startNode(example("trace", "--vm", "trace-vm", "--method", "int3", "--json"));
    await trace.waitFor(/armed: INT3 at entry_SYSCALL_64/);
    const before = workload.groundTruth();
    await workload.runTicks(40);
    const after = workload.groundTruth();
    trace.child.kill("SIGINT");
    const result = await trace.exited;
    expect(result.code, result.stderr).toBe(0);

    const report = JSON.parse(result.stdout) as { syscalls: Record<string, number>; total: number };
    expect(after.syscallCount - before.syscallCount).toBeGreaterThan(10);
    expect(report.syscalls).toEqual(syscallsBetween(before, after));
    expect(report.total).toBe(after.syscallCount - before.syscallCount);
    // Every traced syscall completed normally: the step-over never re-injected a #BP into the guest.
    const window = after.syscalls.filter((s) => s.seq > (before.syscalls.at(-1)?.seq ?? 0));
    expect(window.every((s) => s.status === "done")).toBe(true);

    expect(result.stderr).toMatch(/disarmed: entry byte is 0xf \(restored\)/);
    expect(original).toBe(0x0f);
    const now = await bridge.client.vm(traceVm.uuid).readVirtual(0, SYSCALL_ENTRY_GVA, 3);
    expect([...now]).toEqual([0x0f, 0x01, 0xf8]); // swapgs, untouched
    // The guest keeps running normally after the trace.
    await workload.runTicks(5);
  });

  it("counts every syscall of every vCPU in the bridge by default: count rules per process, the rest named from notifications, while the tool itself is stopped", async () => {
    const workload = eptVm.guest.workload!;
    await workload.runTicks(3); // activity before the trace must not be counted
    const entryGfn = (await bridge.client.vm(eptVm.uuid).translate(0, SYSCALL_ENTRY_GVA))! >> 12n;
    // Two processes get a counting rule; the other four are named from `notify` events.
    const trace = startNode(example("trace", "--vm", "trace-ept-vm", "--max-rules", "2", "--json"));
    await trace.waitFor(/armed: execute access removed from the page of entry_SYSCALL_64 .*; 2 process\(es\) counted by rules/);
    expect(eptVm.guest.memory.getPageAccess(entryGfn)).toBe(3); // R|W: every fetch there is a PF event
    const before = workload.groundTruth();
    await ticksWhileStopped(trace, () => workload.runTicks(40));
    const after = workload.groundTruth();
    trace.child.kill("SIGINT");
    const result = await trace.exited;
    expect(result.code, result.stderr).toBe(0);

    const report = JSON.parse(result.stdout) as { syscalls: Record<string, number>; total: number; inBridge: number; notified: number; unattributed: number };
    const expected = syscallsBetween(before, after);
    expect(Object.keys(expected).length).toBeGreaterThan(2); // both kinds of rule had work on both vCPUs
    expect(new Set(after.syscalls.filter((s) => s.seq > (before.syscalls.at(-1)?.seq ?? 0)).map((s) => s.vcpu))).toEqual(new Set([0, 1]));
    expect(report.syscalls).toEqual(expected);
    expect(report.total).toBe(after.syscallCount - before.syscallCount);
    expect(report.inBridge).toBeGreaterThan(0);
    expect(report.notified).toBeGreaterThan(0);
    expect(report.inBridge + report.notified).toBe(report.total);
    expect(report.unattributed).toBe(0);
    // The kernel went on with each fetch (CONTINUE): every syscall completed, none saw an exception.
    const window = after.syscalls.filter((s) => s.seq > (before.syscalls.at(-1)?.seq ?? 0));
    expect(window.every((s) => s.status === "done")).toBe(true);
    // The page executes freely again, and the guest goes on without events.
    expect(eptVm.guest.memory.getPageAccess(entryGfn)).toBe(7);
    const more = workload.groundTruth().syscallCount;
    await workload.runTicks(5);
    expect(workload.groundTruth().syscallCount).toBeGreaterThan(more);
  });
});

describe("cr3-monitor", () => {
  it("prints the workload's CR3 switch timeline, per vCPU in order, with pids and names", async () => {
    const workload = cr3Vm.guest.workload!;
    const monitor = startNode(example("cr3-monitor", "--vm", cr3Vm.uuid, "--json"));
    await monitor.waitFor(/monitoring CR3 writes on 2 vCPU/);
    const start = workload.groundTruth().cr3Switches.length;
    // The `notify` rule answers each write in the bridge: the guest switches on while the monitor is stopped.
    await ticksWhileStopped(monitor, () => workload.runTicks(12));
    const switches = workload.groundTruth().cr3Switches.slice(start);
    // The notifications were sent all the same; the monitor prints them once it runs again.
    await monitor.waitFor(new RegExp(`^(?:\\{.*\\}\\n){${switches.length}}`));
    monitor.child.kill("SIGINT");
    const result = await monitor.exited;
    expect(result.code, result.stderr).toBe(0);

    const comm = new Map(WORKLOAD_TASKS.map((t) => [t.pid, t.comm]));
    const lines = result.stdout.trim().split("\n").map((l) => JSON.parse(l) as { vcpu: number; fromPid: number; toPid: number; fromComm: string; toComm: string });
    expect(switches.length).toBeGreaterThanOrEqual(20);
    expect(lines).toHaveLength(switches.length);
    for (const vcpu of [0, 1]) {
      const seen = lines.filter((l) => l.vcpu === vcpu).map((l) => [l.fromPid, l.toPid, l.fromComm, l.toComm]);
      const truth = switches.filter((s) => s.vcpu === vcpu).map((s) => [s.fromPid, s.toPid, comm.get(s.fromPid), comm.get(s.toPid)]);
      expect(seen).toEqual(truth);
    }
    // Every write went through unchanged.
    expect(switches.every((s) => s.loadedCr3 === s.cr3)).toBe(true);
  });

  it("prints a readable timeline without --json", async () => {
    const workload = cr3Vm.guest.workload!;
    const monitor = startNode(example("cr3-monitor", "--vm", "cr3-vm", "--count", "4"));
    await monitor.waitFor(/monitoring CR3 writes/);
    const ticking = workload.runTicks(6);
    const result = await monitor.exited;
    await ticking;
    expect(result.code, result.stderr).toBe(0);
    const lines = result.stdout.trim().split("\n");
    expect(lines[0]).toMatch(/^TIME\s+VCPU\s+FROM -> TO$/);
    expect(lines).toHaveLength(5);
    for (const line of lines.slice(1)) expect(line).toMatch(/^\d{4}-\d\d-\d\dT\S+Z\s+\d\s+\d+ \([\w/-]+\) -> \d+ \([\w/-]+\)$/);
  });
});
