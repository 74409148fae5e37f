// SPDX-License-Identifier: Apache-2.0
// Debian's real gdb, in batch mode, debugs an emulated guest through the bridge and the gateway
// (`serveGdb` in-process, and `kvmictl gdb` as a user runs it): registers, memory by virtual and
// physical address, a breakpoint on the workload's syscall entry, continue, stepi, threads,
// detach; afterwards the guest runs on with its memory as it was and nothing left enabled.
import { execFile, execFileSync } from "node:child_process";
import { connect as tcpConnect } from "node:net";
import type { Socket } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encodePacket, RspReader, serveGdb } from "@kvmi/clients";
import { guestModel } from "@kvmi/kvm-bridge/emulator";
import type { EmulatedVm } from "@kvmi/kvm-bridge/emulator";
import { KVMICTL_BIN, startClientsBridge, startNode } from "../support/clients-harness.js";
import type { ClientsBridge } from "../support/clients-harness.js";

const { LINUX_BANNER_GVA, SYSCALL_ENTRY_GVA } = guestModel;

function requireGdb(): void {
  try {
    execFileSync("gdb", ["--version"], { stdio: "ignore" });
  } catch {
    throw new Error("the GDB gateway tests need Debian's gdb: apt-get install gdb (test/setup/prepare.sh installs it)");
  }
}

interface GdbRun {
  readonly code: number | null;
  readonly output: string;
}

/** Runs `gdb -batch` with `commands` against `port`; gdb's stdout and stderr together. */
function runGdb(port: number, commands: readonly string[], timeoutMs = 60_000): Promise<GdbRun> {
  const args = ["-nx", "-batch", "-ex", "set pagination off", "-ex", "set confirm off", "-ex", `target remote 127.0.0.1:${port}`];
  for (const c of commands) args.push("-ex", c);
  return new Promise((resolve) => {
    execFile("gdb", args, { timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof (err as { code?: unknown }).code === "number" ? ((err as { code: number }).code) : null;
      resolve({ code, output: `${stdout}${stderr}` });
    });
  });
}

/** Bytes of guest physical memory, read by the emulator itself (not through the bridge). */
function guestBytes(vm: EmulatedVm, gpa: bigint, length: number): Buffer {
  const r = vm.guest.memory.read(gpa, length);
  if (!r.ok) throw new Error(`gpa ${gpa.toString(16)} is not backed`);
  return Buffer.from(r.bytes);
}

/** The GPA of the kernel image page that holds `gva` (the kernel half is one 2 MiB page). */
function kernelGpa(vm: EmulatedVm, gva: bigint): bigint {
  const walk = guestModel.walkPageTables(vm.guest.memory, vm.guest.workload!.swapperCr3, gva);
  if (walk === null) throw new Error(`${gva.toString(16)} is not mapped`);
  return walk.gpa;
}

const hex = (v: bigint) => `0x${v.toString(16)}`;

/** A bare RSP client (what gdb does on the wire), for what gdb's batch mode cannot do: Ctrl-C. */
class RawRsp {
  private readonly reader = new RspReader();
  private readonly replies: string[] = [];
  private waiter: (() => void) | undefined;

  private constructor(readonly socket: Socket) {
    socket.on("data", (chunk: Buffer) => {
      for (const item of this.reader.feed(chunk)) {
        if (item.kind === "packet") this.replies.push(Buffer.from(item.payload).toString("latin1"));
      }
      this.waiter?.();
    });
  }

  static open(port: number): Promise<RawRsp> {
    return new Promise((resolve, reject) => {
      const socket = tcpConnect(port, "127.0.0.1", () => resolve(new RawRsp(socket)));
      socket.once("error", reject);
    });
  }

  send(payload: string): void {
    this.socket.write(encodePacket(payload));
  }

  async reply(timeoutMs = 20_000): Promise<string> {
    const until = Date.now() + timeoutMs;
    while (this.replies.length === 0) {
      if (Date.now() > until) throw new Error("no reply from the gateway");
      await new Promise<void>((r) => {
        this.waiter = r;
        setTimeout(r, 50);
      });
    }
    return this.replies.shift()!;
  }

  async request(payload: string): Promise<string> {
    this.send(payload);
    return this.reply();
  }
}

