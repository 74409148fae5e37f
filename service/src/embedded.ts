// SPDX-License-Identifier: Apache-2.0
/**
 * Embedded mode: the bridge's own emulated VMs, connected to its first KVMI endpoint exactly as
 * QEMU would connect (handshake, cookie, hook). No mainline kernel carries KVMI, so this is what
 * `npm start` serves.
 */
import type { Logger } from "@kvmi/kvm-bridge";
import { createSimulator } from "@kvmi/kvm-bridge/emulator";
import type { KvmiEndpoint, Simulator } from "@kvmi/kvm-bridge/emulator";
import type { BridgeConfig } from "./config/index.js";

/** Turns a listener address (`unix:PATH`, `tcp:HOST:PORT`) into the endpoint the emulator dials. */
export function endpointOf(address: string): KvmiEndpoint {
  if (address.startsWith("unix:")) return { kind: "unix", path: address.slice("unix:".length) };
  const match = /^tcp:(.+):(\d+)$/.exec(address);
  if (match === null) throw new Error(`cannot dial KVMI address ${address}`);
  return { kind: "tcp", host: match[1]!, port: Number(match[2]) };
}

/** Starts `embeddedVms` emulated VMs running the built-in workload against `address`. */
export function startEmbeddedVms(config: BridgeConfig, address: string, logger: Logger, secret?: Uint8Array): Simulator {
  const simulator = createSimulator({
    endpoint: endpointOf(address),
    vms: config.embeddedVms,
    vcpus: config.embeddedVcpus,
    memoryMiB: config.embeddedMemoryMib,
    namePrefix: "demo",
    reconnectMs: 1000,
    // The bridge's own unhook deadline decides; QEMU's default is 60 s.
    unhookTimeoutMs: Math.max(config.unhookDeadlineMs * 2, 1000),
    logger,
    ...(secret && { secret }),
  });
  simulator.start();
  return simulator;
}
