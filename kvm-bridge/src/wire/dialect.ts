// SPDX-License-Identifier: Apache-2.0
/**
 * The shape of a dialect table (conventions §4): one file per kernel dialect lists every message
 * id and every event id with its layouts. v9 is `dialects/v9.ts`; v10–v12 and the libkvmi
 * "product" dialect (kvmi-abi §1.2–§1.4) are further tables of this same type.
 */
import type { Layout, LayoutValue, ScalarType } from "./layout.js";

/**
 * A variable-length tail after the fixed part of a body: `u32 msrs_idx[nmsrs]`,
 * `kvmi_page_access_entry entries[count]`, `u8 data[size]`, a `u32 region[]` sized by the frame.
 */
export interface TailSpec {
  /** Key of the tail in the decoded value (`msrs_idx`, `entries`, `data`, `region`). */
  readonly name: string;
  /** Element type; `"bytes"` makes the tail a `Uint8Array`. */
  readonly element: ScalarType | Layout | "bytes";
  /**
   * Field of the fixed part holding the element count (dotted for nested structs). Without it the
   * tail runs to the end of the message. The encoder always writes this field from the tail.
   */
  readonly countField?: string;
  /** Largest element count the kernel accepts (reply or request limits, kvmi-abi §4). */
  readonly maxCount?: number;
}

/** A message body: an optional fixed layout followed by an optional tail. */
export interface BodySchema {
  readonly layout: Layout | null;
  readonly tail?: TailSpec;
}

export type TailValue<T extends TailSpec> = T["element"] extends "bytes"
  ? Uint8Array
  : T["element"] extends Layout
    ? LayoutValue<T["element"]>[]
    : T["element"] extends "u64" | "s64"
      ? bigint[]
      : number[];

type FixedValue<B extends BodySchema> = B["layout"] extends Layout ? LayoutValue<B["layout"]> : Record<never, never>;
type TailPart<B extends BodySchema> = B["tail"] extends TailSpec
  ? { [K in B["tail"]["name"]]: TailValue<B["tail"]> }
  : Record<never, never>;
type CountKey<B extends BodySchema> = B["tail"] extends { countField: infer C extends string } ? C : never;

/** The decoded value of a body. */
export type BodyValue<B extends BodySchema> = FixedValue<B> & TailPart<B>;
/** What an encoder needs for a body: like {@link BodyValue}, with the tail's count field optional. */
export type BodyInput<B extends BodySchema> = Omit<FixedValue<B>, CountKey<B>> &
  Partial<Pick<FixedValue<B>, CountKey<B> & keyof FixedValue<B>>> &
  TailPart<B>;

/** Where a command runs in the kernel (kvmi-abi §2.5). */
export type CommandDispatch = "receive-thread" | "vcpu-job";

/** One command of a dialect (kvmi-abi §4). */
export interface CommandSpec {
  /** Wire message id. */
  readonly id: number;
  /** Kernel name, e.g. `KVMI_VM_READ_PHYSICAL`. */
  readonly name: string;
  /** `vcpu` when the request starts with `kvmi_vcpu_hdr`. */
  readonly scope: "vm" | "vcpu";
  /** Receive thread (VM commands, and v9 VCPU_PAUSE) or a job on the target vCPU. */
  readonly dispatch: CommandDispatch;
  /** Body after `kvmi_msg_hdr` (and after `kvmi_vcpu_hdr` for vCPU scope). */
  readonly request: BodySchema;
  /** Reply data after `kvmi_error_code` when `err == 0`. */
  readonly reply: BodySchema;
  /** Allowed at hook time and impossible to disallow one by one (kvmi-abi §9). */
  readonly alwaysAllowed: boolean;
  /**
   * The kernel closes the socket when the request is shorter than its declared tail
   * (kvmi-abi §2.7). Fixed-size requests are zero-extended instead.
   */
  readonly closesOnShortTail: boolean;
}

