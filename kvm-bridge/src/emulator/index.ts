// SPDX-License-Identifier: Apache-2.0
/**
 * `@kvmi/kvm-bridge/emulator`: QEMU + the KVMI kernel side (v9, v12 or kvmi-v7), and the guest it introspects.
 * Used by `kvmi-sim`, the bridge's embedded mode, and every test.
 */

// End-user API: emulated VMs.
export { createEmulatedVm, createSimulator } from "./simulator.js";
export type { EmulatedVm, EmulatedVmOptions, Simulator, SimulatorOptions } from "./simulator.js";
export { DeviceManager, parseEndpoint } from "./device-manager.js";
export type { DeviceManagerOptions, KvmiEndpoint, UnhookOutcome, VmAction, VmDescription } from "./device-manager.js";

// The emulated kernel, for tests that drive it like the v9 selftest drives the ioctls.
export { KvmiVm } from "./kernel/kvmi-vm.js";
export type { FeatureArgs, HookArgs, KvmiVmOptions } from "./kernel/kvmi-vm.js";
export { createKvmiExitHandler } from "./kernel/exit-handler.js";
export { createGuestPort } from "./kernel/guest-adapter.js";
export { DEFAULT_HOST_FEATURES } from "./kernel/guest-port.js";
export type { GuestPort, HostFeatures, VcpuPort } from "./kernel/guest-port.js";

// The guest model.
export * as guestModel from "./guest/index.js";
export { createGuest } from "./guest/guest.js";
export type { Guest, GuestOptions } from "./guest/guest.js";
export type { Vcpu } from "./guest/vcpu.js";
