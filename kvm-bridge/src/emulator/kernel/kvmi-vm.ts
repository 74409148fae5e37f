// SPDX-License-Identifier: Apache-2.0
/**
 * The emulated KVMI kernel side of one VM (`struct kvm_introspection`), in any dialect the package
 * has a table for (v9, v12, kvmi-v7): the five VM ioctls as an in-process API, the receive
 * "thread" that reads the tool's messages and dispatches them, the close-on-malformed rules, the
 * reply switch of kvmi-v7 (CONTROL_CMD_RESPONSE) and the release on tool disconnect
 * (docs/protocol/README.md). Command semantics live in `vm-commands.ts` and `vcpu-commands.ts`,
 * keyed by op; nothing here depends on which dialect the table is. The state between HOOK and
 * UNHOOK and the helpers that touch only it are in `hooked-state.ts`; the ioctl argument types in
 * `ioctl-args.ts`.
 */
import { KvmiProtocolError, KvmiRemoteError } from "../../errors.js";
import type { Logger } from "../../logger.js";
import { silentLogger } from "../../logger.js";
import { createFramer } from "../../session/framer.js";
import { zeroValue } from "../../wire/codec.js";
import type { CommandSpec, Dialect } from "../../wire/dialect.js";
import { commandById, eventByKind, requireEvent } from "../../wire/dialect.js";
import { KVM_EFAULT, KVM_EINVAL, KVM_ENOENT, KVM_ENOSYS, KVM_EOPNOTSUPP, KVM_EPERM } from "../../wire/dialects/errno.js";
import { v9 } from "../../wire/dialects/v9.js";
import type { DecodedCommand, MsgHdr } from "../../wire/message.js";
import { decodeCommand, decodeEventReply, encodeEvent, encodeReply } from "../../wire/message.js";
import type { EventKind } from "../../wire/ops.js";
import { describeForeignDialect } from "./foreign-dialect.js";
import type { AllowMasks } from "./allow-masks.js";
import { validateFeature } from "./allow-masks.js";
import type { CommandResult, KernelContext } from "./command-context.js";
import type { GuestPort, HostFeatures } from "./guest-port.js";
import { DEFAULT_HOST_FEATURES, isPromise } from "./guest-port.js";
import type { Hooked } from "./hooked-state.js";
import { checkVcpuTarget, controlReplies, createHooked, fixedRequestBytes, flushAtTickEnd } from "./hooked-state.js";
import type { FeatureArgs, HookArgs, KvmiVmOptions } from "./ioctl-args.js";
import { VCPU_COMMAND_HANDLERS } from "./vcpu-commands.js";
import { VcpuIntrospection } from "./vcpu-introspection.js";
import { VM_COMMAND_HANDLERS } from "./vm-commands.js";

export type { FeatureArgs, HookArgs, KvmiVmOptions } from "./ioctl-args.js";

const EEXIST = 17;
/** How many of a connection's first messages are compared with the other dialects. */
const FOREIGN_DIALECT_PROBE_MESSAGES = 2;

/** The emulated KVMI state of one VM. */
export class KvmiVm implements KernelContext {
  readonly dialect: Dialect;
  readonly features: HostFeatures;
  private readonly log: Logger;
  private readonly introspectionEnabled: boolean;
  private hooked: Hooked | undefined;
  /** vCPUs that still hold leftovers of a failed HOOK (EEXIST until each has run once). */
  private leftovers = new Set<number>();
  /** Frames the receive thread took off the socket, by message id, over every hook (see {@link receivedFrames}). */
  private readonly received = new Map<number, number>();

  constructor(
    readonly guest: GuestPort,
    options: KvmiVmOptions = {},
  ) {
    this.dialect = options.dialect ?? v9;
    this.features = { ...DEFAULT_HOST_FEATURES, ...options.features };
    this.introspectionEnabled = options.introspectionEnabled ?? true;
    this.log = options.logger ?? silentLogger;
  }

  /** True between a successful HOOK and UNHOOK. */
  get isHooked(): boolean {
    return this.hooked !== undefined;
  }

