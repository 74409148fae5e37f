// SPDX-License-Identifier: Apache-2.0
/**
 * kvmi.v1 numbers commands and events as v9 does (the proto's `Command` values are v9 message ids,
 * `EventType` values v9 event ids + 1), and the service's mapping builds v9-shaped bodies. This is
 * the one place that turns such a request into the VM's own dialect (docs/decisions/0010-dialect-
 * model.md): the command goes by its op, ids inside bodies are renumbered (CHECK_COMMAND's `id`,
 * CHECK_EVENT's `id`, CONTROL_*_EVENTS' `event_id`), fields the dialect has and kvmi.v1 does not
 * carry are sent as zero (kvmi-v7's SET_PAGE_ACCESS `view` unless given), and GET_VERSION's reply
 * is read back in v9's shape. A command or event the VM's dialect lacks fails with
 * KvmiNotInDialectError (FAILED_PRECONDITION, reason NOT_IN_DIALECT).
 */
import type { CommandOptions, KvmiChannel } from "@kvmi/kvm-bridge";
import { KvmiNotInDialectError } from "@kvmi/kvm-bridge/wire";
import { commandById, commandByOp, eventByKind, v9, V9_COMMANDS, withZeroDefaults } from "@kvmi/kvm-bridge/wire";
import type { CommandOp, Dialect, EventKind, OpReply, OpRequest, V9CommandName, V9CommandReply, V9CommandRequest } from "@kvmi/kvm-bridge/wire";
import { eventKindOfApiId } from "../mapping/enums.js";

type AnyValue = Record<string, unknown>;

/** Request fields kvmi.v1 adds beyond v9 for the dialects that have them. */
const DIALECT_ONLY_FIELDS = ["view"] as const;
type Channel = Pick<KvmiChannel, "command" | "dialect">;

/** Sends the command named `name` in v9 by its op, on whatever dialect the channel speaks. */
export async function sendCommand<N extends V9CommandName>(
  channel: Channel,
  name: N,
  request: V9CommandRequest<N>,
  vcpu?: number,
  options?: CommandOptions,
): Promise<V9CommandReply<N>> {
  const spec = V9_COMMANDS[name];
  const body = toDialectBody(channel.dialect, name, request as unknown as AnyValue);
  const reply = (await channel.command(spec.op, body as never, vcpu, options)) as unknown as AnyValue;
  return fromDialectReply(channel.dialect, name, reply) as unknown as V9CommandReply<N>;
}

/**
 * Sends a command v9 does not have (mapping/dialect-commands.ts) by its op, with fields kvmi.v1
 * does not carry as zero.
 * @throws KvmiNotInDialectError when the channel's dialect lacks `op` (nothing is written).
 */
export async function sendOp<O extends CommandOp>(channel: Channel, op: O, request: OpRequest<O>, vcpu?: number, options?: CommandOptions): Promise<OpReply<O>> {
  const spec = commandByOp(channel.dialect, op);
  if (spec === undefined) throw new KvmiNotInDialectError(channel.dialect.name, op, "command");
  const body = withZeroDefaults(spec.request.layout, request as unknown as AnyValue);
  return channel.command(op, body as never, vcpu, options);
}

/** {@link sendCommand} for a burst of read-only commands (KvmiChannel.commandBatch). */
export function sendCommandBatch<N extends V9CommandName>(
  channel: Pick<KvmiChannel, "commandBatch" | "dialect">,
  name: N,
  requests: readonly V9CommandRequest<N>[],
  vcpu?: number,
  options?: CommandOptions,
): Promise<Array<V9CommandReply<N> | Error>> {
  const bodies = requests.map((r) => toDialectBody(channel.dialect, name, r as unknown as AnyValue));
  return channel.commandBatch(V9_COMMANDS[name].op, bodies as never, vcpu, options) as unknown as Promise<Array<V9CommandReply<N> | Error>>;
}

