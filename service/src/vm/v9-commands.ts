// SPDX-License-Identifier: Apache-2.0
/**
 * The service still names commands by their v9 kernel names (`KVMI_VM_READ_PHYSICAL`); the channel
 * takes dialect-neutral ops (docs/decisions/0010-dialect-model.md). These two helpers are the one
 * place that turns the first into the second, until the mapping speaks ops itself.
 */
import type { CommandOptions, KvmiChannel } from "@kvmi/kvm-bridge";
import { V9_COMMANDS } from "@kvmi/kvm-bridge/wire";
import type { V9CommandName, V9CommandReply, V9CommandRequest } from "@kvmi/kvm-bridge/wire";

/** Sends the command named `name` in v9 by its op, on whatever dialect the channel speaks. */
export function sendCommand<N extends V9CommandName>(
  channel: Pick<KvmiChannel, "command">,
  name: N,
  request: V9CommandRequest<N>,
  vcpu?: number,
  options?: CommandOptions,
): Promise<V9CommandReply<N>> {
  return channel.command(V9_COMMANDS[name].op, request as never, vcpu, options) as unknown as Promise<V9CommandReply<N>>;
}

/** {@link sendCommand} for a burst of read-only commands (KvmiChannel.commandBatch). */
export function sendCommandBatch<N extends V9CommandName>(
  channel: Pick<KvmiChannel, "commandBatch">,
  name: N,
  requests: readonly V9CommandRequest<N>[],
  vcpu?: number,
  options?: CommandOptions,
): Promise<Array<V9CommandReply<N> | Error>> {
  return channel.commandBatch(V9_COMMANDS[name].op, requests as never, vcpu, options) as unknown as Promise<
    Array<V9CommandReply<N> | Error>
  >;
}
