// SPDX-License-Identifier: Apache-2.0
// kvmictl against a real bridge with emulated VMs. Every subcommand runs at least once as a user
// runs it (`node clients/cli/bin/kvmictl.mjs …`); variations of arguments and output run the same
// `main()` in-process, which is much faster than a process each. Outputs are checked against the
// SDK and the guest; exit codes are 0 (ok), 1 (an error from the bridge) and 2 (usage).
import { readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MemoryHoleError, State } from "@kvmi/clients";
import { main as kvmictlMain } from "@kvmi/clients/cli";
import { runKvmictl } from "../support/clients-harness.js";
import { guestModel } from "@kvmi/kvm-bridge/emulator";
import type { EmulatedVm } from "@kvmi/kvm-bridge/emulator";
import { KVMICTL_BIN, runNode, startClientsBridge, startNode } from "../support/clients-harness.js";
import type { ClientsBridge, RunResult } from "../support/clients-harness.js";

const { INIT_TASK_GVA, LINUX_BANNER_GVA } = guestModel;

let bridge: ClientsBridge;
let ticking: EmulatedVm;
let manualVm: EmulatedVm;
let releaseVm: EmulatedVm;
const dumpFile = join(tmpdir(), `kvmictl-dump-${process.pid}.img`);

beforeAll(async () => {
  bridge = await startClientsBridge({
    vms: [
      { name: "cli-a", vcpus: 2 },
      { name: "cli-b", vcpus: 1, workload: { tickIntervalMs: 0 } },
      { name: "cli-release", vcpus: 1, workload: { tickIntervalMs: 0 } },
    ],
  });
  [ticking, manualVm, releaseVm] = bridge.vms as [EmulatedVm, EmulatedVm, EmulatedVm];
}, 30_000);

afterAll(async () => {
  await bridge?.stop();
  rmSync(dumpFile, { force: true });
});

/** Runs the kvmictl process. */
const spawnCli = (...args: string[]) => runNode([KVMICTL_BIN, "--target", bridge.target, ...args]);

/** Runs kvmictl's main() in-process; `signal` plays Ctrl-C. */
async function kvmictl(...args: Array<string | AbortSignal>): Promise<RunResult> {
  const signal = args.find((a): a is AbortSignal => typeof a !== "string") ?? new AbortController().signal;
  return runKvmictl(["--target", bridge.target, ...args.filter((a): a is string => typeof a === "string")], signal);
}
const hex = (v: bigint) => `0x${v.toString(16)}`;

