// SPDX-License-Identifier: Apache-2.0
/**
 * What a session's `events()` yields: vCPU events that carry their own reply methods (only the
 * actions the event type accepts, kvmi-abi §3.5 and event.proto), unhook notices with their
 * deadline, VM changes and rejected replies.
 *
 * @see ../../proto/kvmi/v1/event.proto
 */
import { create } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { CpuMode, EventAction, EventArchSchema, EventMsrsSchema, RegsSchema, SregsSchema, UnhookReason } from "@kvmi/proto";
import type { DescriptorType, Event, EventFilterSummary, EventMsrs, EventType, Regs, Sregs, UnhookNotice as UnhookNoticeMessage, VmChange } from "@kvmi/proto";
import type { X86Regs } from "./command-types.js";
import { FailedPreconditionError, StatusCode } from "./errors.js";
import type { KvmiBridgeError } from "./errors.js";

/** The vCPU state captured when an event fired (`struct kvmi_event_arch`). */
export interface EventArchState {
  readonly mode: CpuMode;
  readonly regs: Regs;
  readonly sregs: Sregs;
  readonly msrs: EventMsrs;
}

/** How a filter rule answered an event before it was delivered (Event.notification). */
export interface EventNotice {
  /** The rule's name. */
  readonly rule: string;
  /** The action the bridge sent to the kernel. */
  readonly action: EventAction;
  /** When the bridge wrote the reply. */
  readonly replyTime: Date | undefined;
}

/** Options of `continue()` and `retry()`. */
export interface ReplyOptions {
  /** Replaces all 18 general purpose registers before the reply (e.g. `{ ...event.arch.regs, rip }`). */
  readonly registers?: X86Regs;
}

/** Options of `continue()` on CR and MSR events. */
export interface ContinueWithValueOptions extends ReplyOptions {
  /** The value the register receives; the guest's `newValue` when absent. Pass `oldValue` to block the write. */
  readonly newVal?: bigint;
}

/** Fields and replies every vCPU event has. */
export interface VcpuEventBase {
  /** Discriminates session items. */
  readonly kind: "event";
  /** The VM's UUID. */
  readonly vm: string;
  /** The vCPU index. */
  readonly vcpu: number;
  /** The kernel's event sequence number (per connection). */
  readonly seq: number;
  /** The vCPU state when the event fired. */
  readonly arch: EventArchState;
  /** When the bridge answers CONTINUE by itself; `undefined` on an observer's copy. */
  readonly replyDeadline: Date | undefined;
  /** When the bridge read the event from the KVMI socket. */
  readonly receiveTime: Date | undefined;
  /** True once a reply was sent from this client, and from the start for a notification. */
  readonly answered: boolean;
  /**
   * Set when a rule of the session's event filter already answered the event (`notify`, `sample`):
   * the event takes no reply, and its reply methods reject with FailedPreconditionError.
   */
  readonly notification: EventNotice | undefined;
  /** The event as the bridge sent it. */
  readonly message: Event;
  /**
   * Lets the guest carry on (KVMI_EVENT_ACTION_CONTINUE). Resolves when the reply is on the stream;
   * a reply the bridge refuses comes back as a `replyRejected` item of `events()`.
   * @throws PermissionDeniedError on an observer session; FailedPreconditionError if already answered;
   *   SessionClosedError (or the session's error) after the session ended.
   */
  continue(options?: ReplyOptions): Promise<void>;
  /** Kills the VM (KVMI_EVENT_ACTION_CRASH: v9 ends the QEMU process). */
  crash(): Promise<void>;
}

/** Events that also accept RETRY: re-enter the guest without completing the operation (the tool changed RIP, memory or access). */
export interface RetryableEvent {
  /** Re-enters the guest (KVMI_EVENT_ACTION_RETRY). */
  retry(options?: ReplyOptions): Promise<void>;
}

