// SPDX-License-Identifier: Apache-2.0
/**
 * OS-aware helpers for Linux guests, driven only by a profile (profile.ts): the process list
 * (`for_each_process` from `init_task`), loaded modules, symbols both ways, the task running on a
 * vCPU (its per-CPU `current_task`), and a process's address space (its page-table root).
 *
 * The same code serves a real kernel and the emulator's built-in workload: where the workload's
 * simpler task_struct keeps a value directly (`ppid`, `cr3`) instead of behind a pointer
 * (`real_parent->pid`, `mm->pgd`), the profile says which fields exist (docs/profiles.md).
 */
import type { CallOptions } from "../channel.js";
import type { TranslationTarget, VmCommands } from "../command-types.js";
import { Profile, ProfileError } from "./profile.js";

/** `PF_KTHREAD` in `task_struct.flags` (include/linux/sched.h). */
const PF_KTHREAD = 0x00200000n;
/** IA32_KERNEL_GS_BASE: the kernel's GS base while a vCPU runs user code (after SWAPGS). */
const MSR_KERNEL_GS_BASE = 0xc0000102;
const MAX_TASKS = 32768;
/** First address of the x86-64 kernel half (canonical upper half). */
const KERNEL_HALF = 0xffff800000000000n;

/** One process (task) as read from guest memory. */
export interface LinuxProcess {
  /** GVA of its task_struct. */
  readonly task: bigint;
  readonly pid: number;
  /** Thread group id (the process id of a thread); equals pid where the profile has no tgid. */
  readonly tgid: number;
  readonly ppid: number;
  readonly comm: string;
  readonly kernelThread: boolean;
  /** Guest-physical address of its page-table root (the CR3 value while it runs), or undefined for kernel threads without an mm. */
  readonly pageTable: bigint | undefined;
}

export interface LinuxModule {
  readonly address: bigint;
  readonly name: string;
  /** Start and size of its code (core layout), when the profile describes them. */
  readonly base?: bigint;
  readonly size?: number;
}

const decoder = new TextDecoder();
const u64 = (bytes: Uint8Array, offset: number) => new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getBigUint64(offset, true);
const u32 = (bytes: Uint8Array, offset: number) => new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(offset, true);
const cString = (bytes: Uint8Array) => {
  const nul = bytes.indexOf(0);
  return decoder.decode(nul < 0 ? bytes : bytes.subarray(0, nul));
};

/** Linux introspection of one VM through a profile. */
export class LinuxGuest {
  private readonly task: { size: number; tasks: number; pid: number; tgid?: number; comm: number; commLength: number; flags: number; realParent?: number; ppid?: number; mm?: number; cr3?: number };

  constructor(readonly vm: VmCommands, readonly profile: Profile, private readonly via: TranslationTarget = 0) {
    const p = profile;
    if (!p.hasType("task_struct")) throw new ProfileError("the profile has no task_struct: not a Linux profile");
    const optional = (field: string) => (p.hasField("task_struct", field) ? p.offsetOf("task_struct", field) : undefined);
    this.task = {
      size: p.sizeOf("task_struct"),
      tasks: p.offsetOf("task_struct", "tasks"),
      pid: p.offsetOf("task_struct", "pid"),
      tgid: optional("tgid"),
      comm: p.offsetOf("task_struct", "comm"),
      commLength: p.fieldSize("task_struct", "comm"),
      flags: p.offsetOf("task_struct", "flags"),
      realParent: optional("real_parent"),
      ppid: optional("ppid"),
      mm: optional("mm"),
      cr3: optional("cr3"),
    };
  }

  /** `symbol → VA`. */
  symbol(name: string): bigint | undefined {
    return this.profile.symbol(name);
  }

  /** `VA → symbol+offset`. */
  symbolize(address: bigint): { name: string; offset: bigint } | undefined {
    return this.profile.symbolize(address);
  }

  /** Formats `name+0x12`, or the bare address when no symbol covers it. */
  describe(address: bigint): string {
    const hit = this.symbolize(address);
    return hit ? `${hit.name}${hit.offset ? `+0x${hit.offset.toString(16)}` : ""}` : `0x${address.toString(16)}`;
  }

  private read(gva: bigint, size: number, options?: CallOptions): Promise<Uint8Array> {
    return this.vm.readVirtual(this.via, gva, size, options);
  }

  /** Decodes the task_struct at `task`. */
  async readTask(task: bigint, options?: CallOptions): Promise<LinuxProcess> {
    const t = this.task;
    const bytes = await this.read(task, t.size, options);
    const pid = u32(bytes, t.pid);
    let ppid = 0;
    if (t.realParent !== undefined) {
      const parent = u64(bytes, t.realParent);
      ppid = parent === 0n || parent === task ? 0 : u32(await this.read(parent + BigInt(t.pid), 4, options), 0);
    } else if (t.ppid !== undefined) {
      ppid = u32(bytes, t.ppid);
    }
    let pageTable: bigint | undefined;
    let kernelThread = (BigInt(u32(bytes, t.flags)) & PF_KTHREAD) !== 0n;
    if (t.mm !== undefined) {
      const mm = u64(bytes, t.mm);
      if (mm === 0n) kernelThread = true;
      else {
        const pgd = u64(await this.read(mm + BigInt(this.profile.offsetOf("mm_struct", "pgd")), 8, options), 0);
        pageTable = await this.vm.translate(this.via, pgd, options);
      }
    } else if (t.cr3 !== undefined) {
      pageTable = u64(bytes, t.cr3);
    }
    return {
      task,
      pid,
      tgid: t.tgid === undefined ? pid : u32(bytes, t.tgid),
      ppid,
      comm: cString(bytes.subarray(t.comm, t.comm + t.commLength)),
      kernelThread,
      pageTable,
    };
  }

