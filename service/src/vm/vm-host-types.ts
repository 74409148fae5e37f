// SPDX-License-Identifier: Apache-2.0
/**
 * The types of one hooked VM's host: what its callers see (sessions and their sinks, options,
 * metrics) and the state VmHost shares with the two modules it delegates to (vm-events.ts,
 * vm-unhook.ts).
 *
 * Apart from vm-host.ts so that those modules never import vm-host.ts, which imports them.
 * Callers keep importing the public ones from vm-host.ts, which re-exports them.
 */
import type { KvmiChannel, KvmiEvent, Logger, VmRegistry } from "@kvmi/kvm-bridge";
import type { AutoReplyReason } from "../metrics/index.js";
import type { HookLedger } from "./hook-ledger.js";
import type { LedgerJournals } from "./ledger-journal.js";

/** The owner of sessions attached without one: the identity of loopback plaintext callers. */
export const DEFAULT_OWNER = "local:local";

/** Why the bridge answered an event itself (a metric label). */
export type { AutoReplyReason };

/** Counters and timings the host reports (implemented with prom-client by the caller). */
export interface VmHostMetrics {
  /** One command sent on the socket; `error` is what it failed with, undefined when it succeeded. */
  command(name: string, error: unknown, seconds: number): void;
  /**
   * A burst of commands written at once (commandBatch): `ok` of them succeeded, `errors` are what
   * the others failed with; `seconds` is the burst's duration. Without it, each command is reported
   * through {@link command} with that duration.
   */
  commandBurst?(name: string, ok: number, errors: readonly unknown[], seconds: number): void;
  event(name: string): void;
  eventRoundTrip(name: string, seconds: number): void;
  autoReply(name: string, reason: AutoReplyReason): void;
  unhookToClose(seconds: number): void;
  bytesRead(bytes: number): void;
  /** One event the controller's filter looked at, by what became of it. */
  filterEvent?(name: string, outcome: FilterOutcome): void;
}

/** What became of an event the controller's filter looked at (a metric label). */
export type FilterOutcome = "replied" | "notified" | "delivered" | "unmatched" | "notification_dropped";

/** Tells a session that a rule already answered the event it receives (a notification). */
export interface RuleNotice {
  /** The rule's name. */
  readonly rule: string;
  /** The wire action the bridge sent (KVMI_EVENT_ACTION_*). */
  readonly action: number;
  /** Wall-clock time the reply was written. */
  readonly replyTimeMs: number;
}

/** Why the bridge is closing a VM's KVMI socket. */
export type UnhookCause = "device-manager" | "operator" | "bridge-shutdown";

/** Receives what a session must see. `event` returns false when the client is not keeping up. */
export interface SessionSink {
  /** `notice` is set when a filter rule already answered the event: it expects no reply. */
  event(event: KvmiEvent, replyDeadline: Date | undefined, notice?: RuleNotice): boolean;
  /**
   * True while the session may still answer events (the policy may have changed since attach): a
   * rule answers only then, as a client's reply is authorized per reply. Absent: always.
   */
  mayAnswer?(): boolean;
  unhook(deadline: Date, cause: UnhookCause): void;
  /** The VM's socket closed or the VM hooked again: the session is over. */
  end(error: Error): void;
}

/** A client attached to the VM. */
export interface Session {
  readonly id: string;
  readonly role: "controller" | "observer";
  readonly eventDeadlineMs: number | undefined;
  /**
   * The identity that attached (auth/access-control.ts identityKey). A controller's session id
   * authorizes nothing by itself: commands under it must come from this identity too.
   */
  readonly owner: string;
}

/** Options of a VmHost. */
export interface VmHostOptions {
  /** Default event reply deadline. */
  readonly eventDeadlineMs: number;
  /** Per-event overrides by kernel name (`KVMI_EVENT_CR`). */
  readonly eventDeadlines?: Readonly<Record<string, number>>;
  /** What the controller gets after UNHOOK (and on release/shutdown) before the bridge undoes hooks. */
  readonly unhookDeadlineMs: number;
  /** What happens to hooks when the controller goes away without an unhook. */
  readonly controllerGonePolicy: "release" | "keep";
  /** Deadline of the bridge's own undo commands. */
  readonly undoTimeoutMs?: number;
  readonly logger: Logger;
  readonly metrics?: VmHostMetrics;
  /** Journals the ledger on disk before each change (`--state-dir`); in memory only when absent. */
  readonly journals?: LedgerJournals | undefined;
}

// ---------------------------------------------------------------------------------------------
// Shared by VmHost, VmEvents and VmUnhook; not part of the host's API.

/** @internal A session with the sink its events, notices and unhook go to. */
export interface Attached extends Session {
  readonly sink: SessionSink;
}

/**
 * @internal What VmHost, VmEvents and VmUnhook share of one VM. VmHost attaches and detaches
 * sessions, VmEvents delivers to them, VmUnhook announces the unhook to them and ends them when
 * the socket closes. One plain object, so the event path reads the current values with a field
 * load, not a call.
 */
export interface VmHostState {
  controller: Attached | undefined;
  readonly observers: Map<string, Attached>;
  /**
   * Set once the unhook's grace is over and the bridge undoes hooks and closes the socket: from
   * then on the bridge answers every event itself, and this is the metric label of those replies.
   */
  releasing: Extract<AutoReplyReason, "unhook" | "shutdown"> | undefined;
}

/**
 * @internal What VmHost gives VmEvents and VmUnhook of one VM: the shared state and the objects it
 * owns for the VM, as one object instead of the same seven constructor parameters each.
 */
export interface VmParts {
  readonly state: VmHostState;
  readonly uuid: string;
  readonly registry: VmRegistry;
  readonly channel: KvmiChannel;
  readonly ledger: HookLedger;
  readonly options: VmHostOptions;
  readonly log: Logger;
}

/** @internal The sessions attached now, controller first. */
export function attachedSessions(state: VmHostState): Attached[] {
  return [...(state.controller ? [state.controller] : []), ...state.observers.values()];
}