  /**
   * How many whole frames with message id `id` the receive thread has taken off the socket since
   * this VM was created (over every hook), counted before any check or dispatch. An observation
   * point for tests and diagnostics: it tells what really reached the kernel side, independently of
   * anything the tool at the other end reports about itself.
   */
  receivedFrames(id: number): number {
    return this.received.get(id) ?? 0;
  }

  /** The introspection state of vCPU `index` while hooked. */
  vcpu(index: number): VcpuIntrospection | undefined {
    return this.hooked?.vcpus[index];
  }

  // ---------------------------------------------------------------------------------------------
  // ioctls (kvmi-abi §2.4). Failures throw KvmiRemoteError with the Linux errno.

  private fail(ioctl: string, errno: number): never {
    throw new KvmiRemoteError(errno, { command: ioctl });
  }

  private checkModuleParam(ioctl: string): void {
    if (!this.introspectionEnabled) this.fail(ioctl, KVM_EPERM);
  }

  /** KVM_INTROSPECTION_HOOK: takes over the socket and starts the receive thread. */
  hook(args: HookArgs): void {
    const ioctl = "KVM_INTROSPECTION_HOOK";
    this.checkModuleParam(ioctl);
    if (args.padding !== 0) this.fail(ioctl, KVM_EINVAL);
    if (this.hooked !== undefined || this.leftovers.size > 0) this.fail(ioctl, EEXIST);
    if (args.fd === null || args.fd.destroyed) {
      // The per-vCPU state was allocated before the fd lookup failed; each vCPU frees its part
      // the next time it runs (kvmi-abi §8 step 1).
      this.guest.vcpus.forEach((v) => this.leftovers.add(v.index));
      this.fail(ioctl, KVM_EINVAL);
    }
    const socket = args.fd;
    let finishReceive!: () => void;
    const receiveDone = new Promise<void>((resolve) => (finishReceive = resolve));
    const hooked = createHooked(socket, this.dialect, receiveDone);
    this.hooked = hooked;
    hooked.vcpus.push(...this.guest.vcpus.map((port) => new VcpuIntrospection(this.vcpuContext(), port)));
    this.startReceiving(hooked, finishReceive);
    this.log.info({ vcpus: hooked.vcpus.length }, "introspection hooked");
  }

  /** KVM_INTROSPECTION_UNHOOK: shuts the socket, waits for the receive thread, frees everything. */
  async unhook(): Promise<void> {
    this.checkModuleParam("KVM_INTROSPECTION_UNHOOK");
    const hooked = this.hooked;
    if (hooked === undefined) return;
    this.shutdown(hooked, "unhook");
    await hooked.receiveDone;
    this.guest.clearPageAccess();
    // Interceptions are restored to KVM's own preferences only with cleanup enabled (kvmi-abi §2.6);
    // here that means dropping the vCPU masks, which we do either way once the state is freed.
    for (const vcpu of hooked.vcpus) vcpu.dispose();
    this.hooked = undefined;
    this.log.info({ cleanup: hooked.cleanup }, "introspection unhooked");
  }

  /** KVM_INTROSPECTION_COMMAND: allows or disallows a command id (-1 = all). */
  allowCommand(args: FeatureArgs): void {
    const ioctl = "KVM_INTROSPECTION_COMMAND";
    this.checkModuleParam(ioctl);
    if (validateFeature(args.allow, args.id, this.dialect.numMessages) !== 0) this.fail(ioctl, KVM_EINVAL);
    if (this.hooked === undefined) this.fail(ioctl, KVM_EFAULT);
    const result = this.hooked.masks.setCommand(args.allow, args.id);
    if (result !== 0) this.fail(ioctl, result);
  }

  /** KVM_INTROSPECTION_EVENT: allows or disallows an event id (-1 = all). */
  allowEvent(args: FeatureArgs): void {
    const ioctl = "KVM_INTROSPECTION_EVENT";
    this.checkModuleParam(ioctl);
    if (validateFeature(args.allow, args.id, this.dialect.numEvents) !== 0) this.fail(ioctl, KVM_EINVAL);
    if (this.hooked === undefined) this.fail(ioctl, KVM_EFAULT);
    this.hooked.masks.setEvent(args.allow, args.id);
  }