/** Event actions (kvmi-abi §3.5). */
export const KVMI_EVENT_ACTION_CONTINUE = 0;
export const KVMI_EVENT_ACTION_RETRY = 1;
export const KVMI_EVENT_ACTION_CRASH = 2;
export type EventActionName = "CONTINUE" | "RETRY" | "CRASH";
export const EVENT_ACTION_VALUES: Readonly<Record<EventActionName, number>> = {
  CONTINUE: KVMI_EVENT_ACTION_CONTINUE,
  RETRY: KVMI_EVENT_ACTION_RETRY,
  CRASH: KVMI_EVENT_ACTION_CRASH,
};

/** How an event gets turned on (kvmi-abi §5, §9). */
export type EventEnable =
  | "vm-control-events"
  | "vcpu-control-events"
  /** Only needs to be allowed: requested by VCPU_PAUSE, INJECT_EXCEPTION or CONTROL_SINGLESTEP. */
  | "implicit";

/** One event of a dialect (kvmi-abi §5). */
export interface EventSpec {
  readonly id: number;
  readonly name: string;
  readonly scope: "vm" | "vcpu";
  readonly enable: EventEnable;
  /** Event-specific data after `kvmi_event`; null when there is none. */
  readonly payload: Layout | null;
  /** Reply data after `kvmi_event_reply`; null when there is none. */
  readonly replyData: Layout | null;
  /** Actions the kernel accepts; any other closes the socket (kvmi-abi §2.7). Empty: no reply at all. */
  readonly actions: readonly EventActionName[];
}

/** A complete dialect table. */
export interface Dialect {
  /** `v9`, `v12`, `kvmi-v7`, ... */
  readonly name: string;
  /** What KVMI_GET_VERSION reports and KVM_CHECK_EXTENSION(KVM_CAP_INTROSPECTION) returns. */
  readonly kvmiVersion: number;
  /** KVMI_MSG_SIZE: the largest body after `kvmi_msg_hdr`. */
  readonly maxMessageBytes: number;
  /** Message id of events and event replies. */
  readonly eventMessageId: number;
  /** KVMI_NUM_MESSAGES and KVMI_NUM_EVENTS, the bounds of the allow masks (kvmi-abi §2.4, §9). */
  readonly numMessages: number;
  readonly numEvents: number;
  readonly layouts: {
    readonly msgHdr: Layout;
    readonly errorCode: Layout;
    readonly vcpuHdr: Layout;
    readonly event: Layout;
    readonly eventReply: Layout;
  };
  readonly commands: readonly CommandSpec[];
  readonly events: readonly EventSpec[];
}

interface DialectIndex {
  readonly commands: ReadonlyMap<number, CommandSpec>;
  readonly commandsByName: ReadonlyMap<string, CommandSpec>;
  readonly events: ReadonlyMap<number, EventSpec>;
}
const indexes = new WeakMap<Dialect, DialectIndex>();

function indexOf(dialect: Dialect): DialectIndex {
  let index = indexes.get(dialect);
  if (index === undefined) {
    index = {
      commands: new Map(dialect.commands.map((c) => [c.id, c])),
      commandsByName: new Map(dialect.commands.map((c) => [c.name, c])),
      events: new Map(dialect.events.map((e) => [e.id, e])),
    };
    indexes.set(dialect, index);
  }
  return index;
}

/** The command with wire id `id`, or undefined (the kernel answers such ids with -KVM_ENOSYS). */
export function commandById(dialect: Dialect, id: number): CommandSpec | undefined {
  return indexOf(dialect).commands.get(id);
}

/** The command named `name` (kernel name, e.g. `KVMI_VM_READ_PHYSICAL`), or undefined. */
export function commandByName(dialect: Dialect, name: string): CommandSpec | undefined {
  return indexOf(dialect).commandsByName.get(name);
}

/** The event with id `id`, or undefined. */
export function eventById(dialect: Dialect, id: number): EventSpec | undefined {
  return indexOf(dialect).events.get(id);
}
