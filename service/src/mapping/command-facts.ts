// SPDX-License-Identifier: Apache-2.0
/**
 * The bridge's facts per KVMI command, in one table: whether it changes the guest (only the
 * controller may send it, and it goes through the hook ledger), whether repeating it is harmless
 * (clients retry it on UNAVAILABLE), and how the bridge undoes it when the controller goes away.
 *
 * The first two come from the `(kvmi.v1.guest_effect)` option of the command's RPC
 * (proto/kvmi/v1/guest_effect.proto), read from the generated descriptor, so the SDK, which reads the
 * same option, cannot disagree with the bridge. How to undo is the bridge's own business and is
 * written here, once; building the table fails at startup if a command that changes the guest has
 * no undo entry, or one that does not has one. Everything else (the controller check in `VmHost`,
 * the ledger's bookkeeping, the SDK's retries) derives from this table.
 *
 * See docs/decisions/0021-command-facts.md.
 */
import { getOption } from "@bufbuild/protobuf";
import type { DescMethod } from "@bufbuild/protobuf";
import { V9_COMMANDS } from "@kvmi/kvm-bridge/wire";
import type { CommandOp, V9CommandName } from "@kvmi/kvm-bridge/wire";
import { guest_effect, GuestEffect, IntrospectionService } from "@kvmi/proto";
import { COMMAND_MAPPINGS } from "./commands.js";
import { DIALECT_COMMAND_MAPPINGS } from "./dialect-commands.js";
import type { AnyDialectCommandMapping } from "./dialect-commands.js";

/**
 * How the hook ledger takes a change back (hook-ledger.ts):
 * - `vm-event`, `vcpu-event`, `cr`, `msr`, `singlestep`: disable what the controller enabled (the
 *   UNHOOK event goes back to enabled, the bridge's baseline);
 * - `page-access`: give the pages back full access (RWX);
 * - `memory`: write back the original bytes, captured before the controller's first write;
 * - `none`: nothing to take back; {@link CommandFacts.undoReason} says why.
 */
export type UndoKind = "vm-event" | "vcpu-event" | "cr" | "msr" | "singlestep" | "page-access" | "memory" | "none";

/** What the bridge knows about one command. */
export interface CommandFacts {
  /** The dialect-neutral op (`READ_PHYSICAL`), the key outside v9's own names. */
  readonly op: CommandOp;
  /** v9's kernel name, or for a command v9 lacks the name in the dialect that has it (`KVMI_GET_PAGE_ACCESS`). */
  readonly command: string;
  /** The IntrospectionService method (and SessionCommand case) of the command. */
  readonly method: string;
  /** The `(kvmi.v1.guest_effect)` of its RPC. */
  readonly effect: GuestEffect;
  /** Changes guest or introspection state: controller only, recorded in the hook ledger. */
  readonly mutating: boolean;
  /** Sending it again leaves the same state: clients may retry it on UNAVAILABLE (AIP-194). */
  readonly idempotent: boolean;
  /** How the ledger undoes it; undefined for commands that change nothing. */
  readonly undo: UndoKind | undefined;
  /** Why a mutating command needs no undo (`undo: "none"`). */
  readonly undoReason?: string;
}

type UndoEntry = UndoKind | { readonly kind: "none"; readonly why: string };

