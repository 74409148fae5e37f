// SPDX-License-Identifier: Apache-2.0
/**
 * What the emulated guest looks like, and what it looked like when the device manager unhooked
 * ({@link guestState}, {@link captureAtUnhook}), so a test proves the ledger was undone before the
 * bridge closed the KVMI socket.
 */
import { createHash } from "node:crypto";
import type { EmulatedVm } from "@kvmi/kvm-bridge/emulator";
import { e2eEventId, withTimeout } from "./bridge-harness.js";

// -------------------------------------------------------------------------------------------------
// What the guest looks like

/** The introspection-visible state of an emulated VM at one moment. */
export interface GuestState {
  /** SHA-256 of every byte of guest RAM (all memslots). */
  readonly ramDigest: string;
  /** Restricted GFNs (hex) with their access; empty when every page is rwx. */
  readonly restrictions: Readonly<Record<string, number>>;
  /** Per vCPU: enabled vCPU events, intercepted CRs and MSRs (kernel side). */
  readonly vcpus: ReadonlyArray<{ readonly events: number[]; readonly crs: number[]; readonly msrs: number[]; readonly singlestep: boolean }>;
  /** Enabled VM-scope events (UNHOOK is the bridge's baseline). */
  readonly vmEvents: number[];
}

const E820_TYPE_RAM = 1;

/** SHA-256 of all guest RAM. */
export function ramDigest(vm: EmulatedVm): string {
  const hash = createHash("sha256");
  for (const slot of vm.guest.memory.e820()) {
    if (slot.type !== E820_TYPE_RAM) continue;
    const read = vm.guest.memory.read(slot.address, Number(slot.length));
    if (!read.ok) throw new Error(`guest RAM at 0x${slot.address.toString(16)} is not readable`);
    hash.update(read.bytes);
  }
  return hash.digest("hex");
}

/** The VM's state now (kernel fields are empty while it is not hooked). */
export function guestState(vm: EmulatedVm): GuestState {
  const restrictions: Record<string, number> = {};
  for (const [gfn, access] of vm.guest.memory.restrictions()) restrictions[`0x${gfn.toString(16)}`] = access;
  const hooked = vm.kernel.isHooked;
  return {
    ramDigest: ramDigest(vm),
    restrictions,
    vcpus: vm.guest.vcpus.map((_, i) => {
      const v = hooked ? vm.kernel.vcpu(i) : undefined;
      return {
        events: v ? [...v.enabledEvents].sort((a, b) => a - b) : [],
        crs: v ? [...v.crMask].sort((a, b) => a - b) : [],
        msrs: v ? [...v.msrWrites].sort((a, b) => a - b) : [],
        singlestep: v?.singlestep ?? false,
      };
    }),
    vmEvents: hooked ? [...vm.kernel.vmEvents()].sort((a, b) => a - b) : [],
  };
}

/** The state a clean VM has while hooked by the bridge: nothing but UNHOOK. */
export function cleanState(vm: EmulatedVm, digest: string): GuestState {
  return {
    ramDigest: digest,
    restrictions: {},
    vcpus: vm.guest.vcpus.map(() => ({ events: [], crs: [], msrs: [], singlestep: false })),
    vmEvents: [e2eEventId("UNHOOK")],
  };
}

/** Snapshots taken when the device manager unhooked (right after the KVMI socket closed). */
export interface UnhookCapture {
  /** One entry per KVM_INTROSPECTION_UNHOOK while hooked, with the time it happened. */
  readonly states: ReadonlyArray<{ readonly at: number; readonly state: GuestState }>;
  /** Resolves with the first capture not returned yet (bounded). */
  next(timeoutMs?: number): Promise<{ readonly at: number; readonly state: GuestState }>;
  /** Restores the kernel's own unhook. */
  dispose(): void;
}

/**
 * Records the guest's state at every KVM_INTROSPECTION_UNHOOK the device manager performs. QEMU
 * unhooks right after the socket closed (the chardev CLOSE, or the end of the PREUNHOOK wait), and
 * only UNHOOK frees the kernel's introspection state (page restrictions, interceptions), so this is
 * what the bridge left behind when it closed the socket: the ledger must have been undone by then.
 * (Single-stepping is cleared by the socket close itself, so `singlestep` is always false here.)
 */
export function captureAtUnhook(vm: EmulatedVm): UnhookCapture {
  const kernel = vm.kernel;
  const original = kernel.unhook;
  const states: Array<{ at: number; state: GuestState }> = [];
  const waiters: Array<() => void> = [];
  let taken = 0;
  kernel.unhook = async (): Promise<void> => {
    if (kernel.isHooked) {
      states.push({ at: Date.now(), state: guestState(vm) });
      for (const waiter of waiters.splice(0)) waiter();
    }
    return original.call(kernel);
  };
  return {
    states,
    next: (timeoutMs = 5000) => {
      const index = taken++;
      return withTimeout(
        new Promise((resolveNext) => {
          const check = (): void => {
            if (states.length > index) resolveNext(states[index]!);
            else waiters.push(check);
          };
          check();
        }),
        timeoutMs,
        "KVM_INTROSPECTION_UNHOOK",
      );
    },
    dispose: () => {
      kernel.unhook = original;
    },
  };
}

