// SPDX-License-Identifier: Apache-2.0
/**
 * What the examples know about their target OS: the layout of the emulator's built-in workload, a
 * tiny Linux-shaped kernel. A real tool gets the same facts from the guest's symbol table and
 * structure offsets (a LibVMI profile, a Volatility symbol file); these values are copied from the
 * documented contract (README "The built-in workload", and the comment at the top of
 * kvm-bridge/src/emulator/guest/workload.ts), never imported from the emulator.
 */
import type { TranslationTarget, VmCommands } from "@kvmi/clients";

/** Kernel image base (`_text`). */
export const KERNEL_BASE_GVA = 0xffffffff80000000n;
/** `entry_SYSCALL_64` (MSR_LSTAR): every syscall enters the kernel here. */
export const SYSCALL_ENTRY_GVA = KERNEL_BASE_GVA + 0x1000n;
/** `switch_mm`: the RIP of every scheduler CR3 write. */
export const SWITCH_MM_GVA = KERNEL_BASE_GVA + 0x2000n;
/** `init_task` (pid 0): the head of the circular task list. */
export const INIT_TASK_GVA = KERNEL_BASE_GVA + 0x10000n;
/** Per-CPU area of CPU 0 (GS base); CPU n's is `+ n * PERCPU_STRIDE`. */
export const PERCPU_BASE_GVA = KERNEL_BASE_GVA + 0x20000n;
/** Distance between per-CPU areas. */
export const PERCPU_STRIDE = 0x1000n;
/** `current_task` (u64 pointer to the running task_struct) in the per-CPU area. */
export const PERCPU_CURRENT_TASK = 0x0n;

/** `struct task_struct` offsets (0x100 bytes, little-endian). */
export const TASK_STRUCT = Object.freeze({
  size: 0x100,
  tasksNext: 0x00,
  tasksPrev: 0x08,
  pid: 0x10,
  ppid: 0x14,
  state: 0x18,
  cpu: 0x1c,
  cr3: 0x20,
  flags: 0x28,
  nrSyscalls: 0x30,
  startCode: 0x38,
  comm: 0x40,
  commLength: 16,
});

/** `PF_KTHREAD` in `task_struct.flags`. */
export const PF_KTHREAD = 0x00200000n;

/** One task as read from guest memory. */
export interface GuestTask {
  /** GVA of its `task_struct`. */
  readonly gva: bigint;
  readonly pid: number;
  readonly ppid: number;
  /** Its page-table root: the CR3 value while it runs. */
  readonly cr3: bigint;
  /** Its name (`comm`). */
  readonly comm: string;
  readonly kernelThread: boolean;
  /** Syscalls it entered so far (`nr_syscalls`). */
  readonly nrSyscalls: bigint;
}

/** Decodes a `task_struct` read at `gva`. */
export function parseTask(gva: bigint, bytes: Uint8Array): GuestTask {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const t = TASK_STRUCT;
  const comm = bytes.subarray(t.comm, t.comm + t.commLength);
  const nul = comm.indexOf(0);
  return {
    gva,
    pid: view.getUint32(t.pid, true),
    ppid: view.getUint32(t.ppid, true),
    cr3: view.getBigUint64(t.cr3, true),
    comm: new TextDecoder().decode(nul < 0 ? comm : comm.subarray(0, nul)),
    kernelThread: (view.getBigUint64(t.flags, true) & PF_KTHREAD) !== 0n,
    nrSyscalls: view.getBigUint64(t.nrSyscalls, true),
  };
}

/**
 * Walks the task list from outside, as `for_each_process` does inside: start at `init_task`,
 * follow `tasks.next` until it comes back to `init_task`. Kernel addresses are the same in every
 * address space, so any vCPU (or any task's CR3) translates them.
 * @param via the vCPU whose paging translates, or `{ cr3 }`.
 * @throws Error when the list does not close within `maxTasks` (a corrupt or changing list).
 */
export async function listTasks(vm: VmCommands, via: TranslationTarget = 0, options: { signal?: AbortSignal; maxTasks?: number } = {}): Promise<GuestTask[]> {
  const tasks: GuestTask[] = [];
  let gva = INIT_TASK_GVA;
  do {
    const bytes = await vm.readVirtual(via, gva, TASK_STRUCT.size, { signal: options.signal });
    const task = parseTask(gva, bytes);
    tasks.push(task);
    gva = new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(TASK_STRUCT.tasksNext, true);
    if (tasks.length > (options.maxTasks ?? 4096)) throw new Error("the task list does not return to init_task");
  } while (gva !== INIT_TASK_GVA);
  return tasks;
}

/** Looks tasks up by CR3 (which identifies the running process on a CR3 write or a syscall). */
export class TaskIndex {
  private readonly byCr3 = new Map<bigint, GuestTask>();

  constructor(readonly tasks: readonly GuestTask[]) {
    for (const task of tasks) this.byCr3.set(task.cr3, task);
  }

  /** The task whose page tables are rooted at `cr3` (PCID bits ignored). */
  byPageTable(cr3: bigint): GuestTask | undefined {
    return this.byCr3.get(cr3 & ~0xfffn);
  }

  /** `pid (comm)`, or `? (cr3 0x…)` for an unknown CR3. */
  describe(cr3: bigint): string {
    const task = this.byPageTable(cr3);
    return task === undefined ? `? (cr3 0x${cr3.toString(16)})` : `${task.pid} (${task.comm})`;
  }
}

/** Reads `current_task` of a vCPU from its per-CPU area (`gsBase`), the other way to identify the running task. */
export async function currentTask(vm: VmCommands, vcpu: number, gsBase: bigint, signal?: AbortSignal): Promise<GuestTask> {
  const pointer = await vm.readVirtual(vcpu, gsBase + PERCPU_CURRENT_TASK, 8, { signal });
  const gva = new DataView(pointer.buffer, pointer.byteOffset).getBigUint64(0, true);
  return parseTask(gva, await vm.readVirtual(vcpu, gva, TASK_STRUCT.size, { signal }));
}
