// SPDX-License-Identifier: Apache-2.0
/**
 * The shape of a dialect table (conventions §4; docs/decisions/0010-dialect-model.md): one file per
 * kernel dialect lists every message id and every event id with its layouts, its event framing, its
 * kernel limits and its ioctl numbers. v9 is `dialects/v9.ts`, v12 `dialects/v12.ts`, the libkvmi
 * product dialect `dialects/kvmi-v7.ts` (docs/protocol/). Everything else reads these tables and
 * looks commands up by `op` and events by `kind`; nothing outside them branches on a dialect's name.
 */
import { KvmiNotInDialectError } from "../errors.js";
import type { Layout, LayoutValue, ScalarType } from "./layout.js";
import type { CommandOp, EventKind } from "./ops.js";

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
  /** The dialect-neutral key (docs/decisions/0010-dialect-model.md). */
  readonly op: CommandOp;
  /** Wire message id. */
  readonly id: number;
  /** Kernel name, e.g. `KVMI_VM_READ_PHYSICAL`. */
  readonly name: string;
  /** `vcpu` when the request starts with `kvmi_vcpu_hdr`. */
  readonly scope: "vm" | "vcpu";
  /**
   * For a VM-scoped command that still targets one vCPU, the request field holding its index
   * (v12 `KVMI_VM_PAUSE_VCPU.vcpu`). The encoder fills it from the `vcpu` argument and the decoder
   * reports it as `vcpu`, so callers address the vCPU the same way in every dialect.
   */
  readonly vcpuField?: string;
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
  /** The dialect-neutral key (docs/decisions/0010-dialect-model.md). */
  readonly kind: EventKind;
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

/**
 * How events and event replies are framed (docs/protocol/): which message ids they use and which
 * structs carry the event id, the vCPU and its state.
 * - v9: events and replies on id 0; `kvmi_event` (with the u8 event id) first, for VM events too.
 * - v12: VM events on id 0, vCPU events and replies on id 1; `kvmi_event_hdr` (u16 event id) first,
 *   then `kvmi_vcpu_event` for vCPU events only.
 * - kvmi-v7: events on id 1 with v9's `kvmi_event`, replies on id 0.
 */
export interface EventFraming {
  /** Message id of VM-scoped events (UNHOOK). */
  readonly vmEventMessageId: number;
  /** Message id of vCPU-scoped events. */
  readonly vcpuEventMessageId: number;
  /** Message id of event replies (tool -> kernel), and of the kernel's error reply to a bad one. */
  readonly replyMessageId: number;
  /** VM events carry the common part (`layouts.event`, vcpu 0 and a zeroed arch) as in v9. */
  readonly vmEventsCarryCommon: boolean;
}

/** Kernel limits the codec, the emulator and the bridge's pre-checks share (docs/protocol/). */
export interface DialectLimits {
  /** READ/WRITE_PHYSICAL stay within one page: `size` is 1..this. */
  readonly maxPhysicalBytes: number;
  /** SET_PAGE_ACCESS entries in one message (the message must fit KVMI_MSG_SIZE). */
  readonly maxPageAccessEntries: number;
  /** MSRs in one GET_REGISTERS (the reply must fit KVMI_MSG_SIZE). */
  readonly maxGetRegistersMsrs: number;
  /** SET_XSAVE accepts at most this many bytes (`struct kvm_xsave`). */
  readonly maxXsaveBytes: number;
  /** Pause requests that may be pending before PAUSE_VCPU answers EBUSY; null when not known. */
  readonly maxPendingPauses: number | null;
}

/** The five VM ioctls' command numbers and the capability that announces KVMI (kvmi-abi §1.2, §1.5). */
export interface DialectIoctls {
  readonly hook: number;
  readonly unhook: number;
  readonly command: number;
  readonly event: number;
  readonly preunhook: number;
  /** KVM_CAP_INTROSPECTION numbers kernels of this dialect use (kvmi-v7 has two QEMU generations). */
  readonly capIntrospection: readonly number[];
}

