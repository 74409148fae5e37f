// SPDX-License-Identifier: Apache-2.0
/**
 * The emulated kernel's state between HOOK and UNHOOK (`struct kvm_introspection` while a tool is
 * connected), and the helpers of kvmi-vm.ts that work on that state alone: the end-of-tick flush of
 * the reply outbox, the kvmi-v7 reply switch and the dispatch-time checks of a message. Separate
 * from kvmi-vm.ts, which owns the ioctls, the receive thread and the dispatch, so that file stays
 * about control flow; these are plain functions, called the same way the private methods were.
 */
import type { Socket } from "node:net";
import type { CommandSpec, Dialect } from "../../wire/dialect.js";
import { KVM_EAGAIN, KVM_EINVAL } from "../../wire/dialects/errno.js";
import type { DecodedCommand } from "../../wire/message.js";
import { Outbox } from "../../wire/slab.js";
import { AllowMasks } from "./allow-masks.js";
import type { CommandResult } from "./command-context.js";
import type { VcpuIntrospection } from "./vcpu-introspection.js";

/** State that exists only between HOOK and UNHOOK. */
export interface Hooked {
  readonly socket: Socket;
  /** What the kernel writes to the socket: the messages of one tick leave in one write. */
  readonly outbox: Outbox;
  /** True while a flush of the outbox is scheduled for the end of this tick. */
  flushQueued: boolean;
  readonly masks: AllowMasks;
  readonly vcpus: VcpuIntrospection[];
  readonly vmEvents: Set<number>;
  eventSeq: number;
  cleanup: boolean;
  /** False once the socket was shut down (tool gone, malformed input, unhook). */
  alive: boolean;
  /** Resolves when the receive "thread" has finished. */
  readonly receiveDone: Promise<void>;
  /** Set while a command's asynchronous answer holds the receive thread; later messages queue behind it. */
  busy: Promise<void> | undefined;
  /** kvmi-v7 CONTROL_CMD_RESPONSE: false while the tool turned command replies off. */
  repliesOn: boolean;
  /** Messages received so far; the first ones tell whether the tool speaks this dialect. */
  messages: number;
}

/** The state a successful HOOK sets up on `socket`, before the receive thread starts. */
export function createHooked(socket: Socket, dialect: Dialect, receiveDone: Promise<void>): Hooked {
  return {
    socket,
    outbox: new Outbox((bytes, done) => {
      if (!socket.destroyed) socket.write(bytes, done);
    }),
    flushQueued: false,
    masks: new AllowMasks(dialect),
    vcpus: [],
    vmEvents: new Set(),
    eventSeq: 0,
    cleanup: false,
    alive: true,
    receiveDone,
    busy: undefined,
    repliesOn: true,
    messages: 0,
  };
}

/**
 * Messages produced in one tick (the replies to a burst of page reads) leave in one write; each
 * is still whole inside it, as the kernel's single kernel_sendmsg per message is.
 */
export function flushAtTickEnd(hooked: Hooked): void {
  if (hooked.flushQueued) return;
  hooked.flushQueued = true;
  process.nextTick(() => {
    hooked.flushQueued = false;
    hooked.outbox.flush();
  });
}

/** CONTROL_CMD_RESPONSE `{enable, now}`: EINVAL for padding or values above 1. */
export function controlReplies(hooked: Hooked, { value, nonZeroPadding }: DecodedCommand): CommandResult {
  const enable = value["enable"] as number;
  const now = value["now"] as number;
  if (nonZeroPadding !== undefined || enable > 1 || now > 1) return { err: KVM_EINVAL };
  hooked.repliesOn = enable === 1;
  return { err: 0, value: {} };
}

/** Dispatch-time checks of a vCPU-scoped message (kvmi-abi §2.9); returns an errno or the vCPU. */
export function checkVcpuTarget(hooked: Hooked, index: number, padding: boolean, needsReady = true): VcpuIntrospection | number {
  if (padding) return KVM_EINVAL;
  const vcpu = hooked.vcpus[index];
  if (vcpu === undefined) return KVM_EINVAL;
  if (needsReady && !vcpu.port.initialized && !vcpu.isWaitingForReply) return KVM_EAGAIN;
  return vcpu;
}

/** `kvmi_vcpu_hdr` (vCPU scope) plus the fixed part of the request body. */
export function fixedRequestBytes(dialect: Dialect, spec: CommandSpec): number {
  return (spec.scope === "vcpu" ? dialect.layouts.vcpuHdr.size : 0) + (spec.request.layout?.size ?? 0);
}
