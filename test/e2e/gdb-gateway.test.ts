// SPDX-License-Identifier: Apache-2.0
// Debian's real gdb, in batch mode, debugs an emulated guest through the bridge and the gateway
// (`serveGdb` in-process, and `kvmictl gdb` as a user runs it): registers, memory by virtual and
// physical address, a breakpoint on the workload's syscall entry, continue, stepi, threads,
// detach; afterwards the guest runs on with its memory as it was and nothing left enabled.
import { execFile, execFileSync } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { serveGdb } from "@kvmi/clients";
import { guestModel } from "@kvmi/kvm-bridge/emulator";
import type { EmulatedVm } from "@kvmi/kvm-bridge/emulator";
import { startClientsBridge } from "../support/clients-harness.js";
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

describe("gdb through the gateway", () => {
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
});
