// SPDX-License-Identifier: Apache-2.0
/**
 * Guest-physical page reads shared by BatchReadMemory (memory-rpcs.ts) and DumpMemory
 * (dump-memory.ts): KVMI_VM_READ_PHYSICAL reads at most one page per message (kvmi-abi §4 id 6),
 * so both send page reads in bursts of {@link PAGE_WINDOW} and turn the kernel's KVM_ENOENT into
 * holes. Kept apart so that the dump module needs nothing of the batch module.
 */
import { KvmiRemoteError } from "@kvmi/kvm-bridge";
import { errno } from "@kvmi/kvm-bridge/wire";
import type { HoleReason } from "@kvmi/proto";
import type { HoleFields } from "./bulk-encoding.js";
import { parseVmName } from "../mapping/resource-names.js";
import type { VmHost } from "../vm/vm-host.js";
import type { CommandCaller } from "./command-rpcs.js";

export const PAGE = 4096n;
/**
 * Page reads a dump or a batch keeps in flight on the KVMI socket: enough to keep the socket busy,
 * few enough that a large batch does not queue thousands of commands at once.
 */
export const PAGE_WINDOW = 64;
/**
 * Bursts of {@link PAGE_WINDOW} pages a dump or a batch keeps in flight: while gRPC sends one chunk
 * the next bursts are already on the KVMI socket, so it never idles (measured in
 * docs/performance.md; 3 × 64 pages stay below the channel's 256 in-flight slots, leaving room for
 * the controller's own commands). A dump holds at most this many bursts beside its chunk.
 */
export const READ_AHEAD_BURSTS = 3;

/** True for the kernel's answer to a read of a page no memslot backs (-KVM_ENOENT). */
function isNotBacked(err: unknown): boolean {
  return err instanceof KvmiRemoteError && err.errno === errno.KVM_ENOENT;
}

/**
 * Reads one page piece; undefined for a page guest memory does not back (KVM_ENOENT). The caller's
 * cancel signal is checked here rather than handed to every page command: a batch has thousands.
 */
export async function readPhysical(host: VmHost, gpa: bigint, size: number, caller: CommandCaller): Promise<Uint8Array | undefined> {
  caller.signal?.throwIfAborted();
  try {
    return (await host.command("KVMI_VM_READ_PHYSICAL", { gpa, size }, undefined, { timeoutMs: caller.timeoutMs })).data;
  } catch (err) {
    if (isNotBacked(err)) return undefined;
    throw err;
  }
}

/**
 * Reads page pieces (each inside one page) in one burst; undefined for a piece guest memory does
 * not back (KVM_ENOENT).
 * @throws the first other error (transport, timeout, abort), as the piece-by-piece reads would.
 */
export async function readPhysicalPieces(host: VmHost, reads: ReadonlyArray<{ gpa: bigint; size: number }>, caller: CommandCaller): Promise<Array<Uint8Array | undefined>> {
  caller.signal?.throwIfAborted();
  const replies = await host.commandBatch("KVMI_VM_READ_PHYSICAL", reads, undefined, caller);
  return replies.map((reply) => {
    if (!(reply instanceof Error)) return reply.data;
    if (isNotBacked(reply)) return undefined;
    throw reply;
  });
}

export function hole(address: bigint, length: number, reason: HoleReason): HoleFields {
  return { address, length: BigInt(length), reason };
}

/** Coalesces adjacent holes of the same reason. */
export function coalesce(holes: HoleFields[]): HoleFields[] {
  const out: HoleFields[] = [];
  for (const h of holes.sort((a, b) => (a.address < b.address ? -1 : 1))) {
    const last = out.at(-1);
    if (last !== undefined && last.reason === h.reason && last.address + last.length === h.address) last.length += h.length;
    else out.push(h);
  }
  return out;
}

/** The VM a memory request names, for ErrorInfo metadata; nothing when the name does not parse. */
export function vmContext(name: string): { vm?: string } {
  try {
    return { vm: parseVmName(name, "vm") };
  } catch {
    return {};
  }
}