/** An X packet (binary data, escaped as the protocol requires) built by hand. */
function xPacket(address: bigint, data: Uint8Array): Buffer {
  const escaped: number[] = [];
  for (const b of data) {
    if (b === 0x23 || b === 0x24 || b === 0x7d || b === 0x2a) escaped.push(0x7d, b ^ 0x20);
    else escaped.push(b);
  }
  const payload = Buffer.concat([Buffer.from(`X${address.toString(16)},${data.length}:`, "latin1"), Buffer.from(escaped)]);
  const sum = payload.reduce((n, b) => (n + b) & 0xff, 0);
  return Buffer.concat([Buffer.from("$"), payload, Buffer.from(`#${sum.toString(16).padStart(2, "0")}`)]);
}

const syscalls = () => vm.guest.workload!.groundTruth().syscallCount;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** True while every vCPU sits in an event the gateway has not answered. */
const allHeld = () => [0, 1].every((i) => vm.kernel.vcpu(i)?.isWaitingForReply === true);

let bridge: ClientsBridge;
let vm: EmulatedVm;

beforeAll(async () => {
  requireGdb();
  bridge = await startClientsBridge({ vms: [{ name: "gdb-a", vcpus: 2, workload: { tickIntervalMs: 5, syscallProbability: 1 } }] });
  [vm] = bridge.vms as [EmulatedVm];
}, 30_000);

afterAll(async () => {
  await bridge?.stop();
});