/** A guest INT3 (KVMI_EVENT_BREAKPOINT). CONTINUE re-injects #BP into the guest; RETRY re-executes. */
export interface BreakpointEvent extends VcpuEventBase, RetryableEvent {
  readonly type: "breakpoint";
  /** Guest physical address of the INT3. */
  readonly gpa: bigint;
  /** Instruction length (1 for INT3). */
  readonly insnLen: number;
}

/** An EPT violation on a restricted page (KVMI_EVENT_PF). */
export interface PageFaultEvent extends VcpuEventBase, RetryableEvent {
  readonly type: "pageFault";
  /** Faulting GVA; 0xffffffffffffffff if unknown. */
  readonly gva: bigint;
  readonly gpa: bigint;
  /** The access that faulted: R = 1, W = 2, X = 4. */
  readonly access: number;
}

/** A descriptor-table register access (KVMI_EVENT_DESCRIPTOR). */
export interface DescriptorEvent extends VcpuEventBase, RetryableEvent {
  readonly type: "descriptor";
  readonly descriptor: DescriptorType;
  /** A load (true) rather than a store. */
  readonly write: boolean;
}

/** A write to CR0, CR3 or CR4 selected with `controlCr` (KVMI_EVENT_CR). */
export interface CrEvent extends Omit<VcpuEventBase, "continue"> {
  readonly type: "cr";
  readonly cr: number;
  readonly oldValue: bigint;
  readonly newValue: bigint;
  /** Lets the write happen with `newVal` (default: the guest's `newValue`). */
  continue(options?: ContinueWithValueOptions): Promise<void>;
}

/** A WRMSR to an MSR selected with `controlMsr` (KVMI_EVENT_MSR). */
export interface MsrEvent extends Omit<VcpuEventBase, "continue"> {
  readonly type: "msr";
  readonly msr: number;
  readonly oldValue: bigint;
  readonly newValue: bigint;
  /** Lets the write happen with `newVal` (default: the guest's `newValue`). */
  continue(options?: ContinueWithValueOptions): Promise<void>;
}

/** One single-stepped instruction (KVMI_EVENT_SINGLESTEP). */
export interface SingleStepEvent extends VcpuEventBase {
  readonly type: "singleStep";
  /** The step could not be carried out. */
  readonly failed: boolean;
}

/** The vCPU stopped because of `pauseVcpu` (KVMI_EVENT_PAUSE_VCPU). */
export interface PauseVcpuEvent extends VcpuEventBase {
  readonly type: "pauseVcpu";
}

/** The exception actually injected after `injectException` (KVMI_EVENT_TRAP). */
export interface TrapEvent extends VcpuEventBase {
  readonly type: "trap";
  readonly vector: number;
  readonly errorCode: number;
  /** CR2 for #PF. */
  readonly address: bigint;
}

/** The guest's agent hypercall (KVMI_EVENT_HYPERCALL); arguments are in `arch.regs`. */
export interface HypercallEvent extends VcpuEventBase {
  readonly type: "hypercall";
}

/** XCR0 changed (KVMI_EVENT_XSETBV). */
export interface XsetbvEvent extends VcpuEventBase {
  readonly type: "xsetbv";
  readonly xcr: number;
  readonly oldValue: bigint;
  readonly newValue: bigint;
}

/**
 * The guest is about to execute CPUID (KVMI_EVENT_CPUID; kvmi-v7 VMs only). `continue()` runs it;
 * to answer the leaf yourself, `retry({ registers })` with RAX..RDX set and RIP advanced by
 * `insnLength` (the kernel's reply carries no data).
 */
export interface CpuidEvent extends VcpuEventBase, RetryableEvent {
  readonly type: "cpuid";
  /** The leaf (EAX). */
  readonly function: number;
  /** The sub-leaf (ECX). */
  readonly index: number;
  readonly insnLength: number;
}

/** A vCPU event; switch on `type`. Each carries only the replies its type accepts. */
export type VcpuEvent =
  | CpuidEvent
  | BreakpointEvent
  | PageFaultEvent
  | DescriptorEvent
  | CrEvent
  | MsrEvent
  | SingleStepEvent
  | PauseVcpuEvent
  | TrapEvent
  | HypercallEvent
  | XsetbvEvent;