describe("kvmictl vms", () => {
  it("lists, gets and watches VMs, by UUID, vms/UUID or display name", async () => {
    const [list, get, watch] = await Promise.all([
      spawnCli("vms", "list"),
      spawnCli("vms", "get", "cli-a"),
      spawnCli("vms", "watch", "--count", "3"),
    ]);
    expect(list.code, list.stderr).toBe(0);
    const lines = list.stdout.trim().split("\n");
    expect(lines[0]).toMatch(/^UUID\s+NAME\s+STATE\s+GEN\s+VCPUS\s+CONTROLLER\s+OBSERVERS$/);
    expect(lines).toHaveLength(4);
    expect(list.stdout).toMatch(new RegExp(`${ticking.uuid}\\s+cli-a\\s+HOOKED\\s+1\\s+2\\s+no\\s+0`));
    expect(get.code).toBe(0);
    expect(get.stdout).toMatch(new RegExp(`^uuid:\\s+${ticking.uuid}$`, "m"));
    expect(get.stdout).toMatch(/^displayName:\s+cli-a$/m);
    expect(watch.code).toBe(0);
    expect(watch.stdout.trim().split("\n")).toHaveLength(3);
    expect(watch.stdout).toMatch(/EXISTING\s+\S+\s+cli-a\s+HOOKED\s+gen 1/);

    const [json, byUuid, byResource, watchOne] = await Promise.all([
      kvmictl("--json", "vms", "list"),
      kvmictl("vms", "get", ticking.uuid),
      kvmictl("--json", "vms", "get", `vms/${ticking.uuid.toUpperCase()}`),
      kvmictl("--json", "vms", "watch", manualVm.uuid, "--count", "1"),
    ]);
    expect(JSON.parse(json.stdout).map((v: { displayName: string }) => v.displayName).sort()).toEqual(["cli-a", "cli-b", "cli-release"]);
    expect(byUuid.stdout).toMatch(new RegExp(`^uuid:\\s+${ticking.uuid}$`, "m"));
    expect(JSON.parse(byResource.stdout)).toMatchObject({ uuid: ticking.uuid, displayName: "cli-a", state: "HOOKED", vcpuCount: 2 });
    expect(JSON.parse(watchOne.stdout)).toMatchObject({ type: "EXISTING", vm: { uuid: manualVm.uuid } });
  });

  it("prints one line with the status and reason for errors from the bridge, and exits 1", async () => {
    const [missing, unreachable] = await Promise.all([
      spawnCli("vms", "get", "00000000-0000-4000-8000-000000000000"),
      kvmictl("--target", "127.0.0.1:1", "--timeout", "2000", "vms", "list"),
    ]);
    expect(missing.code).toBe(1);
    expect(missing.stdout).toBe("");
    expect(missing.stderr).toMatch(/^kvmictl: VM vms\/0{8}-0000-4000-8000-0{12} is not known to this bridge \(NOT_FOUND, VM_NOT_FOUND\)\n$/);
    expect(unreachable.code).toBe(1);
    expect(unreachable.stderr).toMatch(/^kvmictl: .*\(UNAVAILABLE\)\n$/);
  });

  it("exits 2 for usage mistakes and 0 for help", async () => {
    const [unknown, help] = await Promise.all([spawnCli("frobnicate"), kvmictl("--help")]);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain("unknown command 'frobnicate'");
    expect(help.code).toBe(0);
    for (const command of ["vms", "info", "regs", "read", "dump", "write", "translate", "events", "pause", "page-access"]) expect(help.stdout).toContain(command);
    const [none, missingArg, badVcpu, badAccess, noYes, badHex, badCr3] = await Promise.all([
      kvmictl(),
      kvmictl("read", "cli-b"),
      kvmictl("regs", "cli-a", "zero"),
      kvmictl("page-access", "cli-b", "0x7000", "rwz"),
      kvmictl("write", "cli-b", "0x7000", "cc"),
      kvmictl("write", "cli-b", "0x7000", "c", "--yes"),
      kvmictl("read", "cli-b", "0x1000", "16", "--cr3", "0x1000", "--vcpu", "0"),
    ]);
    for (const r of [none, missingArg, badVcpu, badAccess, noYes, badHex, badCr3]) expect(r.code, r.stderr).toBe(2);
    expect(missingArg.stderr).toContain("missing required argument 'addr'");
    expect(badVcpu.stderr).toBe('kvmictl: vcpu: "zero" is not a non-negative integer\n');
    expect(badAccess.stderr).toContain("is not a permission like rwx");
    expect(noYes.stderr).toBe("kvmictl: refusing to write 1 byte(s) of guest memory without --yes\n");
    expect(badHex.stderr).toContain("is not an even number of hex digits");
    expect(badCr3.stderr).toContain("--vcpu and --cr3 are alternatives");
  });
});

