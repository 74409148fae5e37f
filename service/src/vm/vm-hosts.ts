// SPDX-License-Identifier: Apache-2.0
/**
 * All VMs this bridge serves: admits each device manager that completed the handshake into the
 * registry, keeps one {@link VmHost} per hooked VM (replacing it on re-hook), and resolves a VM
 * UUID for the RPC layer with the right error when it is unknown or not hooked.
 */
import type { AcceptedVm, Logger, VmRegistry } from "@kvmi/kvm-bridge";
import { BridgeError, vmNotFound } from "../mapping/bridge-error.js";
import { VmHost } from "./vm-host.js";
import type { VmHostOptions } from "./vm-host.js";

/** The hosts of all hooked VMs. */
export class VmHosts {
  private readonly hosts = new Map<string, VmHost>();
  private closing = false;

  constructor(
    readonly registry: VmRegistry,
    private readonly options: VmHostOptions,
    private readonly log: Logger,
  ) {}

  /** Admits a VM after its handshake; a failure closes only that connection. */
  async adopt(accepted: AcceptedVm): Promise<VmHost | undefined> {
    if (this.closing) {
      accepted.channel.close("the bridge is shutting down");
      return undefined;
    }
    try {
      const { record, channel } = await this.registry.admit(accepted);
      const host = new VmHost(this.registry, channel, record, this.options);
      this.hosts.set(record.uuid, host);
      channel.onClose(() => {
        if (this.hosts.get(record.uuid) === host) this.hosts.delete(record.uuid);
      });
      return host;
    } catch (err) {
      this.log.warn({ vm: accepted.identity.uuid, err: (err as Error).message }, "could not hook the VM");
      accepted.channel.close("hook-time commands failed", err);
      return undefined;
    }
  }

  /** The host of a hooked VM, if any. */
  get(uuid: string): VmHost | undefined {
    return this.hosts.get(uuid);
  }

  /**
   * The host of a VM that accepts commands (hooked, or unhook announced but not yet releasing).
   * @throws BridgeError VM_NOT_FOUND (unknown), VM_UNHOOKING (known, but unhooked or releasing).
   */
  require(uuid: string): VmHost {
    const host = this.hosts.get(uuid);
    if (host?.acceptsCommands === true) return host;
    if (this.registry.get(uuid) === undefined) throw vmNotFound(uuid);
    throw new BridgeError("VM_UNHOOKING", `VM ${uuid} is not hooked right now; retry when it hooks again`, { vm: uuid });
  }

  /** Every hooked VM's host. */
  all(): VmHost[] {
    return [...this.hosts.values()];
  }

  /** Shutdown: stops admitting and releases every VM (controllers get the unhook deadline). */
  async releaseAll(): Promise<void> {
    this.closing = true;
    await Promise.all(this.all().map((host) => host.release("bridge-shutdown")));
  }
}
