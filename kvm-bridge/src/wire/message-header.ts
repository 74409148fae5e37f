// SPDX-License-Identifier: Apache-2.0
/**
 * What every KVMI message shares, whichever way it goes (kvmi-abi §3.1): `kvmi_msg_hdr`, reading
 * it, and the one buffer a message is encoded into with its header written (from the shared
 * zero-filled slabs, slab.ts). Separate from message.ts (commands, replies) and event-message.ts
 * (events, event replies) because both build on it; message.ts re-exports the public names.
 */
import { KvmiArgumentError } from "../errors.js";
import { decodeFrom, encodeInto, viewOf } from "./codec.js";
import type { Dialect } from "./dialect.js";
import type { Layout, LayoutValue } from "./layout.js";
import { kvmiMsgHdr } from "./layouts/common.js";
import { FRESH_PIECES } from "./slab.js";
import type { MessageAllocator } from "./slab.js";

/** Size of `kvmi_msg_hdr`, the same in every dialect (kvmi-abi §3.1, §1.4). */
export const HEADER_BYTES = kvmiMsgHdr.size;

/** A decoded `kvmi_msg_hdr`. */
export interface MsgHdr {
  readonly id: number;
  readonly size: number;
  readonly seq: number;
}

export type AnyValue = Record<string, unknown>;

/**
 * Reads `kvmi_msg_hdr` at `offset` of `buf` (every dialect shares it, kvmi-abi §1.4).
 * @throws KvmiProtocolError when fewer than 8 bytes are there.
 */
export function readMsgHdr(buf: Uint8Array, offset = 0): MsgHdr {
  return decodeFrom(kvmiMsgHdr, viewOf(buf), offset) as MsgHdr;
}

/**
 * A zeroed buffer for one message with its `kvmi_msg_hdr` written: `view` and `start` (where the
 * body begins in `view`) are for the body's encoders. Small messages share zero-filled slabs
 * (slab.ts), so bytes an encoder skips (padding) are zero.
 */
export function allocate(
  dialect: Dialect,
  id: number,
  seq: number,
  bodySize: number,
  into: MessageAllocator = FRESH_PIECES,
): { out: Uint8Array; view: DataView; start: number } {
  if (bodySize > dialect.maxMessageBytes) {
    throw new KvmiArgumentError("size", `message body of ${bodySize} bytes exceeds ${dialect.maxMessageBytes}`);
  }
  const hdr = dialect.layouts.msgHdr;
  const { bytes, view, at } = into.allocate(hdr.size + bodySize);
  encodeInto(hdr, { id, size: bodySize, seq }, view, at);
  return { out: bytes, view, start: at + hdr.size };
}

export function writeVcpuHdr(dialect: Dialect, view: DataView, offset: number, vcpu: number): void {
  encodeInto(dialect.layouts.vcpuHdr, { vcpu } as LayoutValue<Layout>, view, offset);
}