/** A complete dialect table. */
export interface Dialect {
  /** `v9`, `v12`, `kvmi-v7`: for logs, errors and the `Vm` resource, never for branching. */
  readonly name: string;
  /** What KVMI_GET_VERSION reports and KVM_CHECK_EXTENSION(KVM_CAP_INTROSPECTION) returns. */
  readonly kvmiVersion: number;
  /** KVMI_MSG_SIZE: the largest body after `kvmi_msg_hdr`. */
  readonly maxMessageBytes: number;
  /** Event and event-reply framing. */
  readonly eventFraming: EventFraming;
  /** Bounds of the allow masks: command ids < numMessages, event ids < numEvents (kvmi-abi §2.4, §9). */
  readonly numMessages: number;
  readonly numEvents: number;
  readonly layouts: {
    readonly msgHdr: Layout;
    readonly errorCode: Layout;
    readonly vcpuHdr: Layout;
    /** Header before every event that carries the event id (v12 `kvmi_event_hdr`), or null. */
    readonly eventHdr: Layout | null;
    /**
     * The common part of a vCPU event: `size`, `vcpu`, `arch` and, when `eventHdr` is null, the
     * event id as `event` (v9/kvmi-v7 `kvmi_event`, v12 `kvmi_vcpu_event`).
     */
    readonly event: Layout;
    readonly eventReply: Layout;
  };
  readonly limits: DialectLimits;
  readonly ioctls: DialectIoctls;
  /**
   * The command that turns command replies off and on (kvmi-v7 CONTROL_CMD_RESPONSE), or null when
   * every command is answered.
   */
  readonly replyControlOp: CommandOp | null;
  readonly commands: readonly CommandSpec[];
  readonly events: readonly EventSpec[];
}

interface DialectIndex {
  readonly commands: ReadonlyMap<number, CommandSpec>;
  readonly commandsByName: ReadonlyMap<string, CommandSpec>;
  readonly commandsByOp: ReadonlyMap<CommandOp, CommandSpec>;
  readonly events: ReadonlyMap<number, EventSpec>;
  readonly eventsByKind: ReadonlyMap<EventKind, EventSpec>;
}
const indexes = new WeakMap<Dialect, DialectIndex>();

function indexOf(dialect: Dialect): DialectIndex {
  let index = indexes.get(dialect);
  if (index === undefined) {
    index = {
      commands: new Map(dialect.commands.map((c) => [c.id, c])),
      commandsByName: new Map(dialect.commands.map((c) => [c.name, c])),
      commandsByOp: new Map(dialect.commands.map((c) => [c.op, c])),
      events: new Map(dialect.events.map((e) => [e.id, e])),
      eventsByKind: new Map(dialect.events.map((e) => [e.kind, e])),
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

/** The command with dialect-neutral key `op`, or undefined when the dialect has no such command. */
export function commandByOp(dialect: Dialect, op: CommandOp): CommandSpec | undefined {
  return indexOf(dialect).commandsByOp.get(op);
}

/** The event of kind `kind`, or undefined when the dialect has no such event. */
export function eventByKind(dialect: Dialect, kind: EventKind): EventSpec | undefined {
  return indexOf(dialect).eventsByKind.get(kind);
}


/**
 * The command with key `op`.
 * @throws KvmiNotInDialectError (a KvmiUnsupportedError) naming the dialect when it has none.
 */
export function requireCommand(dialect: Dialect, op: CommandOp): CommandSpec {
  const spec = commandByOp(dialect, op);
  if (spec === undefined) throw new KvmiNotInDialectError(dialect.name, op, "command");
  return spec;
}

/**
 * The event of kind `kind`.
 * @throws KvmiNotInDialectError (a KvmiUnsupportedError) naming the dialect when it has none.
 */
export function requireEvent(dialect: Dialect, kind: EventKind): EventSpec {
  const spec = eventByKind(dialect, kind);
  if (spec === undefined) throw new KvmiNotInDialectError(dialect.name, kind, "event");
  return spec;
}