/** How each command that changes the guest is undone. The one per-command fact not in the proto. */
const UNDO: { readonly [N in V9CommandName]?: UndoEntry } = {
  KVMI_VM_CONTROL_EVENTS: "vm-event",
  KVMI_VM_WRITE_PHYSICAL: "memory",
  KVMI_VCPU_CONTROL_EVENTS: "vcpu-event",
  KVMI_VCPU_CONTROL_CR: "cr",
  KVMI_VCPU_CONTROL_MSR: "msr",
  KVMI_VCPU_CONTROL_SINGLESTEP: "singlestep",
  KVMI_VM_SET_PAGE_ACCESS: "page-access",
  KVMI_VCPU_PAUSE: { kind: "none", why: "each pause ends in a PAUSE_VCPU event, which the bridge answers when the controller is gone" },
  KVMI_VCPU_INJECT_EXCEPTION: { kind: "none", why: "the exception is delivered to the guest; there is nothing to take back" },
  KVMI_VCPU_SET_REGISTERS: { kind: "none", why: "the guest runs on from the registers it was given; older values would be wrong by then" },
  KVMI_VCPU_SET_XSAVE: { kind: "none", why: "the guest runs on from the state it was given; an older area would be wrong by then" },
  KVMI_VM_CONTROL_CLEANUP: { kind: "none", why: "it only chooses what the kernel restores at unhook, which the ledger's undo does anyway" },
};

function effectOf(method: DescMethod | undefined): GuestEffect {
  return method === undefined ? GuestEffect.UNSPECIFIED : getOption(method, guest_effect);
}

/**
 * Builds the table from the RPC descriptors and {@link UNDO}.
 * @throws Error when the undo entries and the declared effects disagree (a bug caught at startup).
 */
function buildFacts(): { readonly [N in V9CommandName]: CommandFacts } {
  const facts = {} as Record<V9CommandName, CommandFacts>;
  for (const command of Object.keys(V9_COMMANDS) as V9CommandName[]) {
    const method = COMMAND_MAPPINGS[command].method;
    const effect = effectOf((IntrospectionService.method as Record<string, DescMethod>)[method]);
    const mutating = effect !== GuestEffect.NONE;
    const entry = UNDO[command];
    if (mutating !== (entry !== undefined)) {
      throw new Error(`${command}: its RPC ${method} declares ${GuestEffect[effect]}, but the undo table ${entry === undefined ? "has no entry" : "has one"}`);
    }
    const undo = entry === undefined ? undefined : typeof entry === "string" ? entry : entry.kind;
    facts[command] = {
      op: V9_COMMANDS[command].op,
      command,
      method,
      effect,
      mutating,
      idempotent: effect === GuestEffect.NONE || effect === GuestEffect.IDEMPOTENT,
      undo,
      ...(typeof entry === "object" && { undoReason: entry.why }),
    };
  }
  return facts;
}

/** The facts of every v9 command. */
export const COMMAND_FACTS: { readonly [N in V9CommandName]: CommandFacts } = buildFacts();

/**
 * The facts of the commands v9 lacks that kvmi.v1 has RPCs for (dialect-commands.ts). They are
 * read-only so far, so they need no undo entry; one that changes the guest fails here at startup
 * until it has one and the VM host runs it through the ledger.
 */
function buildDialectFacts(): CommandFacts[] {
  return Object.values<AnyDialectCommandMapping>(DIALECT_COMMAND_MAPPINGS).map((mapping) => {
    const effect = effectOf((IntrospectionService.method as Record<string, DescMethod>)[mapping.method]);
    if (effect !== GuestEffect.NONE) throw new Error(`${mapping.command}: its RPC ${mapping.method} declares ${GuestEffect[effect]}, which needs an undo entry`);
    return { op: mapping.op, command: mapping.command, method: mapping.method, effect, mutating: false, idempotent: true, undo: undefined };
  });
}

/** The facts of every command kvmi.v1 has an RPC for, by dialect-neutral op (KvmiChannel, other dialects). */
export const COMMAND_FACTS_BY_OP: ReadonlyMap<CommandOp, CommandFacts> = new Map(
  [...Object.values(COMMAND_FACTS), ...buildDialectFacts()].map((f) => [f.op, f]),
);

/** Commands that change guest state: controller only (session.proto, SessionCommand). */
export const MUTATING_COMMANDS: ReadonlySet<V9CommandName> = new Set(
  (Object.entries(COMMAND_FACTS) as [V9CommandName, CommandFacts][]).filter(([, f]) => f.mutating).map(([name]) => name),
);
