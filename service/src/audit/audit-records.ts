// SPDX-License-Identifier: Apache-2.0
/**
 * The audit records of the RPC layer, shaped in one place: who (identity, its source, peer), what
 * (command or action), where (VM, vCPU), the arguments as sizes, addresses and digests, and the
 * outcome. Guest memory and register values never appear: written bytes become their SHA-256,
 * register sets the names of the registers set plus a digest of their values.
 */
import { createHash } from "node:crypto";
import type { Principal } from "../auth/identity.js";
import { mapError } from "../mapping/status.js";
import type { AuditTrail } from "./audit-log.js";

/** Array items kept per field (SetPageAccess entries…); the count is always recorded. */
const MAX_ITEMS = 64;
/** Proto messages whose fields are register values. */
const REGISTER_MESSAGES: ReadonlySet<string> = new Set(["kvmi.v1.Regs"]);

function sha256(bytes: Uint8Array | string): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/** A register message: the names of the registers that are set, and a digest of the values. */
function registerSet(message: Record<string, unknown>): { registers: string[]; sha256: string } {
  const set = Object.entries(message).filter(([key, value]) => !key.startsWith("$") && value !== 0n && value !== 0 && value !== undefined);
  return { registers: set.map(([key]) => key), sha256: sha256(JSON.stringify(set, (_k, v: unknown) => (typeof v === "bigint" ? v.toString() : v))) };
}

/** A request's arguments for the record (resource names dropped: the record has vm/vcpu). */
export function summarizeArguments(value: unknown, depth = 0): unknown {
  if (typeof value === "bigint") return `0x${value.toString(16)}`;
  if (value instanceof Uint8Array) return { bytes: value.length, sha256: sha256(value) };
  if (Array.isArray(value)) {
    const items = value.slice(0, MAX_ITEMS).map((item) => summarizeArguments(item, depth + 1));
    return value.length > MAX_ITEMS ? { count: value.length, first: items } : items;
  }
  if (value !== null && typeof value === "object") {
    const message = value as Record<string, unknown>;
    if (typeof message["$typeName"] === "string" && REGISTER_MESSAGES.has(message["$typeName"])) return registerSet(message);
    if (depth > 3) return "…";
    const out: Record<string, unknown> = {};
    for (const [key, field] of Object.entries(message)) {
      if (key.startsWith("$") || (depth === 0 && (key === "vm" || key === "name"))) continue;
      out[key] = summarizeArguments(field, depth + 1);
    }
    return out;
  }
  return value;
}

/** The who of a record. */
export function who(principal: Principal | undefined): Record<string, string> {
  if (principal === undefined) return { identity: "bridge" };
  return { identity: principal.identity.name, source: principal.identity.source, peer: principal.peer };
}

/** The outcome of an action: `ok`, or the status reason it failed with (ErrorInfo.reason). */
export function outcome(error: unknown): { result: string } {
  return error === undefined ? { result: "ok" } : { result: mapError(error).reason };
}

/** Records one command that changes the guest. */
export function auditCommand(
  audit: AuditTrail,
  entry: {
    readonly command: string;
    readonly vm: string;
    readonly vcpu: number | undefined;
    readonly request: unknown;
    readonly caller: { readonly principal?: Principal | undefined; readonly sessionId?: string | undefined };
    readonly error?: unknown;
  },
): void {
  if (!audit.enabled) return;
  audit.record({
    action: "command",
    ...who(entry.caller.principal),
    command: entry.command,
    vm: entry.vm,
    ...(entry.vcpu !== undefined && { vcpu: entry.vcpu }),
    ...(entry.caller.sessionId !== undefined && { session: entry.caller.sessionId }),
    args: summarizeArguments(entry.request),
    ...outcome(entry.error),
  });
}
