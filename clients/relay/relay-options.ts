// SPDX-License-Identifier: Apache-2.0
/**
 * What the relay is asked to do and how it reports its end: the options of {@link runRelay} and
 * its result. Kept apart from relay.ts (the entry point) and relay-connection.ts (the per-connection
 * protocol) so both can name them without importing each other.
 */
import type { BridgeClient, SessionRole } from "@kvmi/clients";
import type { Dialect } from "@kvmi/kvm-bridge/codec";

/** Where the relay reports what happens (one line each). */
export interface RelayLogger {
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
}

export interface RelayOptions {
  readonly client: BridgeClient;
  /** UUID, `vms/UUID` or display name of the remote VM. */
  readonly vm: string;
  /** The tool's listening UNIX socket. */
  readonly toolPath: string;
  /** The dialect the tool speaks (the kernel the relay plays). */
  readonly dialect: Dialect;
  readonly role?: SessionRole;
  /** When given, the tool's cookie hash must match it (QEMU's `key` secret). */
  readonly secret?: Uint8Array;
  /** Event reply deadline asked of the bridge (it answers a vCPU the tool leaves waiting). */
  readonly eventDeadlineMs?: number;
  /** Re-attach after the session is lost (bridge restart) and keep the tool's socket open. */
  readonly reconnect?: boolean;
  /** How long to keep trying to re-attach before closing the tool's socket; default 60 s. */
  readonly reconnectWindowMs?: number;
  readonly log?: RelayLogger;
  readonly signal?: AbortSignal;
}

/** Why the relay stopped. */
export type RelayEnd = "tool-closed" | "session-ended" | "protocol-error" | "aborted";

export interface RelayResult {
  readonly end: RelayEnd;
  readonly reason: string;
}