  /** Every process, from `init_task` (pid 0) along `tasks`, as `for_each_process` walks them. */
  async processes(options?: CallOptions): Promise<LinuxProcess[]> {
    const head = this.profile.requireSymbol("init_task");
    const processes: LinuxProcess[] = [];
    let task = head;
    do {
      processes.push(await this.readTask(task, options));
      const next = u64(await this.read(task + BigInt(this.task.tasks), 8, options), 0);
      task = next - BigInt(this.task.tasks);
      if (processes.length > MAX_TASKS) throw new ProfileError("the task list does not return to init_task");
    } while (task !== head);
    return processes;
  }

  /** The process with this pid, or undefined. */
  async process(pid: number, options?: CallOptions): Promise<LinuxProcess | undefined> {
    return (await this.processes(options)).find((p) => p.pid === pid);
  }

  /** Loaded modules (the `modules` list); empty for a kernel that loaded none. */
  async modules(options?: CallOptions): Promise<LinuxModule[]> {
    const head = this.profile.symbol("modules");
    if (head === undefined || !this.profile.hasType("module")) return [];
    const list = this.profile.offsetOf("module", "list");
    const name = this.profile.offsetOf("module", "name");
    const nameLength = this.profile.fieldSize("module", "name");
    const layout = this.profile.hasField("module", "core_layout") ? this.profile.offsetOf("module", "core_layout") : undefined;
    const modules: LinuxModule[] = [];
    for (let entry = u64(await this.read(head, 8, options), 0); entry !== head; ) {
      const module = entry - BigInt(list);
      const bytes = await this.read(module, Math.max(name + nameLength, (layout ?? 0) + 16), options);
      modules.push({
        address: module,
        name: cString(bytes.subarray(name, name + nameLength)),
        ...(layout !== undefined && {
          base: u64(bytes, layout + this.profile.offsetOf("module_layout", "base")),
          size: u32(bytes, layout + this.profile.offsetOf("module_layout", "size")),
        }),
      });
      entry = u64(bytes, list);
      if (modules.length > 4096) throw new ProfileError("the module list does not return to its head");
    }
    return modules;
  }

  /** Offset of the per-CPU `current_task` pointer (6.1: a per-CPU variable; 6.2+: `pcpu_hot.current_task`). */
  private currentTaskOffset(): bigint {
    const hot = this.profile.symbol("pcpu_hot");
    if (hot !== undefined && this.profile.hasField("pcpu_hot", "current_task")) return hot + BigInt(this.profile.offsetOf("pcpu_hot", "current_task"));
    return this.profile.requireSymbol("current_task");
  }

  /**
   * The task running on a vCPU: `current_task` in its per-CPU area. That area is GS's base in the
   * kernel and IA32_KERNEL_GS_BASE in user mode and at the syscall entry before its SWAPGS, so the
   * one of the two that holds a kernel address is taken.
   */
  async currentProcess(vcpu: number, options?: CallOptions): Promise<LinuxProcess> {
    const snapshot = await this.vm.getRegisters(vcpu, { ...options, msrs: [MSR_KERNEL_GS_BASE] });
    const gs = snapshot.sregs.gs?.base ?? 0n;
    const gsBase = gs >= KERNEL_HALF ? gs : snapshot.msrs.get(MSR_KERNEL_GS_BASE) ?? 0n;
    const pointer = u64(await this.vm.readVirtual(vcpu, gsBase + this.currentTaskOffset(), 8, options), 0);
    return this.readTask(pointer, options);
  }

  /** Reads a process's virtual memory through its own page tables. */
  async readProcessMemory(pid: number, gva: bigint, size: number, options?: CallOptions): Promise<Uint8Array> {
    const target = await this.process(pid, options);
    if (!target) throw new ProfileError(`no process with pid ${pid}`);
    if (target.pageTable === undefined) throw new ProfileError(`pid ${pid} (${target.comm}) is a kernel thread without an address space`);
    return this.vm.readVirtual({ cr3: target.pageTable }, gva, size, options);
  }

  /** Writes a process's virtual memory through its own page tables. Controller only. */
  async writeProcessMemory(pid: number, gva: bigint, data: Uint8Array, options?: CallOptions): Promise<void> {
    const target = await this.process(pid, options);
    if (!target?.pageTable) throw new ProfileError(`no process with pid ${pid} and an address space`);
    await this.vm.writeVirtual({ cr3: target.pageTable }, gva, data, options);
  }
}

/** OS helpers for a Linux VM: `linux(vm, profile).processes()`, `.modules()`, … */
export function linux(vm: VmCommands, profile: Profile, via: TranslationTarget = 0): LinuxGuest {
  return new LinuxGuest(vm, profile, via);
}
