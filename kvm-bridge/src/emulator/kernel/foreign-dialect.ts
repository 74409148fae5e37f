// SPDX-License-Identifier: Apache-2.0
/**
 * Recognises a tool that speaks another KVMI dialect than the kernel. Every dialect opens with
 * GET_VERSION and an empty body, but at different ids (v9 1, v12 and kvmi-v7 2), and the first
 * commands' sizes differ, so a mismatch shows in the first messages: a libkvmi tool against a v9
 * kernel sends kvmi-v7's GET_VERSION (id 2, empty), which v9 reads as a CHECK_COMMAND that is 8
 * bytes short. The kernel answers it anyway (short fixed-size requests are zero-filled) and the
 * tool closes the socket on the reply it did not expect; the log line this module writes is then
 * the only place the operator learns why (docs/protocol/README.md, "Dialects").
 */
import type { CommandSpec, Dialect } from "../../wire/dialect.js";
import { commandById } from "../../wire/dialect.js";
import { KNOWN_DIALECTS } from "../../wire/dialects/known.js";
import type { MsgHdr } from "../../wire/message.js";

/** Bytes a request body of `spec` needs: the vCPU header (vCPU scope) and the fixed part. */
function fixedBytes(dialect: Dialect, spec: CommandSpec): number {
  const vcpuHdr = spec.scope === "vcpu" ? dialect.layouts.vcpuHdr.size : 0;
  return vcpuHdr + (spec.request.layout?.size ?? 0);
}

/** True when `dialect` reads a message with this id and body length as a well-formed command. */
function fits(dialect: Dialect, id: number, bodyBytes: number): boolean {
  if (id === dialect.eventFraming.replyMessageId) return false;
  const spec = commandById(dialect, id);
  if (spec === undefined) return false;
  const fixed = fixedBytes(dialect, spec);
  return spec.request.tail === undefined ? bodyBytes === fixed : bodyBytes >= fixed;
}

/**
 * A sentence naming the dialects a message fits when it does not fit `dialect`'s table, or
 * undefined when it fits (or fits no dialect at all, which says nothing about the dialect).
 */
export function describeForeignDialect(dialect: Dialect, hdr: MsgHdr, bodyBytes: number): string | undefined {
  if (fits(dialect, hdr.id, bodyBytes)) return undefined;
  const others = KNOWN_DIALECTS.filter((d) => d !== dialect && fits(d, hdr.id, bodyBytes));
  if (others.length === 0) return undefined;
  const names = others.map((d) => `${d.name} (${commandById(d, hdr.id)!.name})`).join(" or ");
  const ours = commandById(dialect, hdr.id);
  const here = ours === undefined ? "an unknown id" : `${ours.name} with a ${bodyBytes}-byte body`;
  return (
    `the tool seems to speak another KVMI dialect: message id ${hdr.id} (${bodyBytes}-byte body) is ${here} in ` +
    `${dialect.name}, this VM's dialect, but fits ${names}; start the VM with that dialect or point the tool at one that speaks ${dialect.name}`
  );
}
