// SPDX-License-Identifier: Apache-2.0
// The gdbstub and QMP clients against a real QEMU running Debian's kernel (test/guest/README.md).
import { readFileSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GdbPoint, connectGdb, connectQmp, launchQemu, type GdbClient, type QemuProcess, type QmpClient } from "@kvmi/kvm-bridge/qemu";
import { ensureGuestImage, TICKER_SYSCALL } from "../guest/build.js";

let qemu: QemuProcess;
let qmp: QmpClient;
let gdb: GdbClient;
let symbols: Map<string, bigint>;
const KERNEL_MAP = 0xffffffff80000000n; // __START_KERNEL_map; phys_base is 0 with nokaslr

beforeAll(async () => {
  const image = await ensureGuestImage();
  symbols = new Map(
    readFileSync(image.kallsyms, "latin1")
      .split("\n")
      .map((line) => line.split(" "))
      .filter((fields) => fields.length >= 3)
      .map((fields) => [fields[2]!, BigInt(`0x${fields[0]}`)] as const),
  );
  qemu = await launchQemu({ kernel: image.kernel, initrd: image.initrd, append: image.cmdline, name: "clients-test", uuid: "0b5e6a7c-0000-4000-8000-00000000c11e" });
  await qemu.waitForConsole(/KVMI-READY/, 240_000, { seen: true });
  qmp = await connectQmp({ kind: "unix", path: qemu.qmpSocket });
  gdb = await connectGdb({ kind: "unix", path: qemu.gdbSocket });
});

afterAll(async () => {
  gdb?.close();
  qmp?.close();
  await qemu?.stop();
});

describe("QEMU clients against a real QEMU", () => {
  it("QMP names the VM and its vCPUs; connecting the gdbstub paused it", async () => {
    expect(await qmp.name()).toBe("clients-test");
    expect(await qmp.uuid()).toBe("0b5e6a7c-0000-4000-8000-00000000c11e");
    expect((await qmp.cpus()).length).toBe(2);
    expect(gdb.threads).toHaveLength(2);
    expect((await qmp.status()).running).toBe(false);
  });

  it("reads 64-bit kernel state of each vCPU and physical memory the guest wrote", async () => {
    for (const vcpu of [0, 1]) {
      const regs = await gdb.readRegisters(vcpu);
      expect(regs.get("cr0")! & 0x80000001n).toBe(0x80000001n); // PG | PE
      expect(regs.get("efer")! & 0x500n).toBe(0x500n); // LME | LMA
      expect(regs.get("cr3")).toBeGreaterThan(0n);
    }
    const initTask = symbols.get("init_task")!;
    const bytes = await gdb.readMemory(initTask - KERNEL_MAP, 0x1800);
    expect(Buffer.from(bytes).includes("swapper/0")).toBe(true);
    expect(await qmp.gva2gpa(0, initTask)).toBe(initTask - KERNEL_MAP);
  });

  it("breaks on the ticker's syscall, single-steps one instruction, and resumes", async () => {
    const target = symbols.get(TICKER_SYSCALL.kernelFunction)!;
    await gdb.insertPoint(GdbPoint.Software, target);
    const hit = new Promise<Parameters<Parameters<GdbClient["onUnsolicitedStop"]>[0]>[0]>((resolve) => {
      const off = gdb.onUnsolicitedStop((stop) => {
        off();
        resolve(stop);
      });
    });
    await gdb.resume();
    const stop = await hit;
    const vcpu = gdb.vcpuOf(stop);
    expect((await gdb.readRegisters(vcpu)).get("rip")).toBe(target);
    await gdb.removePoint(GdbPoint.Software, target);
    await gdb.step(vcpu);
    const rip = (await gdb.readRegisters(vcpu)).get("rip")!;
    expect(rip).toBeGreaterThan(target);
    expect(rip - target).toBeLessThan(16n);
    await gdb.resume();
    expect((await qmp.status()).running).toBe(true);
    await gdb.interrupt();
  });
});