/** Why the bridge is going to close the VM's KVMI socket. */
export type UnhookCause = "deviceManager" | "operator" | "bridgeShutdown" | "unspecified";

/**
 * The bridge is going to close the VM's KVMI socket (pause, migration, shutdown, ReleaseVm, bridge
 * shutdown). A controller should undo its guest changes and `release()` before `deadline`.
 */
export interface UnhookNotice {
  readonly kind: "unhook";
  /** The VM's UUID. */
  readonly vm: string;
  /** When the bridge undoes what it tracked and closes the socket. */
  readonly deadline: Date | undefined;
  readonly reason: UnhookCause;
}

/** A change of the attached VM (the same data `watchVms` sends). */
export interface VmChangeNotice {
  readonly kind: "vmChange";
  readonly change: VmChange;
}

/** An event reply the bridge did not forward to the kernel; the event stays pending until its deadline or a valid reply. */
export interface ReplyRejectedNotice {
  readonly kind: "replyRejected";
  readonly vcpu: number;
  readonly seq: number;
  readonly error: KvmiBridgeError;
}

/** One rule's counters in a {@link FilterSummaryNotice}. */
export interface RuleCounts {
  readonly name: string;
  readonly event: EventType;
  /** Events the rule matched. */
  readonly matched: bigint;
  /** Matched events the bridge answered and sent to nobody. */
  readonly replied: bigint;
  /** Matched events the bridge answered and sent as notifications. */
  readonly notified: bigint;
  /** Matched events delivered for this session's reply. */
  readonly delivered: bigint;
}

/** The counters of the session's event filter (every `summaryInterval`, and from `setEventFilter`). */
export interface FilterSummaryNotice {
  readonly kind: "filterSummary";
  readonly time: Date | undefined;
  readonly rules: readonly RuleCounts[];
  /** Events no rule matched (delivered). */
  readonly unmatched: bigint;
  /** Notifications the bridge could not send because this session did not read fast enough. */
  readonly notificationsDropped: bigint;
}

/** One item of `Session.events()`; switch on `kind`. */
export type SessionItem = VcpuEvent | UnhookNotice | VmChangeNotice | ReplyRejectedNotice | FilterSummaryNotice;

/** Builds the SDK summary of a proto EventFilterSummary. @internal */
export function toFilterSummary(message: EventFilterSummary): FilterSummaryNotice {
  return {
    kind: "filterSummary",
    time: message.time && timestampDate(message.time),
    rules: message.rules.map((r) => ({ name: r.name, event: r.event, matched: r.matched, replied: r.replied, notified: r.notified, delivered: r.delivered })),
    unmatched: message.unmatched,
    notificationsDropped: message.notificationsDropped,
  };
}

/** Sends an event reply on the session; throws synchronously when it cannot. @internal */
export type EventReplier = (
  event: Event,
  action: EventAction,
  extras: { readonly newVal?: bigint | undefined; readonly registers?: X86Regs | undefined },
) => Promise<void>;

