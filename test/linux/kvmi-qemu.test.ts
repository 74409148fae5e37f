// SPDX-License-Identifier: Apache-2.0
// kvmi-qemu end to end: Debian's kernel under QEMU (TCG), presented to a real bridge through the
// emulated KVMI kernel side, beside an emulated VM. The guest's own `ps` and console are the ground
// truth (test/guest/README.md). One guest for the whole file, restored from the suite's snapshot.
import { readFileSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Profile, linux } from "@kvmi/clients";
import type { LinuxGuest, Session, SessionItem } from "@kvmi/clients";
import { runKvmictl } from "../support/clients-harness.js";
import type { QemuBackend, QemuProcess } from "@kvmi/kvm-bridge/qemu";
import { MARKER, TICKER_SYSCALL, type GuestImage } from "../guest/build.js";
import { startClientsBridge, type ClientsBridge } from "../support/clients-harness.js";
import { startLinuxVm, type LinuxVm } from "./linux-harness.js";

let image: GuestImage;
let bridge: ClientsBridge;
let qemu: QemuProcess;
let backend: QemuBackend;
let guest: LinuxGuest;
let vm: LinuxVm;

beforeAll(async () => {
  bridge = await startClientsBridge({ vms: [{ name: "emu-0", vcpus: 1 }] });
  vm = await startLinuxVm(bridge, { name: "linux-0" });
  ({ image, qemu, backend } = vm);
  guest = linux(bridge.client.vm(backend.uuid), await Profile.load(image.profile));
});

afterAll(async () => {
  await vm?.stop();
  await bridge?.stop();
});

async function kvmictl(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return runKvmictl(["--target", bridge.target, ...args]);
}

/** The next event matching `match`; every other event is continued. */
async function nextEvent(session: Session, match: (item: SessionItem) => boolean, timeoutMs = 60_000): Promise<SessionItem> {
  for await (const item of session.events({ signal: AbortSignal.timeout(timeoutMs) })) {
    if (match(item)) return item;
    if (item.kind === "event") await item.continue();
  }
  throw new Error("the event stream ended");
}

