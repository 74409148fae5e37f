// SPDX-License-Identifier: Apache-2.0
/**
 * Fault-injection tools for the unhook, ledger and fault e2e tests (test/e2e/{unhook,ledger,faults}-*):
 *
 * - child processes, bounded: {@link spawnNode}, the bridge binary ({@link startBridgeProcess}) and a
 *   controller that lives in its own process so that a test can SIGKILL or SIGSTOP it
 *   ({@link startControllerProcess});
 * - what the emulated guest looks like, and what it looked like when the device manager unhooked
 *   ({@link guestState}, {@link captureAtUnhook}), so a test proves the ledger was undone before the
 *   bridge closed the KVMI socket;
 * - the device-manager side of the KVMI socket, raw: {@link RawPeer} sends any bytes, and
 *   {@link fakeHook} plays QEMU + kernel just far enough for the bridge to hook the VM; fast-check
 *   arbitraries for malformed handshakes and frames.
 *
 * Everything waits with a deadline; every process and socket opened here is ended by its owner.
 */
import type { EmulatedVm } from "@kvmi/kvm-bridge/emulator";
import { EventType } from "@kvmi/proto";
import type { SessionCommandRequest } from "./bridge-clients.js";

export * from "./child-processes.js";
export * from "./guest-state.js";
export * from "./raw-peer.js";

// -------------------------------------------------------------------------------------------------
// A controller's typical hooks, as a plan of session commands

/** Guest-physical places the hook plans use (low RAM, below the boot page tables). */
export const SPOTS = {
  /** A page of NOPs with the controller's breakpoints. */
  BP_GPA: 0x30000n,
  BP2_GPA: 0x30800n,
  /** A 4-byte patch (a hook's detour), on the same page. */
  PATCH_GPA: 0x30010n,
  /** Pages the controller restricts (R only; R+X). */
  PF_GPA: 0x40000n,
  PF2_GPA: 0x41000n,
  MSR_LSTAR: 0xc0000082,
  NOP: 0x90,
  INT3: 0xcc,
} as const;

/** Fills the breakpoint page with NOPs directly in guest memory (not through the bridge). */
export function prepareGuest(vm: EmulatedVm): void {
  const page = vm.guest.memory.write(SPOTS.BP_GPA, new Uint8Array(4096).fill(SPOTS.NOP));
  if (!page.ok) throw new Error("cannot prepare the breakpoint page");
}

/** Options of {@link hookPlan}. */
export interface HookPlanOptions {
  /** Also single-step vCPU 1. */
  readonly singlestep?: boolean;
  /** Also switch the UNHOOK event off (the bridge's baseline is on). */
  readonly disableUnhook?: boolean;
}

/**
 * What a typical controller does to VM `vm` (`vms/{uuid}`) with 2+ vCPUs: two INT3s and a 4-byte
 * patch over one of them (the ledger must keep the first original byte), page restrictions, CR3
 * interception on vCPU 0, LSTAR interception on vCPU 1, and the matching vCPU events.
 */
export function hookPlan(vm: string, options: HookPlanOptions = {}): SessionCommandRequest[] {
  const vcpu = (n: number): string => `${vm}/vcpus/${n}`;
  const plan: SessionCommandRequest[] = [
    { case: "writePhysicalMemory", value: { vm, gpa: SPOTS.BP_GPA, data: Uint8Array.of(SPOTS.INT3) } },
    { case: "writePhysicalMemory", value: { vm, gpa: SPOTS.BP2_GPA, data: Uint8Array.of(SPOTS.INT3) } },
    { case: "writePhysicalMemory", value: { vm, gpa: SPOTS.PATCH_GPA, data: Uint8Array.of(0xe9, 0xde, 0xad, 0xbe) } },
    // Overwrites the first INT3 and the byte after it: the original of BP_GPA is still the NOP.
    { case: "writePhysicalMemory", value: { vm, gpa: SPOTS.BP_GPA, data: Uint8Array.of(SPOTS.INT3, SPOTS.INT3) } },
    { case: "setPageAccess", value: { vm, entries: [{ gpa: SPOTS.PF_GPA, access: 1 }, { gpa: SPOTS.PF2_GPA, access: 5 }] } },
    { case: "controlVcpuEvents", value: { name: vcpu(0), event: EventType.BREAKPOINT, enable: true } },
    { case: "controlVcpuEvents", value: { name: vcpu(1), event: EventType.BREAKPOINT, enable: true } },
    { case: "controlVcpuEvents", value: { name: vcpu(0), event: EventType.CR, enable: true } },
    { case: "controlCr", value: { name: vcpu(0), cr: 3, enable: true } },
    { case: "controlVcpuEvents", value: { name: vcpu(1), event: EventType.MSR, enable: true } },
    { case: "controlMsr", value: { name: vcpu(1), msr: SPOTS.MSR_LSTAR, enable: true } },
    { case: "controlVcpuEvents", value: { name: vcpu(0), event: EventType.PF, enable: true } },
    { case: "controlVcpuEvents", value: { name: vcpu(1), event: EventType.PF, enable: true } },
  ];
  if (options.singlestep === true) plan.push({ case: "controlSingleStep", value: { name: vcpu(1), enable: true } });
  if (options.disableUnhook === true) plan.push({ case: "controlVmEvents", value: { vm, event: EventType.UNHOOK, enable: false } });
  return plan;
}