  /** KVM_INTROSPECTION_PREUNHOOK: sends the UNHOOK event if the tool enabled it, else ENOENT. */
  preunhook(): void {
    const ioctl = "KVM_INTROSPECTION_PREUNHOOK";
    this.checkModuleParam(ioctl);
    const hooked = this.hooked;
    if (hooked === undefined) this.fail(ioctl, KVM_EFAULT);
    const unhook = requireEvent(this.dialect, "UNHOOK");
    if (!hooked.vmEvents.has(unhook.id) || !hooked.alive) this.fail(ioctl, KVM_ENOENT);
    const arch = this.zeroArch();
    const sent = this.send(encodeEvent(this.dialect, unhook, ++hooked.eventSeq, 0, arch));
    if (!sent) this.fail(ioctl, KVM_ENOENT);
  }

  /** Called on every vCPU entry: the vCPU frees its leftovers of a failed HOOK. */
  noteEntry(index: number): void {
    this.leftovers.delete(index);
  }

  // ---------------------------------------------------------------------------------------------
  // KernelContext, used by the command handlers

  masks(): AllowMasks {
    return this.hooked!.masks;
  }

  vmEvents(): Set<number> {
    return this.hooked!.vmEvents;
  }

  setCleanup(enable: boolean): void {
    this.hooked!.cleanup = enable;
  }

  vcpuCount(): number {
    return this.guest.vcpus.length;
  }

  private vcpuContext(): ConstructorParameters<typeof VcpuIntrospection>[0] {
    return {
      dialect: this.dialect,
      guest: this.guest,
      eventSpec: (kind) => requireEvent(this.dialect, kind),
      canSendEvents: () => this.hooked?.alive === true,
      nextEventSeq: () => ++this.hooked!.eventSeq,
      send: (message) => this.send(message),
    };
  }

  /** The wire id of an event kind in this VM's dialect (the exit handler's filter). */
  eventId(kind: EventKind): number | undefined {
    return eventByKind(this.dialect, kind)?.id;
  }

  private zeroArch(): Record<string, unknown> {
    const arch = this.dialect.layouts.event.fields["arch"];
    if (arch?.kind !== "struct") throw new KvmiProtocolError("kvmi_event has no arch struct");
    return zeroValue(arch.layout) as Record<string, unknown>;
  }

  // ---------------------------------------------------------------------------------------------
  // The receive thread

  private startReceiving(hooked: Hooked, finish: () => void): void {
    const { socket } = hooked;
    const framer = createFramer(this.dialect);
    const onFrame = (hdr: MsgHdr, body: Uint8Array): void => {
      this.received.set(hdr.id, (this.received.get(hdr.id) ?? 0) + 1);
      // The receive thread handles one message at a time: behind an asynchronous answer, the
      // next messages wait their turn (the framer reuses its buffer, so the body is copied).
      if (hooked.busy !== undefined) {
        const copy = body.slice();
        hooked.busy = hooked.busy.then(() => this.dispatch(hooked, hdr, copy));
      } else {
        this.dispatch(hooked, hdr, body);
      }
    };
    const onData = (chunk: Buffer): void => {
      if (!hooked.alive) return;
      try {
        framer.push(chunk, onFrame);
      } catch (err) {
        this.shutdown(hooked, (err as Error).message);
        return;
      }
      // Replies the tool does not read must not pile up: stop reading until they drain.
      if (socket.writableNeedDrain) {
        socket.pause();
        socket.once("drain", () => socket.resume());
      }
    };
    const onGone = (): void => {
      socket.off("data", onData);
      this.shutdown(hooked, "tool closed the socket");
      for (const vcpu of hooked.vcpus) vcpu.release();
      finish();
    };
    socket.on("data", onData);
    socket.once("close", onGone);
    socket.on("error", (err) => this.log.debug({ err }, "KVMI socket error"));
    socket.resume();
  }

