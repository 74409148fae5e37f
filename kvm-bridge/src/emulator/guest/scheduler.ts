// SPDX-License-Identifier: Apache-2.0
/**
 * Drives the built-in workload (layout in `workload.ts`): per-vCPU round-robin scheduling, syscalls and
 * agent hypercalls, all issued as vCPU operations so every interception point fires exactly as it would
 * for a real guest. It also keeps the ground truth that tests compare events and memory reads against.
 *
 * Determinism: every vCPU draws from its own seeded stream and its ticks run one after another, so
 * {@link Workload.step} produces the same ground truth for the same seed regardless of how the vCPUs
 * interleave. Timer-driven ticks skip a vCPU whose previous tick is still running (e.g. blocked in an
 * event), so they are only as deterministic as the exit handlers' timing.
 */
import type { OperationOutcome } from "./exits.js";
import { createPrng, deriveSeed, type Prng } from "./prng.js";
import type { Vcpu } from "./vcpu.js";
import {
  KVMI_AGENT_VMCALL_GVA, PERCPU_CURRENT_TASK, SWITCH_MM_GVA, SYSCALL_ENTRY_GVA, TASK_NR_SYSCALLS,
  USER_STACK_GVA, USER_SYSCALL_INSN_GVA, percpuGva, type WorkloadImage, type WorkloadTask,
} from "./workload.js";
import { KVM_HC_XEN_HVM_OP, KVM_HC_XEN_HVM_OP_GUEST_REQUEST_VM_EVENT, X86_EFLAGS_FIXED, X86_EFLAGS_IF } from "./x86.js";

/** Options of the built-in workload. */
export interface WorkloadOptions {
  /** Milliseconds between timer ticks while the guest runs; 0 = only manual {@link Workload.step}. Default 10. */
  readonly tickIntervalMs?: number;
  /** Chance (0..1) that the running user task makes a syscall in a tick. Default 0.75. */
  readonly syscallProbability?: number;
  /** vCPU 0 issues the KVMI agent hypercall every this many of its ticks; 0 disables. Default 16. */
  readonly hypercallEveryTicks?: number;
  /** Records kept per ground-truth log (oldest dropped). Default 4096. */
  readonly historyLimit?: number;
}

/** One syscall entry the guest made. */
export interface SyscallRecord {
  /** Position in the workload's global sequence (shared with CR3 switches and hypercalls). */
  readonly seq: number;
  readonly vcpu: number;
  readonly pid: number;
  /** Syscall number (RAX at the entry). */
  readonly nr: number;
  /** How the `executeAt(SYSCALL_ENTRY_GVA)` ended (`exception` = a #BP re-injected, …). */
  readonly status: OperationOutcome<unknown>["status"];
}

/** One CR3 switch the scheduler attempted. */
export interface Cr3SwitchRecord {
  readonly seq: number;
  readonly vcpu: number;
  readonly fromPid: number;
  readonly toPid: number;
  /** CR3 the scheduler wrote. */
  readonly cr3: bigint;
  /** CR3 the register actually received (differs if a tool replied with another `new_val`). */
  readonly loadedCr3: bigint | undefined;
}

/** Snapshot of what the workload did. */
export interface WorkloadGroundTruth {
  /** Tick rounds started (manual steps plus timer ticks). */
  readonly ticks: number;
  /** Timer ticks skipped for a vCPU whose previous tick had not finished. */
  readonly skippedTicks: number;
  readonly syscallsByPid: ReadonlyMap<number, number>;
  readonly syscallCount: number;
  readonly cr3SwitchCount: number;
  readonly hypercalls: number;
  /** Hypercalls that returned RAX = 0 (the HYPERCALL event was enabled). */
  readonly hypercallsConsumed: number;
  /** Latest syscalls (at most `historyLimit`). */
  readonly syscalls: readonly SyscallRecord[];
  /** Latest CR3 switches (at most `historyLimit`), the CR3 switch timeline. */
  readonly cr3Switches: readonly Cr3SwitchRecord[];
}

/** The running workload. */
export interface Workload {
  /** Every task including `init_task` (index 0), in list order. */
  readonly tasks: readonly WorkloadTask[];
  /** CR3 of `swapper_pg_dir` (the boot page tables; what idle vCPUs run on). */
  readonly swapperCr3: bigint;
  readonly tickIntervalMs: number;
  /** Pid of the task vCPU `vcpu` currently runs (0 = idle). */
  currentPid(vcpu: number): number;
  /**
   * Runs one tick on every vCPU and resolves when all are done. The ticks are vCPU operations, so this
   * only completes while the guest runs (and each vCPU's exits get answered).
   */
  step(): Promise<void>;
  /** `step()` n times. */
  runTicks(n: number): Promise<void>;
  groundTruth(): WorkloadGroundTruth;
}

