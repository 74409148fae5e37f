// SPDX-License-Identifier: Apache-2.0
/**
 * The QEMU arguments that connect a VM's introspection channel to the bridge (kvmi-abi.md §2.1):
 *
 * ```
 * -chardev socket,id=kvmi-bridge-chardev,path=PATH,reconnect=N
 * -object secret,id=kvmi-bridge-secret,file=COOKIE
 * -object introspection,id=kvmi-bridge,chardev=kvmi-bridge-chardev,key=kvmi-bridge-secret
 *         [,command=ID…][,event=ID…],handshake_timeout=S,unhook_timeout=S,async_unhook=on|off
 * ```
 *
 * QEMU refuses an introspection chardev without a non-zero `reconnect`, and lets only one
 * `introspection` object exist. Command and event allow lists repeat the key once per id, as the
 * introspection object's list properties are set; without a list QEMU allows every id (`-1`).
 */
import { v9 } from "@kvmi/kvm-bridge/wire";
import { escapeQemuOptValue } from "./domain-xml.js";
import type { QemuArgPair } from "./domain-xml.js";

/** The `id=` of the chardev we add. */
export const KVMI_CHARDEV_ID = "kvmi-bridge-chardev";
/** The `id=` of the secret object we add. */
export const KVMI_SECRET_ID = "kvmi-bridge-secret";
/** The `id=` of the introspection object we add. */
export const KVMI_OBJECT_ID = "kvmi-bridge";
/** The QOM type of QEMU's introspection object; QEMU accepts only one. */
export const INTROSPECTION_QOM_TYPE = "introspection";

/** What the introspection object is told. Paths are as QEMU (the compute container) sees them. */
export interface IntrospectionArgsOptions {
  /** The bridge's KVMI socket. */
  readonly socketPath: string;
  /** `reconnect=`: seconds between connection attempts, at least 1. */
  readonly reconnectSeconds: number;
  /** The cookie secret file; without it QEMU accepts any tool (and logs a warning). */
  readonly secretFile?: string;
  /** KVMI command ids to allow; all when absent. */
  readonly commands?: readonly number[];
  /** KVMI event ids to allow; all when absent. */
  readonly events?: readonly number[];
  /** `handshake_timeout=` in seconds (QEMU's default is 10). */
  readonly handshakeTimeoutSeconds?: number;
  /** `unhook_timeout=` in seconds (QEMU's default is 60). */
  readonly unhookTimeoutSeconds?: number;
  /** `async_unhook=` (QEMU's default is on). */
  readonly asyncUnhook?: boolean;
}

/** Every option/id {@link introspectionQemuArgs} may add: what `injectQemuArgs` replaces on a re-run. */
export const INTROSPECTION_OWNED_ARGS = [
  { option: "-chardev", id: KVMI_CHARDEV_ID },
  { option: "-object", id: KVMI_SECRET_ID },
  { option: "-object", id: KVMI_OBJECT_ID },
] as const;

/** The `-chardev`, `-object secret` and `-object introspection` pairs, in the order QEMU needs them. */
export function introspectionQemuArgs(options: IntrospectionArgsOptions): QemuArgPair[] {
  const pairs: QemuArgPair[] = [
    {
      option: "-chardev",
      value: `socket,id=${KVMI_CHARDEV_ID},path=${escapeQemuOptValue(options.socketPath)},reconnect=${options.reconnectSeconds}`,
    },
  ];
  const object = [`${INTROSPECTION_QOM_TYPE},id=${KVMI_OBJECT_ID},chardev=${KVMI_CHARDEV_ID}`];
  if (options.secretFile !== undefined) {
    pairs.push({ option: "-object", value: `secret,id=${KVMI_SECRET_ID},file=${escapeQemuOptValue(options.secretFile)}` });
    object.push(`key=${KVMI_SECRET_ID}`);
  }
  for (const id of options.commands ?? []) object.push(`command=${id}`);
  for (const id of options.events ?? []) object.push(`event=${id}`);
  if (options.handshakeTimeoutSeconds !== undefined) object.push(`handshake_timeout=${options.handshakeTimeoutSeconds}`);
  if (options.unhookTimeoutSeconds !== undefined) object.push(`unhook_timeout=${options.unhookTimeoutSeconds}`);
  if (options.asyncUnhook !== undefined) object.push(`async_unhook=${options.asyncUnhook ? "on" : "off"}`);
  pairs.push({ option: "-object", value: object.join(",") });
  return pairs;
}

/** Result of {@link resolveKvmiIds}. */
export type ResolvedIds = { readonly ok: true; readonly ids: number[] } | { readonly ok: false; readonly error: string };

/**
 * Turns command or event names into v9 ids (kvmi-abi.md §4, §5): kernel names
 * (`KVMI_VM_READ_PHYSICAL`, `KVMI_EVENT_PF`), the same without the prefix in any case
 * (`vm_read_physical`, `pf`) and decimal ids are accepted; duplicates are dropped, order kept.
 * Event lists always get KVMI_EVENT_UNHOOK: without it QEMU cannot warn the bridge before a pause
 * or migration (kvmi-abi.md §2.6) and the bridge could not undo its hooks in time.
 */
export function resolveKvmiIds(kind: "command" | "event", items: readonly string[]): ResolvedIds {
  const table = kind === "command" ? v9.commands : v9.events;
  const prefix = kind === "command" ? "KVMI_" : "KVMI_EVENT_";
  const ids: number[] = kind === "event" ? [table.find((e) => e.name === "KVMI_EVENT_UNHOOK")!.id] : [];
  const unknown: string[] = [];
  for (const item of items) {
    const text = item.trim();
    const upper = text.toUpperCase();
    const spec = /^\d+$/.test(text)
      ? table.find((e) => e.id === Number(text))
      : table.find((e) => e.name === upper || e.name === `${prefix}${upper}`);
    if (spec === undefined) unknown.push(text);
    else if (!ids.includes(spec.id)) ids.push(spec.id);
  }
  if (unknown.length > 0) {
    return { ok: false, error: `unknown KVMI ${kind}${unknown.length > 1 ? "s" : ""} ${unknown.map((u) => JSON.stringify(u)).join(", ")} (v9 ${kind}s: ${table.map((e) => e.name).join(", ")})` };
  }
  return { ok: true, ids };
}