/**
 * The v9-shaped `request` as the VM's dialect wants it: ids inside the body renumbered by op or
 * kind, fields kvmi.v1 does not carry as zero. Read from the dialect's table only, never from its
 * name. Where the dialect's request layout is the one kvmi.v1's bodies are built for (v9's, which
 * v12 and kvmi-v7 share for most commands), the body is already complete and is not copied.
 */
export function toDialectBody(dialect: Dialect, name: V9CommandName, request: AnyValue): AnyValue {
  const op = V9_COMMANDS[name].op;
  const spec = commandByOp(dialect, op);
  if (spec === undefined) throw new KvmiNotInDialectError(dialect.name, op, "command");
  // kvmi.v1 fields only some dialects carry (kvmi-v7's SET_PAGE_ACCESS `view`) are set only when
  // non-zero: one the dialect's layout lacks cannot be honoured (docs/decisions/0110).
  for (const field of DIALECT_ONLY_FIELDS) {
    if (request[field] !== undefined && (spec.request.layout === null || !(field in spec.request.layout.fields))) {
      throw new KvmiNotInDialectError(dialect.name, `${op} ${field}`, "command");
    }
  }
  let body = request;
  // Ids inside bodies are kvmi.v1's (commands: v9's ids; events: EventType - 1, v9's ids then the
  // events v9 lacks), so they are translated on every dialect, v9 included: kvmi-v7's CPUID there
  // is NOT_IN_DIALECT, not whatever v9 id 12 would be.
  switch (op) {
    case "CHECK_COMMAND":
      body = { ...body, id: commandIdIn(dialect, body["id"] as number) };
      break;
    case "CHECK_EVENT":
      body = { ...body, id: eventIdIn(dialect, body["id"] as number) };
      break;
    case "CONTROL_VM_EVENTS":
    case "CONTROL_VCPU_EVENTS":
      body = { ...body, event_id: eventIdIn(dialect, body["event_id"] as number) };
      break;
    default:
      break;
  }
  const layout = spec.request.layout;
  return layout === V9_COMMANDS[name].request.layout ? body : withZeroDefaults(layout, body);
}

/** The dialect's id of the command v9 calls `v9Id`; ids v9 does not know pass through (the kernel answers ENOENT). */
function commandIdIn(dialect: Dialect, v9Id: number): number {
  const known = commandById(v9, v9Id);
  if (known === undefined) return v9Id;
  const spec = commandByOp(dialect, known.op);
  if (spec === undefined) throw new KvmiNotInDialectError(dialect.name, known.op, "command");
  return spec.id;
}

/**
 * The dialect's id of the event kvmi.v1 numbers `apiId` (`EventType - 1`, mapping/enums.ts); ids
 * kvmi.v1 does not know pass through, so that the kernel answers them itself.
 */
function eventIdIn(dialect: Dialect, apiId: number): number {
  const kind = eventKindOfApiId(apiId);
  if (kind === undefined) return apiId;
  return requireEventId(dialect, kind);
}

function requireEventId(dialect: Dialect, kind: EventKind): number {
  const spec = eventByKind(dialect, kind);
  if (spec === undefined) throw new KvmiNotInDialectError(dialect.name, kind, "event");
  return spec.id;
}

/**
 * GET_VERSION's reply in v9's shape: kvmi-v7 reports other feature bytes and no `singlestep`; the
 * largest message is what v12 reports in `max_msg_size`, else the dialect table's KVMI_MSG_SIZE.
 */
function fromDialectReply(dialect: Dialect, name: V9CommandName, reply: AnyValue): AnyValue {
  if (name !== "KVMI_GET_VERSION") return reply;
  const features = (reply["features"] ?? {}) as AnyValue;
  return {
    ...reply,
    max_msg_size: (reply["max_msg_size"] as number | undefined) ?? dialect.maxMessageBytes,
    features: { ...features, singlestep: (features["singlestep"] as number | undefined) ?? 0 },
  };
}