  /** Shuts the socket down in both directions, as the kernel does (kvmi-abi §2.7). */
  private shutdown(hooked: Hooked, reason: string): void {
    if (!hooked.alive) return;
    hooked.alive = false;
    this.log.info({ reason }, "closing the KVMI socket");
    // Flush what this tick wrote (e.g. the reply before a close) before tearing down.
    hooked.outbox.flush();
    hooked.socket.destroy();
  }

  send(message: Uint8Array): boolean {
    const hooked = this.hooked;
    if (hooked === undefined || !hooked.alive || hooked.socket.destroyed) return false;
    hooked.outbox.commit(message);
    flushAtTickEnd(hooked);
    return true;
  }

  /**
   * Sends a command's reply unless the tool turned replies off (kvmi-v7 CONTROL_CMD_RESPONSE):
   * then the command has run, an error is only logged, and a command that produced data closes the
   * socket, as the kvmi-v7 kernel does (docs/protocol/kvmi-v7.md, "Reply switch").
   */
  private reply(hooked: Hooked, answer: boolean, spec: Pick<CommandSpec, "id" | "reply">, seq: number, result: CommandResult): void {
    const value = "value" in result ? result.value : undefined;
    if (answer) {
      // Encoded in place in the outbox: no buffer of its own per reply (a page read's is 4 KiB).
      this.send(encodeReply(this.dialect, spec, seq, -result.err, value, hooked.outbox));
      return;
    }
    if (result.err !== 0) {
      this.log.info({ msgId: spec.id, seq, errno: result.err }, "command failed while replies are off");
      return;
    }
    if (spec.reply.layout !== null || spec.reply.tail !== undefined) {
      this.shutdown(hooked, `command ${spec.id} returns data while command replies are off`);
    }
  }