describe("kvmictl inspection", () => {
  it("info, regs and translate show what the SDK reads", async () => {
    const vm = bridge.client.vm(manualVm.uuid);
    const regs = await vm.getRegisters(0);
    const taskGpa = await vm.translateGva(0, INIT_TASK_GVA);
    const [info, regsOut, translated] = await Promise.all([
      spawnCli("info", "cli-b"),
      spawnCli("regs", "cli-b", "0", "--msr", "0xc0000082"),
      spawnCli("translate", "cli-b", "0", hex(INIT_TASK_GVA)),
    ]);
    expect(info.code, info.stderr).toBe(0);
    expect(info.stdout).toMatch(/memory\s+64\.0 MiB \(max gfn 0x4000\)/);
    expect(info.stdout).toMatch(/kvmi\s+dialect v9, version 1, singlestep yes/);
    expect(info.stdout).toMatch(new RegExp(`^0\\s+64-bit\\s+0x[0-9a-f]{16}\\s+0x${regs.sregs.cr3.toString(16).padStart(16, "0")}\\s+2\\.400 GHz$`, "m"));
    expect(regsOut.code).toBe(0);
    expect(regsOut.stdout).toContain(`vms/${manualVm.uuid}/vcpus/0  mode 64-bit`);
    expect(regsOut.stdout).toContain(`rip 0x${regs.regs.rip.toString(16).padStart(16, "0")}`);
    expect(regsOut.stdout).toContain(`cr3  0x${regs.sregs.cr3.toString(16).padStart(16, "0")}`);
    expect(regsOut.stdout).toMatch(/efer 0x0000000000000d01 \[SCE LME LMA NXE\]/);
    expect(regsOut.stdout).toMatch(/^cs\s+sel 0x0010 .* P L G S$/m);
    expect(regsOut.stdout).toContain("msr 0xc0000082 = 0xffffffff80001000");
    expect(translated.stdout).toBe(`0x${INIT_TASK_GVA.toString(16)} -> 0x${taskGpa!.toString(16).padStart(16, "0")}\n`);

    const [regsJson, badVcpu, unmapped, infoIdle] = await Promise.all([
      kvmictl("--json", "regs", manualVm.uuid, "0"),
      kvmictl("regs", "cli-b", "3"),
      kvmictl("--json", "translate", "cli-b", "0", "0x100000000000"),
      kvmictl("--json", "info", "cli-a"),
    ]);
    expect(JSON.parse(regsJson.stdout)).toMatchObject({ vcpu: 0, mode: "64-bit", regs: { rip: hex(regs.regs.rip) }, sregs: { cr3: hex(regs.sregs.cr3) } });
    expect(badVcpu.code).toBe(1);
    expect(badVcpu.stderr).toContain("(INVALID_ARGUMENT, VCPU_NOT_FOUND)");
    expect(JSON.parse(unmapped.stdout)).toEqual({ vm: `vms/${manualVm.uuid}`, vcpu: 0, gva: "0x100000000000", mapped: false });
    expect(JSON.parse(infoIdle.stdout)).toMatchObject({ vcpuCount: 2, memoryBytes: 0x4000000, vcpus: [{ vcpu: 0, started: true }, { vcpu: 1 }] });
  });

  it("read prints an xxd-style hex dump of physical or virtual memory", async () => {
    const vm = bridge.client.vm(manualVm.uuid);
    const cr3 = (await vm.getRegisters(0)).sregs.cr3;
    const gpa = (await vm.translateGva(0, LINUX_BANNER_GVA))!;
    const [virtual, viaCr3, physical, json, hole] = await Promise.all([
      spawnCli("read", "cli-b", hex(LINUX_BANNER_GVA), "20", "--virtual"),
      kvmictl("read", "cli-b", hex(LINUX_BANNER_GVA), "20", "--cr3", hex(cr3)),
      kvmictl("read", "cli-b", hex(gpa), "0x14"),
      kvmictl("--json", "read", "cli-b", hex(gpa + 0x1000n - 4n), "8"),
      kvmictl("read", "cli-b", "0x3fffff8", "16"),
    ]);
    expect(virtual.code, virtual.stderr).toBe(0);
    expect(virtual.stdout).toBe(
      "ffffffff80006000: 4c69 6e75 7820 7665 7273 696f 6e20 352e  Linux version 5.\n" +
        "ffffffff80006010: 382e 302d                                8.0-\n",
    );
    expect(viaCr3.stdout).toBe(virtual.stdout);
    expect(physical.stdout).toBe(virtual.stdout.replaceAll("ffffffff80006", gpa.toString(16).padStart(16, "0").slice(0, 13)));
    const parsed = JSON.parse(json.stdout);
    expect(parsed).toMatchObject({ address: hex(gpa + 0x1000n - 4n), length: 8, space: "physical", holes: [] });
    expect(parsed.data).toBe(Buffer.from(await vm.readPhysical(gpa + 0x1000n - 4n, 8)).toString("hex"));
    expect(hole.code).toBe(1);
    expect(hole.stdout.split("\n")[0]).toMatch(/^0000000003fffff8: /);
    expect(hole.stderr).toBe("hole: 0x4000000+0x8 notPresent (shown as zeros)\n");
  });

  it("dump writes a sparse image that matches guest memory and reports throughput", async () => {
    const vm = bridge.client.vm(manualVm.uuid);
    const expected = await vm.readPhysical(0x80000n, 1024 * 1024).catch((e: MemoryHoleError) => e);
    expect(expected).toBeInstanceOf(MemoryHoleError);
    const { data, holes } = expected as MemoryHoleError;
    const holeBytes = holes.reduce((n, h) => n + Number(h.length), 0);
    const result = await spawnCli("dump", "cli-b", "--out", dumpFile, "--start", "0x80000", "--length", "1M", "--chunk-size", "64k");
    expect(result.code, result.stderr).toBe(0);
    const kib = (n: number) => `${(n / 1024).toFixed(1)} KiB`;
    expect(result.stderr).toMatch(
      new RegExp(`^dumped 1\\.0 MiB of vms/\\S+ to \\S+ in \\d+\\.\\d\\d s \\([\\d.]+ \\S+/s\\); ${kib(1024 * 1024 - holeBytes)} read, ${kib(holeBytes)} in holes\n$`),
    );
    expect(statSync(dumpFile).size).toBe(1024 * 1024);
    expect(readFileSync(dumpFile)).toEqual(Buffer.from(data));
    const bad = await kvmictl("dump", "cli-b", "--out", dumpFile, "--start", "0x123");
    expect(bad.code).toBe(2);
    // On a terminal, a progress bar on stderr.
    let stderr = "";
    const tty = await kvmictlMain(["--target", bridge.target, "dump", "cli-b", "--out", dumpFile, "--length", "256k", "--chunk-size", "4k"], {
      stdout: () => undefined,
      stderr: (t) => (stderr += t),
      stderrIsTTY: true,
      signal: new AbortController().signal,
      env: {},
    });
    expect(tty).toBe(0);
    expect(stderr).toMatch(/\r\[#{30}\] 100%  256\.0 KiB \/ 256\.0 KiB  \S+ \S+\/s \n/);
  });
});

describe("kvmictl changes", () => {
  it("write attaches as controller, writes and verifies; the write stays, and with --hold the bridge undoes it on Ctrl-C", async () => {
    const vm = bridge.client.vm(manualVm.uuid);
    const original = await vm.readPhysical(0x7000n, 2);
    const once = await spawnCli("write", "cli-b", "0x7000", "cafe", "--yes");
    expect(once.code, once.stderr).toBe(0);
    expect(once.stdout).toBe(`wrote 2 byte(s) at 0x7000 of vms/${manualVm.uuid} (verified); previous bytes ${Buffer.from(original).toString("hex")}\n`);
    // Released with keep_changes: the bridge forgot the change instead of undoing it.
    expect([...(await vm.readPhysical(0x7000n, 2))]).toEqual([0xca, 0xfe]);
    const restore = await spawnCli("write", "cli-b", "0x7000", Buffer.from(original).toString("hex"), "--yes");
    expect(restore.code, restore.stderr).toBe(0);
    expect(await vm.readPhysical(0x7000n, 2)).toEqual(original);

    const ctrlC = new AbortController();
    const held = kvmictl("write", "cli-b", "0x7000", "ca fe", "--yes", "--hold", ctrlC.signal);
    await bridge.waitForVm(manualVm.uuid, (v) => v.controllerAttached);
    await waitUntil(async () => (await vm.readPhysical(0x7000n, 2))[0] === 0xca);
    expect([...(await vm.readPhysical(0x7000n, 2))]).toEqual([0xca, 0xfe]);
    ctrlC.abort();
    const result = await held;
    expect(result.code, result.stderr).toBe(0);
    expect(result.stderr).toContain("holding the controller session");
    expect(await vm.readPhysical(0x7000n, 2)).toEqual(original);
  });

  it("page-access restricts a page (kept after exit, undone after --hold)", async () => {
    const once = await spawnCli("page-access", "cli-b", "0x7000", "r-x");
    expect(once.code, once.stderr).toBe(0);
    expect(once.stdout).toBe(`page 0x7000 of vms/${manualVm.uuid} is now r-x\n`);
    expect(manualVm.guest.memory.getPageAccess(7n)).toBe(5);
    const ctrlC = new AbortController();
    const held = kvmictl("--json", "page-access", "cli-b", "0x7000", "none", "--hold", ctrlC.signal);
    await bridge.waitForVm(manualVm.uuid, (v) => v.controllerAttached);
    await waitUntil(async () => manualVm.guest.memory.getPageAccess(7n) === 0);
    ctrlC.abort();
    const result = await held;
    expect(result.code, result.stderr).toBe(0);
    expect(JSON.parse(result.stdout)).toEqual({ vm: `vms/${manualVm.uuid}`, page: "0x7000", access: "---" });
    // The held change is undone (back to rwx: the ledger restores full access).
    expect(manualVm.guest.memory.getPageAccess(7n)).toBe(7);
  });

  it("pause stops a vCPU and resumes it after --duration", async () => {
    const result = await spawnCli("pause", "cli-a", "1", "--duration", "150");
    expect(result.code, result.stderr).toBe(0);
    const [paused, resumed] = result.stdout.trim().split("\n");
    expect(paused).toMatch(new RegExp(`^vCPU 1 of vms/${ticking.uuid} paused at rip 0x[0-9a-f]{16} \\(cr3 0x[0-9a-f]+, 64-bit\\)$`));
    expect(resumed).toMatch(/^vCPU 1 resumed after 0\.\d\d s$/);
    expect(Number(/after (\S+) s/.exec(resumed!)![1])).toBeGreaterThanOrEqual(0.14);
  });
});

describe("kvmictl events watch", () => {
  it("as controller enables the events, answers them and prints JSON lines", async () => {
    const result = await spawnCli("events", "watch", "cli-a", "--controller", "--type", "cr", "--vcpu", "0", "--count", "3");
    expect(result.code, result.stderr).toBe(0);
    const lines = result.stdout.trim().split("\n").map((l) => JSON.parse(l));
    expect(lines).toHaveLength(3);
    for (const line of lines) {
      expect(line).toMatchObject({ kind: "event", vm: ticking.uuid, vcpu: 0, type: "cr", cr: 3, rip: "0xffffffff80002000" });
      expect(line.cr3).toBe(line.oldValue);
    }
    // The controller released: its interception is gone.
    await bridge.waitForVm(ticking.uuid, (vm) => !vm.controllerAttached);
  });

  it("as observer prints copies of the controller's events, and the unhook notice", async () => {
    const workload = releaseVm.guest.workload!;
    const watcher = startNode([KVMICTL_BIN, "--target", bridge.target, "events", "watch", "cli-release", "--type", "cr"]);
    await watcher.waitFor(/watching \S+ as observer \(cr\)/);
    const session = await bridge.client.attach(releaseVm.uuid, { role: "controller" });
    await session.controlCr(0, 3, true);
    await session.controlVcpuEvents(0, "cr", true);
    const answering = (async () => {
      for await (const item of session.events()) {
        if (item.kind === "event") await item.continue();
        if (item.kind === "unhook") return session.release();
      }
    })();
    await workload.runTicks(3);
    await watcher.waitFor(/"type":"cr"/);
    await bridge.client.releaseVm(releaseVm.uuid, { gracePeriodMs: 2000 });
    await answering;
    const result = await watcher.exited;
    expect(result.code, result.stderr).toBe(0);
    const lines = result.stdout.trim().split("\n").map((l) => JSON.parse(l));
    const cr = lines.filter((l) => l.kind === "event");
    expect(cr.length).toBeGreaterThanOrEqual(1);
    expect(cr.every((l) => l.type === "cr" && l.vcpu === 0)).toBe(true);
    expect(lines.at(-1)).toMatchObject({ kind: "unhook", vm: releaseVm.uuid, reason: "operator" });
    expect(Date.parse(lines.at(-1).deadline)).toBeGreaterThan(Date.parse(lines.at(-1).time));
    await bridge.waitForVm(releaseVm.uuid, (vm) => vm.state === State.HOOKED && vm.generation === 2n);
  });

  it("with --filter, a notify rule answers in the bridge while kvmictl is stopped; the lines name the rule, --summary-interval adds the counters", async () => {
    const workload = manualVm.guest.workload!;
    await workload.step(); // the current task is settled before the watch starts
    const watcher = startNode([
      KVMICTL_BIN, "--target", bridge.target, "events", "watch", "cli-b", "--controller", "--type", "cr", "--filter", "cr cr=3 -> notify as switch", "--summary-interval", "100",
    ]);
    await watcher.waitFor(/watching \S+ as controller \(cr\)/);
    const before = workload.groundTruth().cr3SwitchCount;
    // A stopped kvmictl answers nothing: only the rule lets these CR3 writes through (the bridge's
    // own deadline, 5 s per write, would make the ticks outlast the test).
    watcher.child.kill("SIGSTOP");
    try {
      await workload.runTicks(6);
    } finally {
      watcher.child.kill("SIGCONT");
    }
    const switches = workload.groundTruth().cr3SwitchCount - before;
    expect(switches).toBeGreaterThan(0);
    await watcher.waitFor(new RegExp(`"kind":"filterSummary".*"notified":${switches}\\b`));
    watcher.child.kill("SIGINT");
    const result = await watcher.exited;
    expect(result.code, result.stderr).toBe(0);
    const lines = result.stdout.trim().split("\n").map((l) => JSON.parse(l));
    const events = lines.filter((l) => l.kind === "event");
    expect(events).toHaveLength(switches);
    for (const e of events) expect(e).toMatchObject({ type: "cr", cr: 3, rule: "switch", answeredWith: "continue" });
    expect(lines.filter((l) => l.kind === "filterSummary").at(-1)).toMatchObject({
      rules: [{ name: "switch", matched: switches, replied: 0, notified: switches, delivered: 0 }],
      unmatched: 0,
      notificationsDropped: 0,
    });
    await bridge.waitForVm(manualVm.uuid, (vm) => !vm.controllerAttached);
  });

  it("refuses a filter it cannot parse before connecting, naming the rule and the part (exit 2)", async () => {
    const result = await kvmictl("events", "watch", "cli-b", "--controller", "--type", "cr", "--filter", "cr cr=3 -> notify ; cr bogus=1 -> count");
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('--filter: filter rule 2 ("cr bogus=1 -> count"): unknown condition "bogus=1"');
    const observer = await kvmictl("events", "watch", "cli-b", "--filter", "cr -> count");
    expect(observer.code).toBe(2);
    expect(observer.stderr).toContain("--filter needs --controller");
  });
});

async function waitUntil(probe: () => Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await probe())) {
    if (Date.now() > until) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe("kvmictl OS commands (the workload's profile)", () => {
  it("ps lists the workload's tasks, sym resolves both ways, read --pid reads through the process's page tables", async () => {
    const [ps, psJson, sym, back, missing] = await Promise.all([
      spawnCli("ps", "cli-b"),
      kvmictl("--json", "ps", "cli-b"),
      kvmictl("sym", "init_task"),
      kvmictl("sym", hex(INIT_TASK_GVA + 0x10n)),
      kvmictl("sym", "no_such_symbol"),
    ]);
    expect(ps.code, ps.stderr).toBe(0);
    const lines = ps.stdout.trim().split("\n");
    expect(lines[0]).toMatch(/^PID\s+PPID\s+PAGE TABLE\s+COMMAND$/);
    expect(lines.slice(1).map((line) => line.trim().split(/\s+/).at(-1))).toEqual(guestModel.WORKLOAD_TASKS.map((t) => (t.kernelThread ? `[${t.comm}]` : t.comm)));
    const processes = JSON.parse(psJson.stdout) as Array<{ pid: number; ppid: number; comm: string; task: string; pageTable: string }>;
    expect(processes.map((p) => [p.pid, p.ppid])).toEqual(guestModel.WORKLOAD_TASKS.map((t) => [t.pid, t.ppid]));
    expect(sym.stdout).toBe(`init_task = ${hex(INIT_TASK_GVA)}\n`);
    expect(back.stdout).toBe(`${hex(INIT_TASK_GVA + 0x10n)} = init_task+0x10\n`);
    expect(missing.code).toBe(1);

    const bash = processes.find((p) => p.comm === "bash")!;
    const vm = bridge.client.vm(manualVm.uuid);
    const startCode = new DataView((await vm.readVirtual(0, BigInt(bash.task) + 0x38n, 8)).buffer).getBigUint64(0, true);
    const expected = await vm.readVirtual({ cr3: BigInt(bash.pageTable) }, startCode, 16);
    const read = await kvmictl("--json", "read", "cli-b", hex(startCode), "16", "--pid", String(bash.pid));
    expect(read.code, read.stderr).toBe(0);
    expect(JSON.parse(read.stdout)).toMatchObject({ pid: 1024, data: Buffer.from(expected).toString("hex") });
    const unknown = await kvmictl("read", "cli-b", hex(startCode), "16", "--pid", "4242");
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/no process with pid 4242/);
  });
});
