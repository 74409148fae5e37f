// SPDX-License-Identifier: Apache-2.0
// The built-in workload as an outside tool sees it: only page-bounded physical reads, page walks from
// CR3, and exits. Also determinism of its ground truth.
import { describe, expect, it } from "vitest";
import { passThroughExitHandler, type VcpuExitHandler } from "./exits.js";
import { createGuest, type Guest } from "./guest.js";
import { PAGE_SIZE, type GuestMemory } from "./memory.js";
import { PAGE_SIZE_2M, walkPageTables, type PhysicalReader } from "./paging.js";
import {
  INIT_TASK_GVA, KERNEL_BASE_GVA, KVMI_AGENT_VMCALL_GVA, LINUX_BANNER, LINUX_BANNER_GVA, DIRECT_MAP_GVA, PF_KTHREAD,
  PERCPU_CURRENT_TASK, SWITCH_MM_GVA, SYSCALL_ENTRY_GVA, TASK_COMM, TASK_CR3, TASK_FLAGS, TASK_NR_SYSCALLS, TASK_PID,
  TASK_PPID, TASK_TASKS_NEXT, USER_DATA_GVA, USER_INFO_MAGIC, WORKLOAD_TASKS, percpuGva,
} from "./workload.js";
import { MSR_LSTAR } from "./x86.js";

/** An introspection tool's view: KVMI_VM_READ_PHYSICAL (≤ one page per read) and its own page walker. */
function outsideTool(memory: GuestMemory) {
  const readPhys = (gpa: bigint, length: number): Uint8Array | undefined => {
    if ((gpa & 0xfffn) + BigInt(length) > BigInt(PAGE_SIZE)) throw new Error("READ_PHYSICAL cannot cross a page");
    const r = memory.read(gpa, length);
    return r.ok ? r.bytes : undefined;
  };
  const reader: PhysicalReader = {
    readU64: (gpa) => {
      const b = readPhys(gpa, 8);
      return b === undefined ? undefined : new DataView(b.buffer).getBigUint64(0, true);
    },
  };
  const readVirt = (cr3: bigint, gva: bigint, length: number): Uint8Array | undefined => {
    const out = new Uint8Array(length);
    for (let done = 0; done < length; ) {
      const va = gva + BigInt(done);
      const n = Math.min(length - done, PAGE_SIZE - Number(va & 0xfffn));
      const gpa = walkPageTables(reader, cr3, va)?.gpa;
      const bytes = gpa === undefined ? undefined : readPhys(gpa, n);
      if (bytes === undefined) return undefined;
      out.set(bytes, done);
      done += n;
    }
    return out;
  };
  const u64 = (cr3: bigint, gva: bigint) => new DataView(readVirt(cr3, gva, 8)!.buffer).getBigUint64(0, true);
  const u32 = (cr3: bigint, gva: bigint) => new DataView(readVirt(cr3, gva, 4)!.buffer).getUint32(0, true);
  const cstr = (bytes: Uint8Array) => new TextDecoder().decode(bytes.subarray(0, bytes.indexOf(0) < 0 ? bytes.length : bytes.indexOf(0)));

  /** Follows `init_task.tasks` around the circular list. */
  const taskList = (cr3: bigint) => {
    const tasks = [];
    let p = INIT_TASK_GVA;
    do {
      tasks.push({
        gva: p,
        pid: u32(cr3, p + TASK_PID),
        ppid: u32(cr3, p + TASK_PPID),
        cr3: u64(cr3, p + TASK_CR3),
        kthread: (u64(cr3, p + TASK_FLAGS) & PF_KTHREAD) !== 0n,
        nrSyscalls: u64(cr3, p + TASK_NR_SYSCALLS),
        comm: cstr(readVirt(cr3, p + TASK_COMM, 16)!),
      });
      p = u64(cr3, p + TASK_TASKS_NEXT);
    } while (p !== INIT_TASK_GVA && tasks.length < 64);
    return tasks;
  };
  return { readVirt, u64, u32, cstr, taskList };
}

