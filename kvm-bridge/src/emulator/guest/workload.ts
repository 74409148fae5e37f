// SPDX-License-Identifier: Apache-2.0
/**
 * The built-in guest workload: a tiny, deterministic, Linux-shaped OS that introspection clients can
 * analyse **from outside**, using only guest-physical reads, page walks from CR3, and events.
 * Everything below is a stable contract; GPAs are not (they follow allocation order; walk from CR3).
 *
 * ## Virtual layout (identical in every address space: the kernel half is shared)
 *
 * | GVA                                   | what                                                            |
 * |---------------------------------------|-----------------------------------------------------------------|
 * | `0xffffffff80000000` KERNEL_BASE_GVA  | kernel image, one 2 MiB page (PDE with PS), supervisor, global  |
 * | `+0x0000` IDLE_LOOP_GVA               | idle loop `sti; 1: hlt; jmp 1b`; RIP of an idle vCPU            |
 * | `+0x1000` SYSCALL_ENTRY_GVA           | `entry_SYSCALL_64` (MSR_LSTAR points here); starts `0f 01 f8` swapgs |
 * | `+0x2000` SWITCH_MM_GVA               | `switch_mm`: `mov %rdi,%cr3` — RIP of every scheduler CR3 write  |
 * | `+0x3000` KVMI_AGENT_GVA              | agent stub; the `vmcall` is at `+0x300c` (KVMI_AGENT_VMCALL_GVA) |
 * | `+0x4000` IDT_GVA                     | 256 interrupt gates (IDTR.base), all → `+0x0f00` (`iretq`)       |
 * | `+0x5000` GDT_GVA                     | GDT: 0x10 kernel CS, 0x18 kernel DS, 0x23/0x2b/0x33 user, 0x40 TSS |
 * | `+0x5800` TSS_GVA                     | 64-bit TSS (TR.base)                                            |
 * | `+0x6000` LINUX_BANNER_GVA            | NUL-terminated `linux_banner` string                            |
 * | `+0x10000` INIT_TASK_GVA              | `init_task` (pid 0, "swapper/0"): its `tasks` field is the list head |
 * | `+0x20000 + cpu*0x1000` percpu(cpu)   | per-CPU area; GS.base of that vCPU. `current_task` u64 @+0, `cpu_number` u32 @+8 |
 * | `+0x100000 + cpu*0x2000`              | kernel stack of that vCPU (RSP = top − 8 at boot)               |
 * | `0xffff888000000000` DIRECT_MAP_GVA   | all RAM: `gva = DIRECT_MAP_GVA + gpa` (2 MiB pages where aligned) |
 * | `0x400000` USER_TEXT_GVA              | per task: user code (r-x, user); `syscall` at `+0x10`            |
 * | `0x600000` USER_DATA_GVA              | per task: `user_info` {u32 pid @0; u32 magic "KVMI" @4; char cmdline[56] @8} |
 * | `0x7fffffffe000` USER_STACK_GVA       | per task: one stack page (rw-, NX)                              |
 *
 * `init_task`'s CR3 is the boot page tables (`swapper_pg_dir`), whose lower half still identity-maps all
 * RAM (`gva = gpa`, supervisor) from boot; the per-task tables have only the user pages listed above.
 *
 * ## `task_struct` (TASK_STRUCT_SIZE = 0x100 bytes, little-endian)
 *
 * | off  | field              | notes                                                            |
 * |------|--------------------|------------------------------------------------------------------|
 * | 0x00 | `tasks.next` u64   | GVA of the next task's `tasks` (== its task_struct, offset 0)    |
 * | 0x08 | `tasks.prev` u64   | circular doubly-linked list through `init_task` (the list head)  |
 * | 0x10 | `pid` u32          |                                                                  |
 * | 0x14 | `ppid` u32         | parent pid                                                       |
 * | 0x18 | `state` u32        | 0 = TASK_RUNNING (static)                                        |
 * | 0x1c | `cpu` u32          | vCPU whose run queue holds the task                              |
 * | 0x20 | `cr3` u64          | PML4 GPA = the CR3 value while the task runs                     |
 * | 0x28 | `flags` u64        | PF_KTHREAD (0x00200000) for kernel threads                       |
 * | 0x30 | `nr_syscalls` u64  | syscalls entered so far; written by the guest after each entry   |
 * | 0x38 | `start_code` u64   | USER_TEXT_GVA, 0 for kernel threads                              |
 * | 0x40 | `comm` char[16]    | NUL-padded name (TASK_COMM_LEN 16: "systemd-journal")           |
 *
 * Walk: `p = read_u64(INIT_TASK_GVA)`; while `p != INIT_TASK_GVA`: visit task at `p`; `p = read_u64(p)`.
 * Tasks: see {@link WORKLOAD_TASKS} (pid 0 is `init_task` itself).
 *
 * ## Behaviour (per tick, per vCPU, seeded)
 * 1. First tick only: vCPU 0 starts the APs (until then they are KVM_MP_STATE_UNINITIALIZED).
 * 2. Round-robin to the next task of the vCPU's run queue (task i of WORKLOAD_TASKS → vCPU (i−1) mod n).
 *    If it differs from the current one: `mov cr3` at SWITCH_MM_GVA (CR event), then the guest writes
 *    `percpu.current_task`.
 * 3. With probability `syscallProbability`, a user task enters SYSCALL_ENTRY_GVA with RAX = syscall nr,
 *    RCX = user return RIP, R11 = RFLAGS, CR3 = its own (an INT3 there → BREAKPOINT event with exactly
 *    that state), then the guest bumps `task->nr_syscalls`.
 * 4. vCPU 0, every `hypercallEveryTicks` ticks: the KVMI agent hypercall (RAX=34, RDI=24, RSI=0).
 */