/** Lifecycle hooks the guest uses. @internal */
export interface WorkloadController extends Workload {
  /** Forgets all progress and adopts a freshly built image (guest reset). */
  rebuild(image: WorkloadImage): void;
  startTicker(): void;
  stopTicker(): void;
}

type MutableSwitch = { -readonly [K in keyof Cr3SwitchRecord]: Cr3SwitchRecord[K] };

/** Creates the workload driver over `vcpus`. @internal */
export function createWorkload(
  image: WorkloadImage, vcpus: readonly Vcpu[], seed: number, options: WorkloadOptions = {},
): WorkloadController {
  return new Scheduler(image, vcpus, seed, options);
}

class Scheduler implements WorkloadController {
  readonly tickIntervalMs: number;
  private readonly syscallProbability: number;
  private readonly hypercallEvery: number;
  private readonly historyLimit: number;
  private image!: WorkloadImage;
  private generation = 0;
  private ticker: ReturnType<typeof setInterval> | undefined;
  private chains: Array<Promise<void>> = [];
  private busy: boolean[] = [];
  private rngs: Prng[] = [];
  private runQueues: WorkloadTask[][] = [];
  private cursor: number[] = [];
  private current: WorkloadTask[] = [];
  private vcpuTicks: number[] = [];
  private apsStarted = false;
  private seq = 0;
  private truth = this.emptyTruth();
  private nrSyscalls = new Map<number, bigint>();

  constructor(image: WorkloadImage, private readonly vcpus: readonly Vcpu[], private readonly seed: number, options: WorkloadOptions) {
    this.tickIntervalMs = options.tickIntervalMs ?? 10;
    this.syscallProbability = options.syscallProbability ?? 0.75;
    this.hypercallEvery = options.hypercallEveryTicks ?? 16;
    this.historyLimit = options.historyLimit ?? 4096;
    this.rebuild(image);
  }

  get tasks(): readonly WorkloadTask[] {
    return this.image.tasks;
  }
  get swapperCr3(): bigint {
    return this.image.swapperCr3;
  }

  currentPid(vcpu: number): number {
    return this.current[vcpu]?.pid ?? 0;
  }

  rebuild(image: WorkloadImage): void {
    this.generation++;
    this.image = image;
    const n = this.vcpus.length;
    this.chains = this.vcpus.map(() => Promise.resolve());
    this.busy = this.vcpus.map(() => false);
    this.rngs = this.vcpus.map((_, i) => createPrng(deriveSeed(this.seed, i)));
    this.runQueues = this.vcpus.map((_, i) => image.tasks.filter((_task, slot) => slot > 0 && (slot - 1) % n === i));
    this.cursor = this.vcpus.map(() => 0);
    this.current = this.vcpus.map(() => image.tasks[0]!);
    this.vcpuTicks = this.vcpus.map(() => 0);
    this.apsStarted = false;
    this.seq = 0;
    this.truth = this.emptyTruth();
    this.nrSyscalls = new Map();
  }

  async step(): Promise<void> {
    this.truth.ticks++;
    await Promise.all(this.vcpus.map((_, i) => this.enqueueTick(i)));
  }

  async runTicks(n: number): Promise<void> {
    for (let i = 0; i < n; i++) await this.step();
  }

  startTicker(): void {
    if (this.ticker !== undefined || this.tickIntervalMs <= 0) return;
    this.ticker = setInterval(() => this.timerTick(), this.tickIntervalMs);
    // The workload must never be what keeps a process alive.
    this.ticker.unref?.();
  }

  stopTicker(): void {
    if (this.ticker !== undefined) clearInterval(this.ticker);
    this.ticker = undefined;
  }

  groundTruth(): WorkloadGroundTruth {
    const t = this.truth;
    return {
      ...t,
      syscallsByPid: new Map(t.syscallsByPid),
      syscalls: [...t.syscalls],
      cr3Switches: t.cr3Switches.map((r) => ({ ...r })),
    };
  }

  private emptyTruth() {
    return {
      ticks: 0,
      skippedTicks: 0,
      syscallsByPid: new Map<number, number>(),
      syscallCount: 0,
      cr3SwitchCount: 0,
      hypercalls: 0,
      hypercallsConsumed: 0,
      syscalls: [] as SyscallRecord[],
      cr3Switches: [] as MutableSwitch[],
    };
  }

