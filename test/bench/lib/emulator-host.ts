// SPDX-License-Identifier: Apache-2.0
/**
 * The benchmark's emulated VMs (the QEMU + KVMI v9 kernel side), as IPC handlers that either the
 * emulator child serves in its own process or the bridge child serves beside the bridge (the
 * embedded layout `npm start` runs). Event round trips are timed here, where the guest runs: from
 * the guest's MOV to CR3 (which raises KVMI_EVENT_CR once the controller enabled it) to the
 * instruction completing after the tool's reply came back.
 */
import { createEmulatedVm } from "@kvmi/kvm-bridge/emulator";
import type { EmulatedVm, KvmiEndpoint } from "@kvmi/kvm-bridge/emulator";
import { pseudoRandomBytes } from "./pseudo-random.js";

/** One VM to start. */
export interface VmSpec {
  readonly key: string;
  readonly endpoint: KvmiEndpoint;
  readonly vcpus: number;
  readonly memoryMiB: number;
  /** Run the built-in workload's timer (10 ms ticks); otherwise the guest only does what we drive. */
  readonly workload: boolean;
}

/** The result of {@link eventLoop}. */
export interface EventLoopResult {
  /** Round-trip times in µs, in completion order (capped at `maxSamples`). */
  readonly samples: Float64Array;
  /** Round trips completed (all vCPUs). */
  readonly completed: number;
  /** MOV CR3 that did not end `done` with the written value. */
  readonly failures: number;
  readonly elapsedMs: number;
}

/** PWT, bit 3 of CR3: toggling it makes every write a change, so every write raises an event. */
const X86_CR3_PWT = 1n << 3n;

const vms = new Map<string, EmulatedVm>();


function waitHooked(vm: EmulatedVm, timeoutMs: number): Promise<void> {
  if (vm.deviceManager.isHooked) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${vm.name} was not hooked within ${timeoutMs} ms`)), timeoutMs);
    vm.deviceManager.once("hooked", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

async function addVms(params: { specs: readonly VmSpec[] }): Promise<Array<{ key: string; uuid: string }>> {
  const started = params.specs.map((spec, i) => {
    const vm = createEmulatedVm(spec.endpoint, {
      name: spec.key,
      vcpus: spec.vcpus,
      memoryMiB: spec.memoryMiB,
      seed: i + 1,
      // Without the timer the workload still builds its page tables and tasks (a realistic
      // guest), but nothing runs unless the benchmark drives it.
      workload: spec.workload ? true : { tickIntervalMs: 0, hypercallEveryTicks: 0 },
      reconnectMs: 200,
    });
    vms.set(spec.key, vm);
    const hooked = waitHooked(vm, 30_000);
    vm.start();
    // The workload starts the APs on its first tick; a driven guest starts them now.
    if (!spec.workload) for (const vcpu of vm.guest.vcpus) vcpu.startup();
    return hooked.then(() => ({ key: spec.key, uuid: vm.uuid }));
  });
  return Promise.all(started);
}

/** Writes `bytes` pseudo-random bytes into VM `key`'s RAM from `gpa` (the bulk phase's region). */
async function fillRam(params: { key: string; gpa: number; bytes: number; seed: number }): Promise<void> {
  const result = requireVm(params.key).guest.memory.write(BigInt(params.gpa), pseudoRandomBytes(params.bytes, params.seed));
  if (!result.ok) throw new Error(`${params.key}: RAM at ${params.gpa} + ${params.bytes} is not all backed`);
}

export function requireVm(key: string): EmulatedVm {
  const vm = vms.get(key);
  if (vm === undefined) throw new Error(`no VM ${key}`);
  return vm;
}

/**
 * Each of the first `vcpus` vCPUs writes CR3 in a loop (toggling PWT) for `durationMs`, all at
 * once; every write is one event round trip through whatever tool is attached.
 */
async function eventLoop(params: { key: string; vcpus: number; durationMs: number; maxSamples: number }): Promise<EventLoopResult> {
  const vm = requireVm(params.key);
  return cr3WriteLoops(vm.guest.vcpus.slice(0, params.vcpus), params.durationMs, params.maxSamples);
}

/** A vCPU of an emulated guest, as the loops below drive it. */
type GuestVcpu = EmulatedVm["guest"]["vcpus"][number];

/** What {@link cr3WriteLoops} can do around each write. */
export interface Cr3LoopOptions {
  /** Called just before each write (e.g. to stamp a register the event carries). */
  readonly beforeWrite?: (vcpu: GuestVcpu) => void;
  /** Pause between writes, ms (0: back to back). */
  readonly gapMs?: number;
}

/**
 * Each vCPU writes CR3 in a loop (toggling PWT) until `durationMs` passed, all at once; every
 * write is one event round trip through whatever tool is attached, timed in the guest.
 */
export async function cr3WriteLoops(vcpus: readonly GuestVcpu[], durationMs: number, maxSamples: number, options: Cr3LoopOptions = {}): Promise<EventLoopResult> {
  const samples = new Float64Array(maxSamples);
  let n = 0;
  let completed = 0;
  let failures = 0;
  const start = performance.now();
  const end = start + durationMs;
  const lanes = vcpus.map(async (vcpu) => {
    const base = vcpu.state.sregs.cr3;
    let flip = false;
    while (performance.now() < end) {
      flip = !flip;
      const target = flip ? base ^ X86_CR3_PWT : base;
      options.beforeWrite?.(vcpu);
      const t0 = performance.now();
      const out = await vcpu.writeCr(3, target);
      const dt = performance.now() - t0;
      if (out.status !== "done" || out.value !== target) failures++;
      if (n < samples.length) samples[n++] = dt * 1000;
      completed++;
      if ((options.gapMs ?? 0) > 0) await new Promise((resolve) => setTimeout(resolve, options.gapMs));
    }
  });
  await Promise.all(lanes);
  return { samples: samples.slice(0, n), completed, failures, elapsedMs: performance.now() - start };
}

/** Workload progress summed over VMs running the workload (scheduler CR3 switches raise CR events). */
function stats(): { cr3Switches: number; syscalls: number; hooked: number; vms: number } {
  let cr3Switches = 0;
  let syscalls = 0;
  let hooked = 0;
  for (const vm of vms.values()) {
    const truth = vm.guest.workload?.groundTruth();
    cr3Switches += truth?.cr3SwitchCount ?? 0;
    syscalls += truth?.syscallCount ?? 0;
    if (vm.deviceManager.isHooked) hooked++;
  }
  return { cr3Switches, syscalls, hooked, vms: vms.size };
}

/** Stops every VM (a stuck one is left after 3 s so that the process can exit). */
export async function stopVms(): Promise<void> {
  await Promise.race([
    Promise.all([...vms.values()].map((vm) => vm.stop().catch(() => undefined))),
    new Promise((resolve) => setTimeout(resolve, 3000)),
  ]);
  vms.clear();
}

/** The IPC handlers of a process that hosts emulated VMs. */
export const emulatorHandlers = { addVms, eventLoop, fillRam, stats } as const;
