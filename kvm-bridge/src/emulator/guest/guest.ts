// SPDX-License-Identifier: Apache-2.0
/**
 * The emulated VM as the kernel side sees it: guest memory, vCPU threads, the exit-handler slot the
 * KVMI implementation plugs into, and QEMU-like lifecycle (start, stop/resume, reset, crash).
 * It carries no identity (UUID, name, start time): those belong to the handshake, not to the guest.
 */
import { GuestModelError } from "./errors.js";
import { passThroughExitHandler, type VcpuExitHandler } from "./exits.js";
import { createGuestMemory, type GuestMemory, type GuestMemoryOptions } from "./memory.js";
import { createPageAllocator, type PageAllocator } from "./page-allocator.js";
import { createAddressSpace, type AddressSpace } from "./paging.js";
import { createWorkload, type Workload, type WorkloadController, type WorkloadOptions } from "./scheduler.js";
import { createVcpuState, type VcpuState } from "./vcpu-state.js";
import { createVcpu, type VcpuController } from "./vcpu-thread.js";
import type { Vcpu } from "./vcpu.js";
import { WORKLOAD_MAX_VCPUS, bootWorkloadVcpu, buildWorkloadImage } from "./workload.js";

/** Options of {@link createGuest}. */
export interface GuestOptions {
  /** RAM size in MiB (QEMU `-m`); at least 8 with the workload. */
  readonly memoryMiB: number;
  /** Number of vCPUs, 1..64. */
  readonly vcpus: number;
  /** Run the built-in workload (default true); an object enables it with options. */
  readonly workload?: boolean | WorkloadOptions;
  /** Seed of the workload's decisions (default 1). */
  readonly seed?: number;
  /** MMIO hole; see {@link GuestMemoryOptions.mmioHole}. */
  readonly mmioHole?: GuestMemoryOptions["mmioHole"];
  /** TSC frequency in Hz (default 2.4 GHz). */
  readonly tscHz?: bigint;
  /** Initial exit handler (default: pass-through). */
  readonly exitHandler?: VcpuExitHandler;
}

/** VM lifecycle, as QEMU's run state: `created` (not started yet), `running`, `paused`, `crashed`. */
export type GuestRunState = "created" | "running" | "paused" | "crashed";

/** Lifecycle notifications for the kernel side (a reset, for instance, unhooks introspection in QEMU). */
export type GuestLifecycleEvent =
  | { readonly type: "started" | "paused" | "resumed" | "reset" }
  | { readonly type: "crashed"; readonly reason: string };

/** An emulated VM. */
export interface Guest {
  readonly memory: GuestMemory;
  readonly vcpus: readonly Vcpu[];
  /** The built-in workload, or `undefined` when disabled. */
  readonly workload: Workload | undefined;
  /**
   * Boot page tables: all RAM identity-mapped (supervisor, 2 MiB pages where possible); with the workload
   * this is also `swapper_pg_dir`, holding the shared kernel half. Every vCPU starts with this CR3.
   * Tests may add mappings (e.g. a selftest-style `test_gva`). Replaced by {@link Guest.reset}.
   */
  readonly bootAddressSpace: AddressSpace;
  /** Allocator for further guest pages (after the ones the boot image used). Replaced by reset. */
  readonly allocator: PageAllocator;
  readonly runState: GuestRunState;
  /** Why the VM crashed, while `runState` is `crashed`. */
  readonly crashReason: string | undefined;
  /** The current exit handler (pass-through when none is installed). */
  readonly exitHandler: VcpuExitHandler;
  /** Installs the kernel side's handler; `undefined` restores pass-through. Exits in flight keep the old one. */
  setExitHandler(handler: VcpuExitHandler | undefined): void;
  /** Puts every vCPU into KVM_RUN and starts the workload timer. @throws GuestModelError `GUEST_INVALID_STATE` if crashed. */
  start(): void;
  /**
   * QEMU `stop`: the workload timer stops and every vCPU leaves KVM_RUN at its next entry boundary.
   * Resolves when all are parked (a vCPU blocked in an exit parks after the handler returns).
   */
  stop(): Promise<void>;
  /** QEMU `cont`. */
  resume(): void;
  /**
   * System reset: pending operations settle `aborted`/`reset`, RAM is zeroed and restrictions dropped,
   * registers return to power-on, and the boot image and workload are rebuilt (same seed → same run).
   * A crashed VM comes back as `created`; a running one keeps running.
   */
  reset(): void;
  /** KVMI CRASH (v9: SIGTERM to every vCPU thread): the VM is dead; all operations settle `aborted`. */
  crash(reason?: string): void;
  /** Subscribes to lifecycle events; returns the unsubscribe function. Listeners must not throw. */
  onLifecycle(listener: (event: GuestLifecycleEvent) => void): () => void;
}

/**
 * Creates a VM in the `created` state with its boot image (and workload, unless disabled) in memory.
 * @throws GuestModelError `GUEST_INVALID_ARGUMENT` for out-of-range sizes or counts.
 */
export function createGuest(options: GuestOptions): Guest {
  return new EmulatedGuest(options);
}