describe("kvmi-qemu: a real Linux VM behind the bridge", () => {
  it("is listed with QEMU's uuid and name beside the emulated VM", async () => {
    const vms = await bridge.client.listVms();
    expect(vms.map((vm) => vm.displayName).sort()).toEqual(["emu-0", "linux-0"]);
    expect(vms.find((vm) => vm.displayName === "linux-0")!.uuid).toBe(qemu.uuid);
  });

  it("kvmictl ps lists the same pids and names as the guest's own ps", async () => {
    const before = await qemu.guestPs();
    const listed = await kvmictl("--json", "ps", "linux-0", "--profile", image.profile);
    const after = await qemu.guestPs();
    expect(listed.code, listed.stderr).toBe(0);
    const ours = new Map((JSON.parse(listed.stdout) as Array<{ pid: number; comm: string }>).map((p) => [p.pid, p.comm]));
    // Every task alive in both guest listings (minus the two `ps` processes themselves) is ours, by pid and name.
    const stable = before.filter((p) => p.comm !== "ps" && after.some((q) => q.pid === p.pid && q.comm === p.comm));
    expect(stable.length).toBeGreaterThan(20);
    // /proc shows a busy kworker as "kworker/0:0-events": the kernel appends the workqueue's name
    // when printing (wq_worker_comm); task_struct.comm, which we read, has the bare name.
    const bare = (comm: string) => comm.replace(/^(kworker\/[^-]+)-.*$/, "$1");
    for (const task of stable) expect(ours.get(task.pid), `pid ${task.pid}`).toBe(bare(task.comm));
    // And we list nothing the guest did not have at one of the two moments (pid 0 is not in ps).
    for (const [pid] of ours) if (pid !== 0) expect(before.some((p) => p.pid === pid) || after.some((p) => p.pid === pid), `pid ${pid}`).toBe(true);
    expect([...ours.values()]).toEqual(expect.arrayContaining(["kvmi-ticker", "kvmi-marker", "kvmi-idle"]));
  });

  it("CHECK_COMMAND and CHECK_EVENT tell what QEMU cannot do", async () => {
    const vm = bridge.client.vm(backend.uuid);
    await expect(vm.checkEvent("breakpoint")).resolves.toBeUndefined();
    await expect(vm.checkEvent("cr")).rejects.toThrow();
  });

  it("a breakpoint on the ticker's syscall fires while kvmi-ticker runs; single-step and restore follow KVMI's contract", async () => {
    const session = await bridge.client.attach(backend.uuid, { role: "controller" });
    try {
      const gva = guest.profile.requireSymbol(TICKER_SYSCALL.kernelFunction);
      const gpa = (await session.translate(0, gva))!;
      const original = await session.readPhysical(gpa, 1);
      await session.writePhysical(gpa, Uint8Array.of(0xcc));
      expect((await session.readPhysical(gpa, 1))[0]).toBe(0xcc); // reads show what the tool wrote
      for (const v of [0, 1]) await session.controlVcpuEvents(v, "breakpoint", true);
      const hit = await nextEvent(session, (item) => item.kind === "event" && item.type === "breakpoint");
      if (hit.kind !== "event" || hit.type !== "breakpoint") throw new Error("unreachable");
      expect(hit.gpa).toBe(gpa);
      expect(hit.arch.regs.rip).toBe(gva);
      const running = await guest.currentProcess(hit.vcpu);
      expect(running.comm).toBe("kvmi-ticker");
      // Step over: restore the byte, single-step, RETRY; then the SINGLESTEP event.
      await session.writePhysical(gpa, original);
      await session.controlSingleStep(hit.vcpu, true);
      await hit.retry();
      const step = await nextEvent(session, (item) => item.kind === "event" && item.type === "singleStep");
      if (step.kind !== "event") throw new Error("unreachable");
      expect(step.vcpu).toBe(hit.vcpu);
      expect(step.arch.regs.rip).toBeGreaterThan(gva);
      await session.controlSingleStep(step.vcpu, false);
      await step.continue();
      for (const v of [0, 1]) await session.controlVcpuEvents(v, "breakpoint", false);
      expect(await session.readPhysical(gpa, 1)).toEqual(original);
    } finally {
      await session.release();
    }
  });

  it("PAUSE_VCPU stops the vCPU with its state, and the guest goes on after the reply", async () => {
    const session = await bridge.client.attach(backend.uuid, { role: "controller" });
    try {
      await session.pauseVcpu(1);
      const paused = await nextEvent(session, (item) => item.kind === "event" && item.type === "pauseVcpu");
      if (paused.kind !== "event") throw new Error("unreachable");
      expect(paused.vcpu).toBe(1);
      expect(paused.arch.sregs.cr3).toBeGreaterThan(0n);
      await paused.continue();
    } finally {
      await session.release();
    }
    expect((await qemu.guestPs()).length).toBeGreaterThan(0); // the guest still answers
  });

  it("kvmictl sym, read --pid and modules answer from the profile as the kernel itself would", async () => {
    // The kernel's own /proc/kallsyms (copied out at build time) is the ground truth for addresses.
    const kallsyms = readFileSync(image.kallsyms, "utf8");
    const line = new RegExp(`^([0-9a-f]{16}) [Tt] ${TICKER_SYSCALL.kernelFunction}$`, "m").exec(kallsyms)!;
    const address = BigInt(`0x${line[1]}`);
    const byName = await kvmictl("--json", "sym", TICKER_SYSCALL.kernelFunction, "--profile", image.profile);
    expect(byName.code, byName.stderr).toBe(0);
    expect(BigInt((JSON.parse(byName.stdout) as { address: string }).address)).toBe(address);
    const byAddress = await kvmictl("--json", "sym", `0x${(address + 3n).toString(16)}`, "--profile", image.profile);
    expect(JSON.parse(byAddress.stdout)).toMatchObject({ symbol: TICKER_SYSCALL.kernelFunction });
    expect(BigInt((JSON.parse(byAddress.stdout) as { offset: string | number }).offset)).toBe(3n);

    const marker = vm.snapshot.ps.find((p) => p.comm === "kvmi-marker")!;
    const read = await kvmictl("--json", "read", "linux-0", `0x${MARKER.gva.toString(16)}`, String(MARKER.text.length), "--pid", String(marker.pid), "--profile", image.profile);
    expect(read.code, read.stderr).toBe(0);
    expect(Buffer.from((JSON.parse(read.stdout) as { data: string }).data, "hex").toString()).toBe(MARKER.text);
    // Another process has nothing mapped there: its own page tables are used, not the current ones.
    const idle = vm.snapshot.ps.find((p) => p.comm === "kvmi-idle")!;
    const elsewhere = await kvmictl("read", "linux-0", `0x${MARKER.gva.toString(16)}`, "16", "--pid", String(idle.pid), "--profile", image.profile);
    expect(elsewhere.code).not.toBe(0);

    // The test initramfs loads no module: the kernel's `modules` list is empty and is walked to its head.
    const modules = await kvmictl("--json", "modules", "linux-0", "--profile", image.profile);
    expect(modules.code, modules.stderr).toBe(0);
    expect(JSON.parse(modules.stdout)).toEqual([]);
  });

  it("GET_CPUID answers the leaves QEMU reports as the guest kernel itself read them (boot_cpu_data); others ENOENT", async () => {
    const commands = bridge.client.vm(backend.uuid);
    const profile = guest.profile;
    const size = profile.sizeOf("cpuinfo_x86");
    const bytes = await commands.readVirtual(0, profile.requireSymbol("boot_cpu_data"), size);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const at = (field: string) => profile.offsetOf("cpuinfo_x86", field);
    const text = (field: string) => {
      const raw = bytes.subarray(at(field), at(field) + profile.fieldSize("cpuinfo_x86", field));
      return new TextDecoder().decode(raw.subarray(0, raw.indexOf(0) < 0 ? raw.length : raw.indexOf(0)));
    };
    const word = (...values: number[]) => Buffer.from(Uint32Array.from(values).buffer).toString("latin1").replace(/\0+$/, "");

    expect(text("x86_vendor_id")).not.toBe("");
    expect(text("x86_model_id")).not.toBe("");
    const leaf0 = await commands.getCpuid(0, 0);
    expect(leaf0.eax).toBe(view.getInt32(at("cpuid_level"), true));
    expect(word(leaf0.ebx, leaf0.edx, leaf0.ecx)).toBe(text("x86_vendor_id"));
    // The kernel's decoding of leaf 1 (arch/x86/lib/cpu.c): family, model with its extension, stepping.
    const { eax, ebx } = await commands.getCpuid(0, 1);
    let family = (eax >> 8) & 0xf;
    if (family === 0xf) family += (eax >> 20) & 0xff;
    const model = ((eax >> 4) & 0xf) + (family >= 6 ? ((eax >> 16) & 0xf) << 4 : 0);
    expect([family, model, eax & 0xf]).toEqual([view.getUint8(at("x86")), view.getUint8(at("x86_model")), view.getUint8(at("x86_stepping"))]);
    expect(((ebx >> 8) & 0xff) * 8).toBe(view.getUint16(at("x86_clflush_size"), true));
    expect((ebx >>> 24) & 0xff).toBe(0); // vCPU 0's APIC id
    expect((await commands.getCpuid(1, 1)).ebx >>> 24).toBe(1);
    expect((await commands.getCpuid(0, 0x80000000)).eax).toBe(view.getUint32(at("extended_cpuid_level"), true));
    const brand = await Promise.all([0x80000002, 0x80000003, 0x80000004].map((fn) => commands.getCpuid(0, fn)));
    expect(word(...brand.flatMap((l) => [l.eax, l.ebx, l.ecx, l.edx])).trim()).toBe(text("x86_model_id"));
    // A leaf QEMU does not describe in full is refused as KVM refuses a leaf it lacks, not guessed.
    await expect(commands.getCpuid(0, 4)).rejects.toThrow();
  });

  it("GET_XSAVE carries the x87 and SSE state with Linux's control words; GET_XCR stays refused", async () => {
    const commands = bridge.client.vm(backend.uuid);
    for (const vcpu of [0, 1]) {
      const area = await commands.getXsave(vcpu);
      const view = new DataView(area.buffer, area.byteOffset, area.byteLength);
      // Linux runs every task and its own FPU sections with FCW 0x37f and MXCSR 0x1f80 (fpu/init.c).
      expect(view.getUint16(0, true), `FCW of vCPU ${vcpu}`).toBe(0x37f);
      expect(view.getUint32(24, true), `MXCSR of vCPU ${vcpu}`).toBe(0x1f80);
      expect(view.getBigUint64(512, true), "XSTATE_BV: x87 and SSE").toBe(3n);
    }
    await expect(commands.getXcr(0, 0)).rejects.toThrow();
  });

  it("a write into kvmi-marker's memory is seen by the guest itself", async () => {
    const session = await bridge.client.attach(backend.uuid, { role: "controller" });
    try {
      const marker = (await guest.processes()).find((p) => p.comm === "kvmi-marker")!;
      expect(new TextDecoder().decode(await guest.readProcessMemory(marker.pid, MARKER.gva, MARKER.text.length))).toBe(MARKER.text);
      const seen = qemu.waitForConsole(/KVMI-MARKER written-by-kvmi/, 30_000);
      await session.writeVirtual({ cr3: marker.pageTable! }, MARKER.gva, new TextEncoder().encode("written-by-kvmi\0"));
      await seen;
    } finally {
      await session.release({ keepChanges: true });
    }
  });
});