function workloadGuest(options: { seed?: number; vcpus?: number; handler?: Partial<VcpuExitHandler>; tickIntervalMs?: number } = {}): Guest {
  const guest = createGuest({
    memoryMiB: 32,
    vcpus: options.vcpus ?? 2,
    seed: options.seed ?? 1,
    workload: { tickIntervalMs: options.tickIntervalMs ?? 0 },
    exitHandler: { ...passThroughExitHandler, ...options.handler },
  });
  guest.start();
  return guest;
}

describe("workload layout, read from outside", () => {
  it("walking the task list through the page tables yields the documented tasks", async () => {
    const guest = workloadGuest({ vcpus: 3 });
    await guest.workload!.runTicks(25);
    const tool = outsideTool(guest.memory);
    const truth = guest.workload!.groundTruth();
    for (const vcpu of guest.vcpus) {
      const tasks = tool.taskList(vcpu.state.sregs.cr3);
      expect(tasks.map((t) => [t.pid, t.ppid, t.comm, t.kthread])).toEqual(
        WORKLOAD_TASKS.map((t) => [t.pid, t.ppid, t.comm, t.kernelThread]),
      );
      expect(tasks.map((t) => t.cr3)).toEqual(guest.workload!.tasks.map((t) => t.cr3));
      expect(tasks.map((t) => t.nrSyscalls)).toEqual(tasks.map((t) => BigInt(truth.syscallsByPid.get(t.pid) ?? 0)));
    }
    expect(new Set(guest.workload!.tasks.map((t) => t.cr3)).size).toBe(WORKLOAD_TASKS.length);
  });

  it("gives every user task its own address space with its own user_info page", () => {
    const guest = workloadGuest();
    const tool = outsideTool(guest.memory);
    for (const task of tool.taskList(guest.vcpus[0]!.state.sregs.cr3)) {
      const info = tool.readVirt(task.cr3, USER_DATA_GVA, 64);
      const spec = WORKLOAD_TASKS.find((t) => t.pid === task.pid)!;
      if (task.pid === 0) continue; // swapper_pg_dir = the boot tables, which identity-map RAM below 4 GiB
      if (spec.kernelThread) {
        expect(info).toBeUndefined();
        continue;
      }
      const view = new DataView(info!.buffer);
      expect([view.getUint32(0, true), view.getUint32(4, true), tool.cstr(info!.subarray(8))]).toEqual([
        task.pid, USER_INFO_MAGIC, spec.cmdline,
      ]);
    }
  });

  it("maps the kernel as a 2 MiB page with LSTAR, GDT/IDT, per-CPU GS and the banner in place", () => {
    const guest = workloadGuest({ vcpus: 2 });
    const tool = outsideTool(guest.memory);
    const [v0, v1] = guest.vcpus as [Guest["vcpus"][0], Guest["vcpus"][0]];
    const cr3 = v0.state.sregs.cr3;
    expect(walkPageTables(guest.memory, cr3, SYSCALL_ENTRY_GVA)?.pageSizeBytes).toBe(PAGE_SIZE_2M);
    expect(v0.state.msrs.read(MSR_LSTAR)).toBe(SYSCALL_ENTRY_GVA);
    expect(tool.readVirt(cr3, SYSCALL_ENTRY_GVA, 3)).toEqual(Uint8Array.of(0x0f, 0x01, 0xf8));
    expect(v1.state.sregs.gs.base).toBe(percpuGva(1));
    expect(tool.u64(cr3, percpuGva(1) + PERCPU_CURRENT_TASK)).toBe(INIT_TASK_GVA);
    expect(tool.cstr(tool.readVirt(cr3, LINUX_BANNER_GVA, 128)!)).toBe(LINUX_BANNER);
    const bannerGpa = walkPageTables(guest.memory, cr3, LINUX_BANNER_GVA)!.gpa;
    expect(tool.cstr(tool.readVirt(cr3, DIRECT_MAP_GVA + bannerGpa, 128)!)).toBe(LINUX_BANNER);
    expect(v0.state.sregs.gdt.base).toBe(KERNEL_BASE_GVA + 0x5000n);
    expect(v0.state.regs.rip).toBe(KERNEL_BASE_GVA);
  });
});

