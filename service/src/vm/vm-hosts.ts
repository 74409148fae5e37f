// SPDX-License-Identifier: Apache-2.0
/**
 * All VMs this bridge serves: admits each device manager that completed the handshake into the
 * registry, keeps one {@link VmHost} per hooked VM (replacing it on re-hook), and resolves a VM
 * UUID for the RPC layer with the right error when it is unknown or not hooked.
 */
import type { AcceptedVm, KvmiChannel, Logger, VmRegistry } from "@kvmi/kvm-bridge";
import { HookLedger } from "./hook-ledger.js";
import { BridgeError, vmNotFound } from "../mapping/bridge-error.js";
import { VmHost } from "./vm-host.js";
import type { VmHostOptions } from "./vm-host.js";

/** Orphaned ledgers kept at most (one per VM whose connection dropped mid-introspection). */
const MAX_ORPHANS = 1024;

/** The hosts of all hooked VMs. */
export class VmHosts {
  private readonly hosts = new Map<string, VmHost>();
  private closing = false;
  /** Channels between handshake and hook-time commands; shutdown closes them too. */
  private readonly admitting = new Set<KvmiChannel>();
  /** Ledgers of connections that dropped with changes in place, by VM UUID. */
  private readonly orphans = new Map<string, { readonly startTime: bigint; readonly ledger: HookLedger }>();

  constructor(
    readonly registry: VmRegistry,
    private readonly options: VmHostOptions,
    private readonly log: Logger,
  ) {}

  /**
   * Admits a VM after its handshake; a failure closes only that connection. If the previous
   * connection of the same boot (same UUID and start time) dropped while a controller's memory
   * writes were in place, they are put back before anyone can attach: v9 never restores guest
   * memory, and a breakpoint left behind would crash the guest.
   */
  async adopt(accepted: AcceptedVm): Promise<VmHost | undefined> {
    if (this.closing) {
      accepted.channel.close("the bridge is shutting down");
      return undefined;
    }
    this.admitting.add(accepted.channel);
    try {
      const { record, channel } = await this.registry.admit(accepted);
      const orphan = this.previousLedger(record.uuid, record.startTime);
      if (orphan !== undefined) {
        const report = await orphan.undo(channel, this.options.undoTimeoutMs ?? 2000);
        this.log.info({ vm: record.uuid, ...report }, "restored what a controller left in guest memory before the connection dropped");
      }
      if (this.closing) {
        channel.close("the bridge is shutting down");
        return undefined;
      }
      const host = new VmHost(this.registry, channel, record, this.options);
      this.hosts.set(record.uuid, host);
      channel.onClose(() => {
        if (this.hosts.get(record.uuid) === host) this.hosts.delete(record.uuid);
        const journal = host.journal;
        if (journal !== undefined) {
          // The journal stays on disk while it may name a change still in the guest.
          if (host.hookLedger.isEmpty && !journal.hasUnsettled) this.options.journals!.discard(record.uuid);
          journal.close().catch((err: unknown) => this.log.warn({ vm: record.uuid, err: (err as Error).message }, "could not close the ledger journal"));
        } else if (!host.hookLedger.isEmpty) {
          this.rememberOrphan(record.uuid, record.startTime, host);
        }
      });
      return host;
    } catch (err) {
      this.log.warn({ vm: accepted.identity.uuid, err: (err as Error).message }, "could not hook the VM");
      accepted.channel.close("hook-time commands failed", err);
      return undefined;
    } finally {
      this.admitting.delete(accepted.channel);
    }
  }

  /**
   * What the previous connection of this VM left to undo: from the journal on disk when journaling
   * is on (it survives a crash, and holds also the changes whose outcome never came back), else from
   * memory. Only for the same boot: after a reboot (another start time) guest memory is new and the
   * kernel's UNHOOK dropped restrictions and interceptions, so there is nothing to undo.
   */
  private previousLedger(uuid: string, startTime: bigint): HookLedger | undefined {
    const journals = this.options.journals;
    if (journals === undefined) {
      const orphan = this.orphans.get(uuid);
      this.orphans.delete(uuid);
      return orphan?.startTime === startTime ? orphan.ledger : undefined;
    }
    const recovered = journals.recover(uuid);
    if (recovered === undefined) return undefined;
    if (recovered.startTime !== startTime) {
      this.log.info({ vm: uuid, journalStartTime: String(recovered.startTime), startTime: String(startTime) }, "the VM rebooted since its ledger journal was written; discarding it");
      journals.discard(uuid);
      return undefined;
    }
    const ledger = HookLedger.fromJournal(recovered.records);
    return ledger.isEmpty ? undefined : ledger;
  }

  private rememberOrphan(uuid: string, startTime: bigint, host: VmHost): void {
    this.orphans.set(uuid, { startTime, ledger: host.hookLedger });
    // Bounded: the oldest orphan is forgotten first (its VM never came back).
    if (this.orphans.size > MAX_ORPHANS) this.orphans.delete(this.orphans.keys().next().value!);
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
    for (const channel of this.admitting) channel.close("the bridge is shutting down");
    await Promise.all(this.all().map((host) => host.release("bridge-shutdown")));
  }
}