import type { GuestMemory } from "./memory.js";
import { PAGE_SIZE } from "./memory.js";
import type { PageAllocator } from "./page-allocator.js";
import { PAGE_SIZE_2M, createAddressSpace, type AddressSpace } from "./paging.js";
import type { VcpuState } from "./vcpu-state.js";
import { MSR_KERNEL_GS_BASE, MSR_LSTAR, MSR_STAR, MSR_SYSCALL_MASK, MSR_TSC_AUX, X86_EFLAGS_FIXED, X86_EFLAGS_IF } from "./x86.js";

export const KERNEL_BASE_GVA = 0xffffffff80000000n;
export const KERNEL_IMAGE_BYTES = PAGE_SIZE_2M;
export const IDLE_LOOP_GVA = KERNEL_BASE_GVA;
export const SYSCALL_ENTRY_GVA = KERNEL_BASE_GVA + 0x1000n;
export const SWITCH_MM_GVA = KERNEL_BASE_GVA + 0x2000n;
export const KVMI_AGENT_GVA = KERNEL_BASE_GVA + 0x3000n;
export const KVMI_AGENT_VMCALL_GVA = KVMI_AGENT_GVA + 0xcn;
export const IDT_GVA = KERNEL_BASE_GVA + 0x4000n;
export const GDT_GVA = KERNEL_BASE_GVA + 0x5000n;
export const TSS_GVA = KERNEL_BASE_GVA + 0x5800n;
export const LINUX_BANNER_GVA = KERNEL_BASE_GVA + 0x6000n;
export const INIT_TASK_GVA = KERNEL_BASE_GVA + 0x10000n;
export const PERCPU_BASE_GVA = KERNEL_BASE_GVA + 0x20000n;
export const PERCPU_STRIDE = 0x1000n;
export const PERCPU_CURRENT_TASK = 0x0n;
export const PERCPU_CPU_NUMBER = 0x8n;
export const KERNEL_STACKS_GVA = KERNEL_BASE_GVA + 0x100000n;
export const KERNEL_STACK_BYTES = 0x2000n;
export const DIRECT_MAP_GVA = 0xffff888000000000n;
export const USER_TEXT_GVA = 0x400000n;
/** Where a task's `syscall` instruction sits; RCX (return RIP) = this + 2. */
export const USER_SYSCALL_INSN_GVA = USER_TEXT_GVA + 0x10n;
export const USER_DATA_GVA = 0x600000n;
export const USER_STACK_GVA = 0x7fffffffe000n;
/** `user_info.magic`: "KVMI" little-endian. */
export const USER_INFO_MAGIC = 0x494d564b;
export const LINUX_BANNER = "Linux version 5.8.0-kvmi (kvmi-bridge guest model) #1 SMP\n";
/** Most vCPUs the layout has per-CPU areas and stacks for. */
export const WORKLOAD_MAX_VCPUS = 64;