describe("workload behaviour", () => {
  it("is deterministic: the same seed gives the same ground truth, another seed does not", async () => {
    const run = async (seed: number) => {
      const guest = workloadGuest({ seed, vcpus: 3 });
      await guest.workload!.runTicks(40);
      return guest.workload!.groundTruth();
    };
    const [a, b, c] = await Promise.all([run(7), run(7), run(8)]);
    expect(a).toEqual(b);
    expect(a.syscallCount).toBeGreaterThan(20);
    expect(c.syscalls).not.toEqual(a.syscalls);
  });

  it("keeps a consistent CR3 timeline, per-CPU current task and hypercall count", async () => {
    const guest = workloadGuest({ vcpus: 2 });
    const workload = guest.workload!;
    await workload.runTicks(40);
    const truth = workload.groundTruth();
    const byPid = new Map(workload.tasks.map((t) => [t.pid, t]));
    const tool = outsideTool(guest.memory);
    for (const vcpu of guest.vcpus) {
      const mine = truth.cr3Switches.filter((r) => r.vcpu === vcpu.index);
      expect(mine[0]?.fromPid).toBe(0);
      mine.slice(1).forEach((r, i) => expect(r.fromPid).toBe(mine[i]!.toPid));
      for (const r of mine) {
        expect(r.loadedCr3).toBe(r.cr3);
        expect(byPid.get(r.toPid)!.cr3).toBe(r.cr3);
        expect(byPid.get(r.toPid)!.cpu).toBe(vcpu.index);
      }
      const current = byPid.get(workload.currentPid(vcpu.index))!;
      expect(vcpu.state.sregs.cr3).toBe(current.cr3);
      expect(tool.u64(vcpu.state.sregs.cr3, vcpu.state.sregs.gs.base + PERCPU_CURRENT_TASK)).toBe(current.taskGva);
    }
    expect(truth.cr3SwitchCount).toBe(truth.cr3Switches.length);
    expect([...truth.syscallsByPid.values()].reduce((a, b) => a + b, 0)).toBe(truth.syscallCount);
    expect([...truth.syscallsByPid.keys()].every((pid) => !byPid.get(pid)!.kernelThread)).toBe(true);
    expect(truth.hypercalls).toBe(2); // vCPU 0 ticks 15 and 31
    expect(truth.hypercallsConsumed).toBe(0);
    expect(truth.ticks).toBe(40);
  });

  it("an INT3 on the syscall entry reports RIP, CR3 and RAX matching the ground truth", async () => {
    const hits: Array<{ vcpu: number; rip: bigint; cr3: bigint; rax: bigint; gpa: bigint }> = [];
    const crs: Array<{ rip: bigint; cr: number; value: bigint }> = [];
    let hypercalls = 0;
    const guest = workloadGuest({
      vcpus: 2,
      handler: {
        breakpoint: (v, gpa) => {
          const { rip, rax } = v.state.regs;
          hits.push({ vcpu: v.index, rip, cr3: v.state.sregs.cr3, rax, gpa });
          v.state.regs.rip += 3n; // emulate the patched-over swapgs, as a tool would
          return "retry";
        },
        crWrite: (v, cr, _old, value) => (crs.push({ rip: v.state.regs.rip, cr, value }), { action: "continue", value }),
        hypercall: (v) => (expect(v.state.regs.rip).toBe(KVMI_AGENT_VMCALL_GVA), hypercalls++, { action: "continue", consumed: true }),
      },
    });
    const entryGpa = guest.vcpus[0]!.translateGva(SYSCALL_ENTRY_GVA)!;
    guest.memory.write(entryGpa, Uint8Array.of(0xcc));
    await guest.workload!.runTicks(48);
    const truth = guest.workload!.groundTruth();
    const pidOf = new Map(guest.workload!.tasks.map((t) => [t.cr3, t.pid]));
    expect(hits.length).toBe(truth.syscallCount);
    expect(hits.every((h) => h.rip === SYSCALL_ENTRY_GVA && h.gpa === entryGpa)).toBe(true);
    for (const vcpu of [0, 1]) {
      expect(hits.filter((h) => h.vcpu === vcpu).map((h) => [pidOf.get(h.cr3), Number(h.rax)])).toEqual(
        truth.syscalls.filter((s) => s.vcpu === vcpu).map((s) => [s.pid, s.nr]),
      );
    }
    expect(truth.syscalls.every((s) => s.status === "done")).toBe(true);
    expect(crs.length).toBe(truth.cr3SwitchCount);
    expect(crs.every((c) => c.cr === 3 && c.rip === SWITCH_MM_GVA)).toBe(true);
    expect(hypercalls).toBe(3);
    expect(truth.hypercallsConsumed).toBe(3);
  });

  it("records what CR3 really received when a tool blocks the switch", async () => {
    const guest = workloadGuest({ vcpus: 1, handler: { crWrite: (_v, _cr, old) => ({ action: "continue", value: old }) } });
    await guest.workload!.runTicks(3);
    const [first, second] = guest.workload!.groundTruth().cr3Switches;
    expect(first!.loadedCr3).toBe(guest.workload!.swapperCr3);
    expect(second!.loadedCr3).toBe(guest.workload!.swapperCr3);
    expect(first!.cr3).not.toBe(first!.loadedCr3);
  });

  it("starts the APs on its first tick and spreads the tasks over the vCPUs", async () => {
    const guest = workloadGuest({ vcpus: 3 });
    expect(guest.vcpus.map((v) => v.state.initialized)).toEqual([true, false, false]);
    await guest.workload!.step();
    expect(guest.vcpus.map((v) => v.state.initialized)).toEqual([true, true, true]);
    expect(guest.workload!.tasks.slice(1).map((t) => t.cpu)).toEqual([0, 1, 2, 0, 1, 2, 0]);
  });

  it("reset rebuilds memory and replays the same run", async () => {
    const guest = workloadGuest({ vcpus: 2, seed: 3 });
    await guest.workload!.runTicks(20);
    const before = guest.workload!.groundTruth();
    guest.reset();
    expect(guest.workload!.groundTruth().ticks).toBe(0);
    expect(outsideTool(guest.memory).taskList(guest.vcpus[0]!.state.sregs.cr3).every((t) => t.nrSyscalls === 0n)).toBe(true);
    await guest.workload!.runTicks(20);
    expect(guest.workload!.groundTruth()).toEqual(before);
  });

  it("ticks on a timer while running and stops ticking when the VM is stopped", async () => {
    const guest = workloadGuest({ vcpus: 2, tickIntervalMs: 2 });
    const deadline = Date.now() + 2000;
    while (guest.workload!.groundTruth().ticks < 5 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    await guest.stop();
    const ticks = guest.workload!.groundTruth().ticks;
    expect(ticks).toBeGreaterThanOrEqual(5);
    await new Promise((r) => setTimeout(r, 20));
    expect(guest.workload!.groundTruth().ticks).toBe(ticks);
    guest.crash("test over");
  });
});

describe("createGuest options", () => {
  it("validates sizes and counts", () => {
    expect(() => createGuest({ memoryMiB: 16, vcpus: 0 })).toThrow(expect.objectContaining({ code: "GUEST_INVALID_ARGUMENT" }));
    expect(() => createGuest({ memoryMiB: 16, vcpus: 65 })).toThrow(expect.objectContaining({ code: "GUEST_INVALID_ARGUMENT" }));
    expect(() => createGuest({ memoryMiB: 4, vcpus: 1 })).toThrow(expect.objectContaining({ code: "GUEST_INVALID_ARGUMENT" }));
    expect(createGuest({ memoryMiB: 4, vcpus: 1, workload: false }).workload).toBeUndefined();
  });
});