describe("gdb through the gateway", { timeout: 120_000 }, () => {
  it("reads registers and memory, stops at a breakpoint on the syscall entry, steps, lists threads and detaches cleanly", async () => {
    const codeGpa = kernelGpa(vm, SYSCALL_ENTRY_GVA);
    const before = guestBytes(vm, codeGpa & ~0xfffn, 4096);
    const gateway = await serveGdb(bridge.client, vm.uuid);
    try {
      const run = await runGdb(gateway.port, [
        "info registers rip cs cr3 efer fs_base gs_base",
        `x/16xb ${hex(LINUX_BANNER_GVA)}`,
        `break *${hex(SYSCALL_ENTRY_GVA)}`,
        "continue",
        "info registers rip rax",
        `x/3xb ${hex(SYSCALL_ENTRY_GVA)}`,
        "stepi",
        "info registers rip",
        "info threads",
        "detach",
      ]);
      const out = run.output;
      expect(run.code, out).toBe(0);
      // The banner as gdb printed it equals what the guest holds.
      const banner = guestBytes(vm, kernelGpa(vm, LINUX_BANNER_GVA), 16);
      const printed = [...out.matchAll(/^0xffffffff80006\S*:\s+((?:0x[0-9a-f]{2}\s*)+)$/gm)].flatMap((m) => m[1]!.trim().split(/\s+/)).map((b) => parseInt(b, 16));
      expect(Buffer.from(printed)).toEqual(banner);
      expect(out).toMatch(/^cs\s+0x10\s/m);
      expect(out).toMatch(/^cr3\s+0x[0-9a-f]+/m);
      expect(out).toMatch(/^gs_base\s+0xffffffff8002[01]000/m);
      // Stopped on the INT3, with RIP at the breakpoint (swbreak) and a syscall number in RAX.
      expect(out).toMatch(/hit Breakpoint 1, 0xffffffff80001000 in \?\? \(\)/);
      const rips = [...out.matchAll(/^rip\s+(0x[0-9a-f]+)/gm)].map((m) => BigInt(m[1]!));
      expect(rips.at(-2)).toBe(SYSCALL_ENTRY_GVA);
      // gdb sees the original instruction (swapgs, 0f 01 f8), not the INT3.
      expect(out).toMatch(/0xffffffff80001000:\s+0x0f\s+0x01\s+0xf8/);
      // stepi executed swapgs (3 bytes) with KVMI single-step.
      expect(rips.at(-1)).toBe(SYSCALL_ENTRY_GVA + 3n);
      expect(out).toMatch(/^\*?\s+1\s+Thread 1 "vCPU 0" 0xffffffff80001003 in/m);
      expect(out).toMatch(/^\s+2\s+Thread 2 "vCPU 1" 0x[0-9a-f]+ in/m);
      expect(out).toMatch(/\[Inferior 1 \(Remote target\) detached\]/);
    } finally {
      await gateway.close();
    }
    // Nothing left behind: the code page is byte-identical, the guest runs on.
    expect(guestBytes(vm, codeGpa & ~0xfffn, 4096)).toEqual(before);
    const syscalls = vm.guest.workload!.groundTruth().syscallCount;
    await bridge.waitForVm(vm.uuid, (v) => !v.controllerAttached);
    await expect.poll(() => vm.guest.workload!.groundTruth().syscallCount, { timeout: 10_000 }).toBeGreaterThan(syscalls + 5);
    // The gateway undid its own changes (no BREAKPOINT events, no single-step), not the bridge's ledger.
    for (let i = 0; i < 2; i++) {
      expect(vm.kernel.vcpu(i)?.enabledEvents.size).toBe(0);
      expect(vm.kernel.vcpu(i)?.singlestep).toBe(false);
    }
  });

  it("Ctrl-C (0x03) stops every vCPU and reports SIGINT; the stop holds past the bridge's event deadline", async () => {
    // A 1 s event deadline: without the keep-alive the bridge would let the vCPUs run after 1 s.
    const gateway = await serveGdb(bridge.client, vm.uuid, { eventDeadlineMs: 1000 });
    const rsp = await RawRsp.open(gateway.port);
    try {
      expect(await rsp.request("?")).toMatch(/^T05thread:[12];$/);
      const stoppedAt = syscalls();
      await sleep(2500);
      expect(syscalls()).toBe(stoppedAt);
      await expect.poll(allHeld).toBe(true);
      expect(await rsp.request("vCont?")).toBe("vCont;c;C;s;S;t");
      rsp.send("vCont;c");
      await expect.poll(syscalls, { timeout: 10_000 }).toBeGreaterThan(stoppedAt + 3);
      rsp.socket.write(Buffer.of(0x03));
      expect(await rsp.reply()).toMatch(/^T02thread:[12];$/);
      const interruptedAt = syscalls();
      await sleep(2500);
      expect(syscalls()).toBe(interruptedAt);
      await expect.poll(allHeld).toBe(true);
      // Threads and registers still answer after keep-alive swaps; thread 2 is vCPU 1.
      expect(await rsp.request("qfThreadInfo")).toBe("m1,2");
      expect(await rsp.request("qsThreadInfo")).toBe("l");
      expect(await rsp.request("Hg2")).toBe("OK");
      expect(await rsp.request("qC")).toBe("QC2");
      expect(await rsp.request("p10")).toMatch(/^[0-9a-f]{16}$/);
      expect(await rsp.request("T3")).toMatch(/^E/);
      // Only struct kvm_regs is writable: cs (register 0x12) is not.
      expect(await rsp.request("P12=23000000")).toBe("E16");
      // M writes through the selected vCPU's translation; X (binary, `}`-escaped) writes the bytes back.
      const bannerGpa = kernelGpa(vm, LINUX_BANNER_GVA);
      const original = guestBytes(vm, bannerGpa, 2);
      expect(await rsp.request(`M${LINUX_BANNER_GVA.toString(16)},2:7d23`)).toBe("OK");
      expect([...guestBytes(vm, bannerGpa, 2)]).toEqual([0x7d, 0x23]);
      expect(await rsp.request(`m${LINUX_BANNER_GVA.toString(16)},2`)).toBe("7d23");
      rsp.socket.write(xPacket(LINUX_BANNER_GVA, original));
      expect(await rsp.reply()).toBe("OK");
      expect(guestBytes(vm, bannerGpa, 2)).toEqual(original);
      expect(await rsp.request("m10,0")).toBe("");
      expect(await rsp.request("D")).toBe("OK");
    } finally {
      rsp.socket.destroy();
      await gateway.close();
    }
    await expect.poll(syscalls, { timeout: 10_000 }).toBeGreaterThan(syscalls() + 3);
  });

  it("undoes its INT3s when gdb is killed, shows original bytes while they are in, and serves physical addresses with monitor phys on", async () => {
    const codeGpa = kernelGpa(vm, SYSCALL_ENTRY_GVA);
    const before = guestBytes(vm, codeGpa & ~0xfffn, 4096);
    const bannerGpa = kernelGpa(vm, LINUX_BANNER_GVA);
    const gateway = await serveGdb(bridge.client, vm.uuid);
    try {
      const shown = await runGdb(gateway.port, [
        "set breakpoint always-inserted on",
        `break *${hex(SYSCALL_ENTRY_GVA)}`,
        `x/3xb ${hex(SYSCALL_ENTRY_GVA)}`,
        "monitor phys on",
        `x/8xb ${hex(bannerGpa)}`,
        "monitor phys off",
        "detach",
      ]);
      expect(shown.code, shown.output).toBe(0);
      // The INT3 was in guest memory, but gdb read the original bytes.
      expect(shown.output).toMatch(/0xffffffff80001000:\s+0x0f\s+0x01\s+0xf8/);
      const banner = guestBytes(vm, bannerGpa, 8);
      expect(shown.output).toContain(`${hex(bannerGpa)}:\t${[...banner].map((b) => `0x${b.toString(16).padStart(2, "0")}`).join("\t")}`);
      expect(shown.output).toContain("addresses are guest physical");
      expect(guestBytes(vm, codeGpa & ~0xfffn, 4096)).toEqual(before);

      const killed = runGdb(gateway.port, ["set breakpoint always-inserted on", `break *${hex(SYSCALL_ENTRY_GVA)}`, "shell sleep 30"]);
      await expect.poll(() => guestBytes(vm, codeGpa, 1)[0], { timeout: 20_000 }).toBe(0xcc);
      const gdbPid = await findGdbChild(gateway.port);
      // gdb dies without a word to the gateway; its `shell sleep` child goes too (it holds gdb's stdout).
      for (const pid of [gdbPid, ...(await childrenOf(gdbPid))]) process.kill(pid, "SIGKILL");
      expect((await killed).code).not.toBe(0);
      await gateway.idle();
    } finally {
      await gateway.close();
    }
    expect(guestBytes(vm, codeGpa & ~0xfffn, 4096)).toEqual(before);
    for (let i = 0; i < 2; i++) expect(vm.kernel.vcpu(i)?.enabledEvents.size).toBe(0);
    await bridge.waitForVm(vm.uuid, (v) => !v.controllerAttached);
  });

  it("refuses gdb while another controller holds the VM, and says why", async () => {
    const other = await bridge.client.attach(vm.uuid, { role: "controller" });
    const lines: string[] = [];
    const gateway = await serveGdb(bridge.client, vm.uuid, { log: (l) => lines.push(l) });
    try {
      const ended = gateway.nextSessionEnd();
      const rsp = await RawRsp.open(gateway.port);
      rsp.send("?");
      await new Promise((resolve) => rsp.socket.on("close", resolve));
      expect(await ended).toEqual({ attached: false });
      expect(lines.join("\n")).toMatch(/gdb connection refused: .*controller/i);
    } finally {
      await gateway.close();
      await other.release();
    }
  });

  it("kvmictl gdb --listen serves a gdb session as a user runs it and exits after it with --once", async () => {
    const cli = startNode([KVMICTL_BIN, "--target", bridge.target, "gdb", "gdb-a", "--listen", "127.0.0.1:0", "--once"]);
    const [, port] = (await cli.waitFor(/on 127\.0\.0\.1:(\d+); connect with: gdb -ex 'target remote 127\.0\.0\.1:\d+'/, 30_000)) as unknown as [string, string];
    const run = await runGdb(Number(port), ["info threads", `x/s ${hex(LINUX_BANNER_GVA)}`, "kill"]);
    expect(run.code, run.output).toBe(0);
    expect(run.output).toMatch(/\[Inferior 1 \(Remote target\) killed\]/);
    expect(run.output).toContain('"Linux version 5.8.0-kvmi');
    expect(run.output).toMatch(/Thread 2 "vCPU 1"/);
    const exited = await cli.exited;
    expect(exited.code, exited.stderr).toBe(0);
    expect(exited.stderr).toMatch(/gdb session ended; the guest runs on/);
    // "kill" leaves the guest running, like detach.
    const after = syscalls();
    await expect.poll(syscalls, { timeout: 10_000 }).toBeGreaterThan(after + 3);
  });
});

/** The pid of the gdb process connected to `port` (found through /proc, as gdb runs under execFile). */
async function findGdbChild(port: number): Promise<number> {
  const { readdirSync, readFileSync } = await import("node:fs");
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, "latin1").split("\0");
      if (cmdline[0]?.endsWith("gdb") && cmdline.includes(`target remote 127.0.0.1:${port}`)) return Number(entry);
    } catch {
      // The process ended meanwhile.
    }
  }
  throw new Error(`no gdb connected to port ${port}`);
}

/** The pids of the direct children of `parent` (from /proc/PID/stat: field 4 is the parent pid). */
async function childrenOf(parent: number): Promise<number[]> {
  const { readdirSync, readFileSync } = await import("node:fs");
  const children: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "latin1");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (ppid === parent) children.push(Number(entry));
    } catch {
      // The process ended meanwhile.
    }
  }
  return children;
}