/** `task_struct` field offsets (see the table above). */
export const TASK_TASKS_NEXT = 0x00n;
export const TASK_TASKS_PREV = 0x08n;
export const TASK_PID = 0x10n;
export const TASK_PPID = 0x14n;
export const TASK_STATE = 0x18n;
export const TASK_CPU = 0x1cn;
export const TASK_CR3 = 0x20n;
export const TASK_FLAGS = 0x28n;
export const TASK_NR_SYSCALLS = 0x30n;
export const TASK_START_CODE = 0x38n;
export const TASK_COMM = 0x40n;
export const TASK_COMM_LEN = 16;
export const TASK_STRUCT_SIZE = 0x100n;
export const PF_KTHREAD = 0x00200000n;
export const TASK_RUNNING = 0;

/** A task of the workload, as specified (before memory placement). */
export interface WorkloadTaskSpec {
  readonly pid: number;
  readonly ppid: number;
  readonly comm: string;
  /** `user_info.cmdline`; empty for kernel threads. */
  readonly cmdline: string;
  readonly kernelThread: boolean;
  /** x86_64 syscall numbers this task draws from (uniformly). */
  readonly syscalls: readonly number[];
}

/** The tasks, in list order. Index 0 is `init_task` (pid 0), which is the list head and never scheduled. */
export const WORKLOAD_TASKS: readonly WorkloadTaskSpec[] = [
  { pid: 0, ppid: 0, comm: "swapper/0", cmdline: "", kernelThread: true, syscalls: [] },
  { pid: 1, ppid: 0, comm: "init", cmdline: "/sbin/init", kernelThread: false, syscalls: [61, 232, 0, 13] },
  { pid: 2, ppid: 0, comm: "kthreadd", cmdline: "", kernelThread: true, syscalls: [] },
  { pid: 312, ppid: 1, comm: "systemd-journal", cmdline: "/lib/systemd/systemd-journald", kernelThread: false, syscalls: [1, 74, 232, 0] },
  { pid: 523, ppid: 1, comm: "sshd", cmdline: "sshd: /usr/sbin/sshd -D", kernelThread: false, syscalls: [7, 0, 1, 43] },
  { pid: 601, ppid: 1, comm: "cron", cmdline: "/usr/sbin/cron -f", kernelThread: false, syscalls: [35, 4, 257, 3] },
  { pid: 742, ppid: 1, comm: "nginx", cmdline: "nginx: master process /usr/sbin/nginx", kernelThread: false, syscalls: [232, 288, 40, 1, 3] },
  { pid: 1024, ppid: 523, comm: "bash", cmdline: "-bash", kernelThread: false, syscalls: [0, 1, 61, 13] },
];

/** A task as placed in guest memory. */
export interface WorkloadTask extends WorkloadTaskSpec {
  /** GVA of its `task_struct`. */
  readonly taskGva: bigint;
  /** PML4 GPA (CR3 while it runs); `init_task` uses the boot page tables (swapper_pg_dir). */
  readonly cr3: bigint;
  /** vCPU whose run queue holds it (0 for pid 0). */
  readonly cpu: number;
}

/** The built memory image. @internal */
export interface WorkloadImage {
  readonly tasks: readonly WorkloadTask[];
  readonly swapperCr3: bigint;
}

/** GVA of vCPU `cpu`'s per-CPU area. */
export function percpuGva(cpu: number): bigint {
  return PERCPU_BASE_GVA + BigInt(cpu) * PERCPU_STRIDE;
}

/** GVA of the `task_struct` at `slot` (slab-like placement; tools must follow the list instead). */
function taskGva(slot: number): bigint {
  return INIT_TASK_GVA + BigInt(slot) * TASK_STRUCT_SIZE;
}

const hex = (s: string): Uint8Array => Uint8Array.from(s.split(" ").map((b) => parseInt(b, 16)));