  private timerTick(): void {
    this.truth.ticks++;
    this.vcpus.forEach((_, i) => {
      if (this.busy[i]) this.truth.skippedTicks++;
      else this.enqueueTick(i).catch(() => undefined);
    });
  }

  private enqueueTick(i: number): Promise<void> {
    const gen = this.generation;
    this.busy[i] = true;
    const run: Promise<void> = this.chains[i]!
      .then(() => (gen === this.generation ? this.tick(i, gen) : undefined))
      .finally(() => {
        if (gen === this.generation && this.chains[i] === chained) this.busy[i] = false;
      });
    // The chain must survive a failed tick, or every later tick of this vCPU would be skipped.
    const chained = run.catch(() => undefined);
    this.chains[i] = chained;
    return run;
  }

  private push<T>(log: T[], record: T): void {
    log.push(record);
    if (log.length > this.historyLimit) log.shift();
  }

  /** One tick of vCPU `i`. All random draws happen before the first await, in a fixed order. */
  private async tick(i: number, gen: number): Promise<void> {
    const vcpu = this.vcpus[i]!;
    const rng = this.rngs[i]!;
    const tickNo = this.vcpuTicks[i]!++;
    if (i === 0 && !this.apsStarted) {
      this.apsStarted = true;
      for (const ap of this.vcpus.slice(1)) ap.startup();
    }
    const queue = this.runQueues[i]!;
    const next = queue.length > 0 ? queue[this.cursor[i]!++ % queue.length]! : this.current[i]!;
    const syscall = !next.kernelThread && rng() < this.syscallProbability;
    const nr = next.syscalls[Math.floor(rng() * next.syscalls.length)] ?? 0;
    const arg = BigInt(Math.floor(rng() * 0x10000));
    const hypercall = i === 0 && this.hypercallEvery > 0 && tickNo % this.hypercallEvery === this.hypercallEvery - 1;
    const live = () => gen === this.generation;

    const prev = this.current[i]!;
    if (next !== prev) {
      const record: MutableSwitch = { seq: ++this.seq, vcpu: i, fromPid: prev.pid, toPid: next.pid, cr3: next.cr3, loadedCr3: undefined };
      this.push(this.truth.cr3Switches, record);
      this.truth.cr3SwitchCount++;
      const out = await vcpu.writeCr(3, next.cr3, { at: SWITCH_MM_GVA });
      if (!live() || out.status === "aborted") return;
      if (out.status === "done") record.loadedCr3 = out.value;
      this.current[i] = next;
      await vcpu.writeMemory({ gva: percpuGva(i) + PERCPU_CURRENT_TASK }, u64le(next.taskGva), { at: SWITCH_MM_GVA + 3n });
      if (!live()) return;
    }
    if (syscall) {
      const seq = ++this.seq;
      const out = await vcpu.executeAt(SYSCALL_ENTRY_GVA, {
        regs: {
          rax: BigInt(nr), rdi: arg, rsi: USER_STACK_GVA, rdx: arg & 0xffn,
          rcx: USER_SYSCALL_INSN_GVA + 2n, r11: X86_EFLAGS_FIXED | X86_EFLAGS_IF,
        },
      });
      if (!live() || out.status === "aborted") return;
      const t = this.truth;
      t.syscallCount++;
      t.syscallsByPid.set(next.pid, (t.syscallsByPid.get(next.pid) ?? 0) + 1);
      this.push(t.syscalls, { seq, vcpu: i, pid: next.pid, nr, status: out.status });
      const count = (this.nrSyscalls.get(next.pid) ?? 0n) + 1n;
      this.nrSyscalls.set(next.pid, count);
      await vcpu.writeMemory({ gva: next.taskGva + TASK_NR_SYSCALLS }, u64le(count), { at: SYSCALL_ENTRY_GVA + 3n });
      if (!live()) return;
    }
    if (hypercall) {
      ++this.seq;
      const out = await vcpu.hypercall(KVM_HC_XEN_HVM_OP, KVM_HC_XEN_HVM_OP_GUEST_REQUEST_VM_EVENT, 0n, { at: KVMI_AGENT_VMCALL_GVA });
      if (!live() || out.status !== "done") return;
      this.truth.hypercalls++;
      if (out.value === 0n) this.truth.hypercallsConsumed++;
    }
  }
}

function u64le(value: bigint): Uint8Array {
  const bytes = new Uint8Array(8);
  new DataView(bytes.buffer).setBigUint64(0, value, true);
  return bytes;
}