/** Builds the SDK event of a proto Event; `undefined` for payloads this SDK does not know. @internal */
export function toVcpuEvent(vmUuid: string, message: Event, reply: EventReplier): VcpuEvent | undefined {
  const arch = message.arch ?? create(EventArchSchema);
  const notice = message.notification;
  const notification: EventNotice | undefined =
    notice === undefined ? undefined : { rule: notice.rule, action: notice.action, replyTime: notice.replyTime && timestampDate(notice.replyTime) };
  let answered = notification !== undefined;
  const send = async (action: EventAction, extras: { newVal?: bigint | undefined; registers?: X86Regs | undefined } = {}): Promise<void> => {
    if (notification !== undefined) {
      throw new FailedPreconditionError({
        code: StatusCode.FAILED_PRECONDITION,
        message: `event seq ${message.seq} of vCPU ${message.vcpu} is a notification: filter rule ${notification.rule} already answered it`,
        reason: "EVENT_ALREADY_ANSWERED",
      });
    }
    if (answered) {
      throw new FailedPreconditionError({
        code: StatusCode.FAILED_PRECONDITION,
        message: `event seq ${message.seq} of vCPU ${message.vcpu} was already answered`,
        reason: "EVENT_ALREADY_ANSWERED",
      });
    }
    // The replier throws synchronously when it cannot send (observer, closed session).
    const sent = reply(message, action, extras);
    answered = true;
    await sent;
  };
  const base = {
    kind: "event" as const,
    vm: vmUuid,
    vcpu: message.vcpu,
    seq: message.seq,
    arch: {
      mode: arch.mode ?? CpuMode.UNSPECIFIED,
      regs: arch.regs ?? create(RegsSchema),
      sregs: arch.sregs ?? create(SregsSchema),
      msrs: arch.msrs ?? create(EventMsrsSchema),
    },
    replyDeadline: message.replyDeadline && timestampDate(message.replyDeadline),
    receiveTime: message.receiveTime && timestampDate(message.receiveTime),
    get answered() {
      return answered;
    },
    notification,
    message,
    crash: () => send(EventAction.CRASH),
  };
  const cont = (options: ReplyOptions = {}) => send(EventAction.CONTINUE, { registers: options.registers });
  const contValue = (options: ContinueWithValueOptions = {}) =>
    send(EventAction.CONTINUE, { newVal: options.newVal, registers: options.registers });
  const retry = (options: ReplyOptions = {}) => send(EventAction.RETRY, { registers: options.registers });
  const p = message.payload;
  switch (p.case) {
    case "breakpoint":
      return withProps(base, { type: "breakpoint", gpa: p.value.gpa, insnLen: p.value.insnLen, continue: cont, retry });
    case "pageFault":
      return withProps(base, { type: "pageFault", gva: p.value.gva, gpa: p.value.gpa, access: p.value.access, continue: cont, retry });
    case "descriptor":
      return withProps(base, { type: "descriptor", descriptor: p.value.descriptor, write: p.value.write, continue: cont, retry });
    case "cr":
      return withProps(base, { type: "cr", cr: p.value.cr, oldValue: p.value.oldValue, newValue: p.value.newValue, continue: contValue });
    case "msr":
      return withProps(base, { type: "msr", msr: p.value.msr, oldValue: p.value.oldValue, newValue: p.value.newValue, continue: contValue });
    case "singleStep":
      return withProps(base, { type: "singleStep", failed: p.value.failed, continue: cont });
    case "pauseVcpu":
      return withProps(base, { type: "pauseVcpu", continue: cont });
    case "trap":
      return withProps(base, { type: "trap", vector: p.value.vector, errorCode: p.value.errorCode, address: p.value.address, continue: cont });
    case "hypercall":
      return withProps(base, { type: "hypercall", continue: cont });
    case "xsetbv":
      return withProps(base, { type: "xsetbv", xcr: p.value.xcr, oldValue: p.value.oldValue, newValue: p.value.newValue, continue: cont });
    case "cpuid":
      return withProps(base, { type: "cpuid", function: p.value.function, index: p.value.index, insnLength: p.value.insnLength, continue: cont, retry });
    default:
      return undefined;
  }
}

/** Adds `props` to `base` without evaluating its getters (keeps `answered` live). */
function withProps<B extends object, const P extends object>(base: B, props: P): B & P {
  return Object.defineProperties(base, Object.getOwnPropertyDescriptors(props)) as B & P;
}

/** Builds the SDK notice of a proto UnhookNotice. @internal */
export function toUnhookNotice(vmUuid: string, message: UnhookNoticeMessage): UnhookNotice {
  const reasons: Record<number, UnhookCause> = {
    [UnhookReason.DEVICE_MANAGER]: "deviceManager",
    [UnhookReason.OPERATOR]: "operator",
    [UnhookReason.BRIDGE_SHUTDOWN]: "bridgeShutdown",
  };
  return {
    kind: "unhook",
    vm: vmUuid,
    deadline: message.deadline && timestampDate(message.deadline),
    reason: reasons[message.reason] ?? "unspecified",
  };
}