/** Code and data placed in the kernel image, by offset from KERNEL_BASE_GVA. */
const KERNEL_BYTES: ReadonlyArray<readonly [bigint, Uint8Array]> = [
  [0x0000n, hex("fb f4 eb fd")], // sti; hlt; jmp .-3 (back to hlt)
  [0x0f00n, hex("48 cf")], // iretq: the catch-all interrupt handler
  // entry_SYSCALL_64: swapgs; mov %rsp,%gs:0x6014; mov %gs:0x600c,%rsp; push $0x2b; sysretq
  [0x1000n, hex("0f 01 f8 65 48 89 24 25 14 60 00 00 65 48 8b 24 25 0c 60 00 00 6a 2b 48 0f 07")],
  // switch_mm: mov %rdi,%cr3; mov %rsi,%gs:0; ret
  [0x2000n, hex("0f 22 df 65 48 89 34 25 00 00 00 00 c3")],
  // agent: mov $34,%eax; mov $24,%edi; xor %esi,%esi; vmcall; ret
  [0x3000n, hex("b8 22 00 00 00 bf 18 00 00 00 31 f6 0f 01 c1 c3")],
];

/** GDT descriptors (Linux `GDT_ENTRY_*` order), 8 bytes each from offset 0. */
const GDT_ENTRIES = [0n, 0x00cf9b000000ffffn, 0x00af9b000000ffffn, 0x00cf93000000ffffn, 0x00cffb000000ffffn, 0x00cff3000000ffffn, 0x00affb000000ffffn, 0n];

function writeKernelImage(memory: GuestMemory, imageGpa: bigint, vcpuCount: number): void {
  const at = (gva: bigint) => imageGpa + (gva - KERNEL_BASE_GVA);
  for (const [offset, bytes] of KERNEL_BYTES) memory.write(imageGpa + offset, bytes);
  const handler = KERNEL_BASE_GVA + 0x0f00n;
  for (let vector = 0n; vector < 256n; vector++) {
    // 64-bit interrupt gate: offset 15..0, selector 0x10, type 0x8e, offset 31..16, offset 63..32.
    const low = (handler & 0xffffn) | (0x10n << 16n) | (0x8e00n << 32n) | (((handler >> 16n) & 0xffffn) << 48n);
    memory.writeU64(at(IDT_GVA) + vector * 16n, low);
    memory.writeU64(at(IDT_GVA) + vector * 16n + 8n, handler >> 32n);
  }
  GDT_ENTRIES.forEach((d, i) => memory.writeU64(at(GDT_GVA) + BigInt(i) * 8n, d));
  // 0x40: available 64-bit TSS (type 9), limit 0x67, base TSS_GVA split over the 16-byte descriptor.
  const base = TSS_GVA;
  const tssLow = 0x67n | ((base & 0xffffffn) << 16n) | (0x89n << 40n) | (((base >> 24n) & 0xffn) << 56n);
  memory.writeU64(at(GDT_GVA) + 0x40n, tssLow);
  memory.writeU64(at(GDT_GVA) + 0x48n, base >> 32n);
  memory.write(at(LINUX_BANNER_GVA), new TextEncoder().encode(`${LINUX_BANNER}\0`));
  for (let cpu = 0; cpu < vcpuCount; cpu++) {
    memory.writeU64(at(percpuGva(cpu) + PERCPU_CURRENT_TASK), INIT_TASK_GVA);
    memory.writeU32(at(percpuGva(cpu) + PERCPU_CPU_NUMBER), cpu);
  }
}

function writeTaskStruct(memory: GuestMemory, imageGpa: bigint, task: WorkloadTask, next: bigint, prev: bigint): void {
  const base = imageGpa + (task.taskGva - KERNEL_BASE_GVA);
  memory.writeU64(base + TASK_TASKS_NEXT, next);
  memory.writeU64(base + TASK_TASKS_PREV, prev);
  memory.writeU32(base + TASK_PID, task.pid);
  memory.writeU32(base + TASK_PPID, task.ppid);
  memory.writeU32(base + TASK_STATE, TASK_RUNNING);
  memory.writeU32(base + TASK_CPU, task.cpu);
  memory.writeU64(base + TASK_CR3, task.cr3);
  memory.writeU64(base + TASK_FLAGS, task.kernelThread ? PF_KTHREAD : 0n);
  memory.writeU64(base + TASK_START_CODE, task.kernelThread ? 0n : USER_TEXT_GVA);
  const comm = new Uint8Array(TASK_COMM_LEN);
  comm.set(new TextEncoder().encode(task.comm).subarray(0, TASK_COMM_LEN - 1));
  memory.write(base + TASK_COMM, comm);
}

