// SPDX-License-Identifier: Apache-2.0
/**
 * Embedded mode: the bridge's own emulated VMs, connected to its first KVMI endpoint exactly as
 * QEMU would connect (handshake, cookie, hook). No mainline kernel carries KVMI, so this is what
 * `npm start` serves.
 */
import type { Logger } from "@kvmi/kvm-bridge";
import { createSimulator, parseEndpoint } from "@kvmi/kvm-bridge/emulator";
import { dialectByName } from "@kvmi/kvm-bridge/wire";
import type { KvmiEndpoint, Simulator } from "@kvmi/kvm-bridge/emulator";
import type { BridgeConfig } from "./config/index.js";

/** Turns a listener address (`unix:PATH`, `tcp:HOST:PORT`) into the endpoint the emulator dials. */
function endpointOf(address: string): KvmiEndpoint {
  const endpoint = parseEndpoint(address);
  if (endpoint === undefined) throw new Error(`cannot dial KVMI address ${address}`);
  return endpoint;
}

/** Starts `embeddedVms` emulated VMs running the built-in workload against `address`. */
export function startEmbeddedVms(
  config: BridgeConfig,
  endpoint: { readonly address: string; readonly dialect: string },
  logger: Logger,
  secret?: Uint8Array,
): Simulator {
  const simulator = createSimulator({
    endpoint: endpointOf(endpoint.address),
    // The emulated kernels speak the dialect of the listener they connect to.
    dialect: dialectByName(endpoint.dialect),
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