class EmulatedGuest implements Guest {
  readonly memory: GuestMemory;
  readonly vcpus: readonly VcpuController[];
  runState: GuestRunState = "created";
  crashReason: string | undefined;
  private handler: VcpuExitHandler | undefined;
  private readonly states: readonly VcpuState[];
  private readonly workloadDriver: WorkloadController | undefined;
  private boot!: AddressSpace;
  private pages!: PageAllocator;
  private readonly listeners = new Set<(event: GuestLifecycleEvent) => void>();

  constructor(private readonly options: GuestOptions) {
    const { vcpus, memoryMiB } = options;
    const withWorkload = options.workload !== false;
    if (!Number.isInteger(vcpus) || vcpus < 1 || vcpus > WORKLOAD_MAX_VCPUS) {
      throw new GuestModelError("GUEST_INVALID_ARGUMENT", `vcpus must be an integer in 1..${WORKLOAD_MAX_VCPUS}, got ${vcpus}`);
    }
    if (withWorkload && memoryMiB < 8) {
      throw new GuestModelError("GUEST_INVALID_ARGUMENT", `the workload needs at least 8 MiB, got ${memoryMiB}`);
    }
    this.handler = options.exitHandler;
    this.memory = createGuestMemory({ memoryMiB, mmioHole: options.mmioHole });
    this.states = Array.from({ length: vcpus }, (_, index) =>
      createVcpuState({ index, vcpuCount: vcpus, memory: this.memory, tscHz: options.tscHz }),
    );
    this.vcpus = this.states.map((state) =>
      createVcpu({
        state,
        memory: this.memory,
        handler: () => this.handler,
        crashVm: (reason) => this.crash(reason),
      }),
    );
    const image = this.build();
    if (withWorkload && image !== undefined) {
      const workloadOptions = typeof options.workload === "object" ? options.workload : {};
      this.workloadDriver = createWorkload(image, this.vcpus, options.seed ?? 1, workloadOptions);
    }
  }

  get workload(): Workload | undefined {
    return this.workloadDriver;
  }
  get bootAddressSpace(): AddressSpace {
    return this.boot;
  }
  get allocator(): PageAllocator {
    return this.pages;
  }
  get exitHandler(): VcpuExitHandler {
    return this.handler ?? passThroughExitHandler;
  }

  setExitHandler(handler: VcpuExitHandler | undefined): void {
    this.handler = handler;
  }

  start(): void {
    if (this.runState === "crashed") throw new GuestModelError("GUEST_INVALID_STATE", "a crashed VM must be reset first");
    if (this.runState !== "created") return;
    this.runState = "running";
    for (const v of this.vcpus) v.start();
    this.workloadDriver?.startTicker();
    this.emit({ type: "started" });
  }

  async stop(): Promise<void> {
    // Before start() there is nothing in KVM_RUN to stop; parking now would outlive start().
    if (this.runState === "crashed" || this.runState === "created") return;
    this.workloadDriver?.stopTicker();
    const wasRunning = this.runState === "running";
    if (wasRunning) this.runState = "paused";
    const parked = Promise.all(this.vcpus.map((v) => v.stop()));
    if (wasRunning) this.emit({ type: "paused" });
    await parked;
  }

  resume(): void {
    if (this.runState !== "paused") return;
    this.runState = "running";
    for (const v of this.vcpus) v.resume();
    this.workloadDriver?.startTicker();
    this.emit({ type: "resumed" });
  }

  reset(): void {
    const crashed = this.runState === "crashed";
    this.workloadDriver?.stopTicker();
    for (const v of this.vcpus) v.abortAll("reset");
    this.memory.reset();
    const image = this.build();
    if (image !== undefined) this.workloadDriver?.rebuild(image);
    if (crashed) {
      for (const v of this.vcpus) v.revive();
      this.runState = "created";
      this.crashReason = undefined;
    } else if (this.runState === "running") {
      for (const v of this.vcpus) v.kick();
      this.workloadDriver?.startTicker();
    }
    this.emit({ type: "reset" });
  }

  crash(reason = "crashed"): void {
    if (this.runState === "crashed") return;
    this.runState = "crashed";
    this.crashReason = reason;
    this.workloadDriver?.stopTicker();
    for (const v of this.vcpus) v.kill();
    this.emit({ type: "crashed", reason });
  }

  onLifecycle(listener: (event: GuestLifecycleEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private emit(event: GuestLifecycleEvent): void {
    for (const listener of [...this.listeners]) {
      try {
        listener(event);
      } catch {
        // A listener's failure must not stop the VM's own state transition.
      }
    }
  }

  /** Lays out the boot page tables (and workload image) and puts every vCPU at its power-on state. */
  private build() {
    this.pages = createPageAllocator(this.memory);
    this.boot = createAddressSpace(this.memory, this.pages);
    for (const slot of this.memory.slots) {
      this.boot.mapRange(slot.baseGpa, slot.baseGpa, slot.sizeBytes, { largePages: true });
    }
    for (const state of this.states) {
      state.reset();
      state.sregs.cr3 = this.boot.cr3;
    }
    if (this.options.workload === false) return undefined;
    const image = buildWorkloadImage(this.memory, this.pages, this.boot, this.states.length);
    for (const state of this.states) bootWorkloadVcpu(state, image);
    return image;
  }
}
