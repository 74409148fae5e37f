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
import { KNOWN_DIALECTS, v9 } from "@kvmi/kvm-bridge/wire";
import type { Dialect } from "@kvmi/kvm-bridge/wire";
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

/** A command or event spec of a table, reduced to what the allow lists need. */
interface Named {
  readonly id: number;
  readonly name: string;
  /** `op` of a command, `kind` of an event: how the same message is found in another dialect. */
  readonly key: string;
}

function namedOf(dialect: Dialect, kind: "command" | "event"): Named[] {
  return kind === "command" ? dialect.commands.map((c) => ({ id: c.id, name: c.name, key: c.op })) : dialect.events.map((e) => ({ id: e.id, name: e.name, key: e.kind }));
}

/**
 * Turns command or event names into the wire ids of `dialect` (the one the VM's QEMU speaks: the
 * ids QEMU passes to KVM_INTROSPECTION_COMMAND/EVENT are that dialect's, docs/protocol/): kernel
 * names (`KVMI_VM_READ_PHYSICAL`, `KVMI_EVENT_PF`), the same without the prefix in any case
 * (`vm_read_physical`, `pf`) and decimal ids are accepted. A name of another dialect stands for the
 * same command or event in this one (v9's `KVMI_VM_READ_PHYSICAL` is kvmi-v7's `KVMI_READ_PHYSICAL`),
 * so one allow list works whatever the dialect; one the dialect lacks is an error that says so.
 * Duplicates are dropped, order kept. Event lists always get the UNHOOK event: without it QEMU
 * cannot warn the bridge before a pause or migration (docs/protocol/README.md, "Unhook") and the
 * bridge could not undo its hooks in time.
 */
export function resolveKvmiIds(kind: "command" | "event", items: readonly string[], dialect: Dialect = v9): ResolvedIds {
  const own = namedOf(dialect, kind);
  const prefix = kind === "command" ? "KVMI_" : "KVMI_EVENT_";
  const unhook = own.find((e) => e.key === "UNHOOK");
  const ids: number[] = kind === "event" && unhook !== undefined ? [unhook.id] : [];
  const unknown: string[] = [];
  const missing: string[] = [];
  for (const item of items) {
    const text = item.trim();
    const upper = text.toUpperCase();
    const named = (e: Named): boolean => e.name === upper || e.name === `${prefix}${upper}`;
    let spec = /^\d+$/.test(text) ? own.find((e) => e.id === Number(text)) : own.find(named);
    if (spec === undefined && !/^\d+$/.test(text)) {
      // Another dialect's name for it: the same op or kind in this dialect.
      const key = KNOWN_DIALECTS.flatMap((d) => namedOf(d, kind)).find(named)?.key;
      spec = key === undefined ? undefined : own.find((e) => e.key === key);
      if (key !== undefined && spec === undefined) {
        missing.push(text);
        continue;
      }
    }
    if (spec === undefined) unknown.push(text);
    else if (!ids.includes(spec.id)) ids.push(spec.id);
  }
  const errors: string[] = [];
  if (missing.length > 0) {
    errors.push(`${missing.map((u) => JSON.stringify(u)).join(", ")} ${missing.length > 1 ? "are" : "is"} not in KVMI ${dialect.name}`);
  }
  if (unknown.length > 0) {
    errors.push(
      `unknown KVMI ${kind}${unknown.length > 1 ? "s" : ""} ${unknown.map((u) => JSON.stringify(u)).join(", ")} ` +
        `(${dialect.name} ${kind}s: ${own.map((e) => e.name).join(", ")})`,
    );
  }
  return errors.length > 0 ? { ok: false, error: errors.join("; ") } : { ok: true, ids };
}
