// SPDX-License-Identifier: Apache-2.0
/**
 * The emulator as a library: emulated VMs (guest model + KVMI kernel side of any dialect + QEMU device manager)
 * that connect to any KVMI tool. `kvmi-sim`, the bridge's embedded mode and the tests all use it.
 */
import type { Dialect } from "../wire/dialect.js";
import { randomUUID } from "node:crypto";
import type { Logger } from "../logger.js";
import { silentLogger } from "../logger.js";
import { DeviceManager } from "./device-manager.js";
import type { DeviceManagerOptions, KvmiEndpoint, UnhookOutcome, VmAction } from "./device-manager.js";
import { createGuest } from "./guest/guest.js";
import type { Guest } from "./guest/guest.js";
import type { WorkloadOptions } from "./guest/scheduler.js";
import { createKvmiExitHandler } from "./kernel/exit-handler.js";
import { createGuestPort } from "./kernel/guest-adapter.js";
import type { HostFeatures } from "./kernel/guest-port.js";
import { KvmiVm } from "./kernel/kvmi-vm.js";

/** The device-manager options an emulated VM passes through (the `-object introspection` ones). */
type IntrospectionObjectOptions = Pick<
  DeviceManagerOptions,
  "handshake" | "secret" | "reconnectMs" | "handshakeTimeoutMs" | "unhookTimeoutMs" | "commands" | "events"
>;

/** Options of one emulated VM. */
export interface EmulatedVmOptions extends IntrospectionObjectOptions {
  readonly uuid?: string;
  readonly name?: string;
  /** vCPUs (default 2). */
  readonly vcpus?: number;
  /** RAM in MiB (default 64). */
  readonly memoryMiB?: number;
  /** Run the built-in workload (default true). */
  readonly workload?: boolean | WorkloadOptions;
  readonly seed?: number;
  readonly features?: Partial<HostFeatures>;
  /** The KVMI dialect the emulated kernel speaks (default v9; see `KNOWN_DIALECTS`). */
  readonly dialect?: Dialect;
  /** The `kvm.introspection` module parameter (default on). */
  readonly introspectionEnabled?: boolean;
  readonly logger?: Logger;
}

/** One emulated VM. */
export interface EmulatedVm {
  readonly uuid: string;
  readonly name: string;
  readonly guest: Guest;
  /** The emulated kernel: the ioctl API and per-vCPU KVMI state. */
  readonly kernel: KvmiVm;
  readonly deviceManager: DeviceManager;
  /** Starts the guest and connects to the tool. */
  start(): void;
  /** Drops the connection and stops the guest (QEMU killed). */
  stop(): Promise<void>;
  /** Pause, suspend, migrate or shutdown through the unhook flow (kvmi-abi §2.6). */
  runAction(action: VmAction): Promise<UnhookOutcome>;
  /** Resumes after pause or suspend. */
  resume(): void;
  /** Guest reset: unhook, reset, reconnect with a new start time. */
  reset(): Promise<void>;
}

/** Creates one emulated VM connecting to `endpoint` (not started). */
export function createEmulatedVm(endpoint: KvmiEndpoint, options: EmulatedVmOptions = {}): EmulatedVm {
  const uuid = options.uuid ?? randomUUID();
  const name = options.name ?? `vm-${uuid.slice(0, 8)}`;
  const logger = (options.logger ?? silentLogger).child({ vm: uuid });
  const guest = createGuest({
    memoryMiB: options.memoryMiB ?? 64,
    vcpus: options.vcpus ?? 2,
    workload: options.workload ?? true,
    ...(options.seed !== undefined && { seed: options.seed }),
  });
  const kernel = new KvmiVm(createGuestPort(guest), {
    ...(options.dialect && { dialect: options.dialect }),
    ...(options.features && { features: options.features }),
    ...(options.introspectionEnabled !== undefined && { introspectionEnabled: options.introspectionEnabled }),
    logger: logger.child({ component: "kernel" }),
  });
  guest.setExitHandler(createKvmiExitHandler(kernel));
  const { memory } = guest;
  const deviceManager = new DeviceManager({
    endpoint,
    vm: { uuid, name, maxGpa: memory.maxGfn() << 12n, e820: memory.e820() },
    guest: { stop: () => void guest.stop(), resume: () => guest.resume(), reset: () => guest.reset() },
    kernel,
    ...(options.handshake && { handshake: options.handshake }),
    ...(options.secret && { secret: options.secret }),
    ...(options.reconnectMs !== undefined && { reconnectMs: options.reconnectMs }),
    ...(options.handshakeTimeoutMs !== undefined && { handshakeTimeoutMs: options.handshakeTimeoutMs }),
    ...(options.unhookTimeoutMs !== undefined && { unhookTimeoutMs: options.unhookTimeoutMs }),
    ...(options.commands && { commands: options.commands }),
    ...(options.events && { events: options.events }),
    logger: logger.child({ component: "device-manager" }),
  });
  // CRASH kills QEMU (v9: SIGTERM to every vCPU thread): the connection goes away with it.
  guest.onLifecycle((event) => {
    if (event.type !== "crashed") return;
    logger.warn({ reason: event.reason }, "guest crashed: QEMU exits");
    void deviceManager.stop();
  });
  return {
    uuid,
    name,
    guest,
    kernel,
    deviceManager,
    start: () => {
      if (guest.runState === "created") guest.start();
      deviceManager.start();
    },
    stop: async () => {
      await deviceManager.stop();
      if (guest.runState === "running") await guest.stop();
    },
    runAction: (action) => deviceManager.runAction(action),
    resume: () => deviceManager.resume(),
    reset: () => deviceManager.reset(),
  };
}

/** Options of {@link createSimulator}: `vms` VMs sharing the per-VM options. */
export interface SimulatorOptions extends Omit<EmulatedVmOptions, "uuid" | "name"> {
  readonly endpoint: KvmiEndpoint;
  /** Number of VMs (default 1). */
  readonly vms?: number;
  /** Names are `${namePrefix}-${i}` (default `emu`). */
  readonly namePrefix?: string;
  /** UUIDs of the first VMs (QEMU's `-uuid`); the others get random ones. */
  readonly uuids?: readonly string[];
}

/** A set of emulated VMs. */
export interface Simulator {
  readonly vms: readonly EmulatedVm[];
  start(): void;
  stop(): Promise<void>;
  /** Runs `action` on every VM at once and returns one outcome per VM. */
  runAction(action: VmAction): Promise<Array<UnhookOutcome & { readonly vm: string }>>;
}

/** Creates `vms` emulated VMs pointed at one tool endpoint. */
export function createSimulator(options: SimulatorOptions): Simulator {
  const count = options.vms ?? 1;
  const vms = Array.from({ length: count }, (_, i) =>
    createEmulatedVm(options.endpoint, {
      ...options,
      name: `${options.namePrefix ?? "emu"}-${i}`,
      ...(options.uuids?.[i] !== undefined && { uuid: options.uuids[i] }),
      seed: (options.seed ?? 1) + i,
    }),
  );
  return {
    vms,
    start: () => vms.forEach((vm) => vm.start()),
    stop: async () => {
      await Promise.all(vms.map((vm) => vm.stop()));
    },
    runAction: (action) =>
      Promise.all(vms.map(async (vm) => ({ vm: vm.uuid, ...(await vm.runAction(action)) }))),
  };
}