  private dispatch(hooked: Hooked, hdr: MsgHdr, body: Uint8Array): void {
    if (!hooked.alive) return;
    if (hooked.messages++ < FOREIGN_DIALECT_PROBE_MESSAGES) this.warnIfForeign(hdr, body);
    if (hdr.id === this.dialect.eventFraming.replyMessageId) {
      this.dispatchEventReply(hooked, hdr, body);
      return;
    }
    // Whether this message gets a reply is decided now, in arrival order, even for a vCPU command
    // that replies later from its job.
    let answer = hooked.repliesOn;
    const spec = commandById(this.dialect, hdr.id);
    const echo = { id: hdr.id, reply: { layout: null } };
    if (spec === undefined) return this.reply(hooked, answer, echo, hdr.seq, { err: KVM_ENOSYS });
    if (!hooked.masks.isCommandAllowed(hdr.id)) return this.reply(hooked, answer, spec, hdr.seq, { err: KVM_EPERM });
    // The variable-length handlers check the message against their fixed part plus the declared
    // tail and fail with a non-wire error, which closes the socket. A message too short for
    // `kvmi_vcpu_hdr` + fixed part is as fatal as a truncated tail, even though the zero-filled
    // receive buffer makes the fixed part decodable.
    let decoded: DecodedCommand;
    let fatal: string | undefined;
    try {
      decoded = decodeCommand(this.dialect, spec, body);
    } catch (err) {
      if (!spec.closesOnShortTail) return this.reply(hooked, answer, spec, hdr.seq, { err: KVM_EINVAL });
      fatal = (err as Error).message;
      decoded = decodeCommand(this.dialect, { ...spec, request: { layout: spec.request.layout } }, body);
    }
    if (spec.closesOnShortTail && body.length < fixedRequestBytes(this.dialect, spec)) {
      fatal ??= `${spec.name}: ${body.length}-byte message is shorter than its fixed part`;
    }
    if (spec.op === this.dialect.replyControlOp) {
      if (fatal !== undefined) return this.shutdown(hooked, fatal);
      const result = controlReplies(hooked, decoded);
      // With `now = 1` the new state already decides this command's own reply.
      if (result.err === 0 && decoded.value["now"] === 1) answer = hooked.repliesOn;
      return this.reply(hooked, answer, spec, hdr.seq, result);
    }
    if (spec.scope === "vm" && spec.vcpuField === undefined) {
      if (fatal !== undefined) return this.shutdown(hooked, fatal);
      const handler = VM_COMMAND_HANDLERS[spec.op];
      // Commands of the table this host cannot carry out (EPT views, SPP, #VE, host mapping).
      if (handler === undefined) return this.reply(hooked, answer, spec, hdr.seq, { err: KVM_EOPNOTSUPP });
      const result = handler(this, decoded, body);
      if (!isPromise(result)) return this.reply(hooked, answer, spec, hdr.seq, result);
      // An asynchronous answer (the QEMU backend) holds the receive thread: later messages queue.
      const settled = result.then(
        (value) => this.reply(hooked, answer, spec, hdr.seq, value),
        (err: unknown) => this.shutdown(hooked, `${spec.name}: ${(err as Error).message}`),
      );
      const held = (hooked.busy = (hooked.busy ?? Promise.resolve()).then(() => settled));
      void held.then(() => {
        if (hooked.busy === held) hooked.busy = undefined;
      });
      return;
    }
    // A pause is a receive-thread command: it is never answered EAGAIN.
    const vcpu = checkVcpuTarget(hooked, decoded.vcpu!, decoded.vcpuHdrPadding, spec.dispatch === "vcpu-job");
    if (typeof vcpu === "number") return this.reply(hooked, answer, spec, hdr.seq, { err: vcpu });
    // The vCPU handler checks the length once the dispatch checks passed.
    if (fatal !== undefined) return this.shutdown(hooked, fatal);
    const handler = VCPU_COMMAND_HANDLERS[spec.op];
    if (handler === undefined) return this.reply(hooked, answer, spec, hdr.seq, { err: KVM_EOPNOTSUPP });
    if (spec.dispatch === "receive-thread") return this.reply(hooked, answer, spec, hdr.seq, handler(this, decoded, vcpu) as CommandResult);
    vcpu.queueJob(() => {
      if (!hooked.alive) return;
      const result = handler(this, decoded, vcpu);
      if (!isPromise(result)) return this.reply(hooked, answer, spec, hdr.seq, result);
      return result.then(
        (value) => {
          if (hooked.alive) this.reply(hooked, answer, spec, hdr.seq, value);
        },
        (err: unknown) => this.shutdown(hooked, `${spec.name}: ${(err as Error).message}`),
      );
    });
  }

  /**
   * One clear line when the first messages look like another dialect's (a libkvmi tool against a
   * v9 kernel sends kvmi-v7's GET_VERSION, which v9 reads as CHECK_COMMAND): without it the tool
   * just closes the socket and nobody learns why.
   */
  private warnIfForeign(hdr: MsgHdr, body: Uint8Array): void {
    const hint = describeForeignDialect(this.dialect, hdr, body.length);
    if (hint !== undefined) this.log.warn({ msgId: hdr.id, size: body.length, dialect: this.dialect.name }, hint);
  }

  private dispatchEventReply(hooked: Hooked, hdr: MsgHdr, body: Uint8Array): void {
    const reply = decodeEventReply(this.dialect, body);
    const vcpu = checkVcpuTarget(hooked, reply.vcpu, reply.vcpuHdrPadding);
    if (typeof vcpu === "number") {
      // Rejected at dispatch: an ordinary error reply with id 0 and size 8 (kvmi-abi §3.1).
      return this.reply(hooked, hooked.repliesOn, { id: hdr.id, reply: { layout: null } }, hdr.seq, { err: vcpu });
    }
    if (reply.replyPadding) return this.shutdown(hooked, "non-zero kvmi_event_reply padding");
    const problem = vcpu.completeEvent(hdr.seq, reply.action, reply.data);
    if (problem !== undefined) this.shutdown(hooked, problem);
  }
}