/** Maps and fills a user task's private pages in its own address space. */
function buildUserPages(memory: GuestMemory, allocator: PageAllocator, space: AddressSpace, spec: WorkloadTaskSpec): void {
  const text = allocator.alloc();
  const data = allocator.alloc();
  const stack = allocator.alloc();
  // nop sled, then `syscall` at +0x10 and a jump back to the start: what the task "runs" between syscalls.
  const code = new Uint8Array(0x20).fill(0x90);
  code.set(hex("0f 05 eb ec"), 0x10);
  memory.write(text, code);
  const info = new Uint8Array(64);
  const view = new DataView(info.buffer);
  view.setUint32(0, spec.pid, true);
  view.setUint32(4, USER_INFO_MAGIC, true);
  info.set(new TextEncoder().encode(spec.cmdline).subarray(0, 55), 8);
  memory.write(data, info);
  space.map(USER_TEXT_GVA, text, { user: true, writable: false });
  space.map(USER_DATA_GVA, data, { user: true, executable: false });
  space.map(USER_STACK_GVA, stack, { user: true, executable: false });
}

/**
 * Builds the workload into guest memory: kernel image and direct map in the shared kernel half of
 * `bootSpace` (which becomes `swapper_pg_dir`), one address space per task, and the task list. @internal
 */
export function buildWorkloadImage(
  memory: GuestMemory, allocator: PageAllocator, bootSpace: AddressSpace, vcpuCount: number,
): WorkloadImage {
  const imageGpa = allocator.alloc(KERNEL_IMAGE_BYTES / PAGE_SIZE, KERNEL_IMAGE_BYTES / PAGE_SIZE);
  bootSpace.map(KERNEL_BASE_GVA, imageGpa, { pageSizeBytes: PAGE_SIZE_2M, global: true });
  for (const slot of memory.slots) {
    bootSpace.mapRange(DIRECT_MAP_GVA + slot.baseGpa, slot.baseGpa, slot.sizeBytes, {
      largePages: true, executable: false, global: true,
    });
  }
  writeKernelImage(memory, imageGpa, vcpuCount);
  const tasks: WorkloadTask[] = WORKLOAD_TASKS.map((spec, slot) => {
    if (slot === 0) return { ...spec, taskGva: taskGva(0), cr3: bootSpace.cr3, cpu: 0 };
    const space = createAddressSpace(memory, allocator, { shareKernelHalfWith: bootSpace });
    if (!spec.kernelThread) buildUserPages(memory, allocator, space, spec);
    return { ...spec, taskGva: taskGva(slot), cr3: space.cr3, cpu: (slot - 1) % vcpuCount };
  });
  tasks.forEach((task, i) => {
    const next = tasks[(i + 1) % tasks.length]!.taskGva;
    const prev = tasks[(i + tasks.length - 1) % tasks.length]!.taskGva;
    writeTaskStruct(memory, imageGpa, task, next, prev);
  });
  return { tasks, swapperCr3: bootSpace.cr3 };
}

/** Puts vCPU `state` where the booted workload kernel leaves it (idle loop, per-CPU GS, LSTAR…). @internal */
export function bootWorkloadVcpu(state: VcpuState, image: WorkloadImage): void {
  const cpu = state.index;
  state.regs = {
    ...state.regs,
    rip: IDLE_LOOP_GVA,
    rsp: KERNEL_STACKS_GVA + BigInt(cpu + 1) * KERNEL_STACK_BYTES - 8n,
    rflags: X86_EFLAGS_FIXED | X86_EFLAGS_IF,
  };
  const s = state.sregs;
  s.cr3 = image.swapperCr3;
  s.gdt.base = GDT_GVA;
  s.gdt.limit = 0x4f;
  s.idt.base = IDT_GVA;
  s.idt.limit = 0xfff;
  s.tr.base = TSS_GVA;
  s.gs.base = percpuGva(cpu);
  state.msrs.write(MSR_LSTAR, SYSCALL_ENTRY_GVA);
  state.msrs.write(MSR_STAR, 0x0023001000000000n); // SYSRET CS base 0x23, SYSCALL CS 0x10 (Linux)
  state.msrs.write(MSR_SYSCALL_MASK, 0x47700n); // TF DF IF IOPL AC NT, as Linux masks
  state.msrs.write(MSR_KERNEL_GS_BASE, 0n);
  state.msrs.write(MSR_TSC_AUX, BigInt(cpu));
  state.initialized = cpu === 0;
}
