// SPDX-License-Identifier: Apache-2.0
/**
 * The end of introspection for one VM (kvmi-abi §2.6 step 4): announce the unhook with a grace
 * deadline, let the controller clean up and release, then undo what is left in the hook ledger,
 * answer what is still pending and close the KVMI socket; and, however the socket closes, end
 * every session.
 *
 * Apart from vm-host.ts because it is one state machine (hooked → unhook pending → releasing →
 * closed) with its own timer and promise, entered from three places (the kernel's UNHOOK event,
 * ReleaseVm, bridge shutdown) and read by the rest of the host only through `announced` and
 * VmHostState.releasing.
 */
import type { KvmiTransportError } from "@kvmi/kvm-bridge";
import type { UndoReport } from "./hook-ledger.js";
import type { VmEvents } from "./vm-events.js";
import { attachedSessions } from "./vm-host-types.js";
import type { UnhookCause, VmParts } from "./vm-host-types.js";

const UNHOOK_CAUSES: Readonly<Record<UnhookCause, string>> = {
  "device-manager": "the device manager is unhooking the VM (pause, suspend, migrate or shutdown)",
  operator: "an operator released the VM",
  "bridge-shutdown": "the bridge is shutting down",
};

/** The unhook flow of one VM, from the announcement to the closed socket. */
export class VmUnhook {
  private unhook:
    | { readonly started: bigint; readonly timer: NodeJS.Timeout; readonly done: Promise<void>; readonly finish: () => void }
    | undefined;

  constructor(private readonly vm: VmParts, private readonly events: VmEvents) {}

  /** True once an unhook is announced: no session may attach any more. */
  get announced(): boolean {
    return this.unhook !== undefined;
  }

  /** See VmHost.release. */
  release(cause: UnhookCause, graceMs?: number): Promise<void> {
    this.start(cause, graceMs);
    return this.unhook?.done ?? Promise.resolve();
  }

  /** Announces the unhook to every session and starts its grace; nothing when one is under way or the socket is closed. */
  start(cause: UnhookCause, graceMs = this.vm.options.unhookDeadlineMs): void {
    if (this.unhook !== undefined || !this.vm.channel.isOpen) return;
    const deadline = new Date(Date.now() + graceMs);
    let finish!: () => void;
    const finished = new Promise<void>((resolve) => (finish = resolve));
    const timer = setTimeout(finish, graceMs);
    const started = process.hrtime.bigint();
    const done = finished.then(() => this.complete(cause, started));
    this.unhook = { started, timer, done, finish };
    this.vm.registry.update(this.vm.uuid, { state: "unhook-pending", unhookDeadline: deadline });
    this.vm.log.info({ reason: UNHOOK_CAUSES[cause], deadline: deadline.toISOString() }, "unhook pending");
    this.events.flushNotices(); // the notifications of events before the unhook come before its notice
    for (const session of attachedSessions(this.vm.state)) session.sink.unhook(deadline, cause);
    if (this.vm.state.controller === undefined) finish();
  }

  /** Ends the grace at once (the controller left during it): the bridge releases the VM now. */
  endGrace(): void {
    this.unhook?.finish();
  }

  private async complete(cause: UnhookCause, started: bigint): Promise<void> {
    // The metric label of the bridge's own replies while it releases the VM.
    const reason = cause === "bridge-shutdown" ? "shutdown" : "unhook";
    this.vm.state.releasing = reason;
    clearTimeout(this.unhook?.timer);
    if (this.vm.channel.isOpen) this.vm.registry.update(this.vm.uuid, { state: "releasing" });
    if (this.vm.channel.isOpen) await this.undoLedger();
    await this.events.answerAll(reason);
    this.vm.channel.close("introspection released");
    this.vm.options.metrics?.unhookToClose(Number(process.hrtime.bigint() - started) / 1e9);
  }

  /** Undoes the controller's hooks that are still in the ledger (unhook, or the controller gone under the `release` policy). */
  async undoLedger(): Promise<UndoReport | undefined> {
    if (this.vm.ledger.isEmpty) return undefined;
    const report = await this.vm.ledger.undo(this.vm.channel, this.vm.options.undoTimeoutMs ?? 2000);
    this.vm.log.info({ ...report }, "undid the controller's hooks");
    return report;
  }

  /** The KVMI socket closed, for whatever reason: every session is over. */
  onClosed(err: KvmiTransportError): void {
    this.events.closed();
    if (this.unhook !== undefined) clearTimeout(this.unhook.timer);
    this.unhook?.finish();
    const sessions = attachedSessions(this.vm.state);
    this.vm.state.controller = undefined;
    this.vm.state.observers.clear();
    for (const session of sessions) session.sink.end(err);
  }
}
