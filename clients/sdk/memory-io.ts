// SPDX-License-Identifier: Apache-2.0
/**
 * Guest memory of any length over the page- and batch-sized commands: chunked BatchReadMemory
 * reads with two calls in flight, page-by-page writes, and translation by vCPU or CR3. Separate
 * from the typed methods in `commands.ts` because this is policy on top of them (chunk size,
 * concurrency, hole reporting, all-or-nothing virtual writes), not a request/response mapping; it
 * runs over any {@link VmCommands}, so a subclass's overridden methods are the ones it calls.
 * @internal
 */
import type { CallOptions } from "./channel.js";
import type { TranslationTarget, VmCommands } from "./command-types.js";
import { MemoryHoleError } from "./errors.js";
import type { MemoryHoleInfo } from "./errors.js";
import { hex, splitPages, walkPageTables } from "./memory.js";

/** Bytes per BatchReadMemory range the helpers use: under the bridge's 3 MiB batch limit and gRPC's 4 MiB message size. */
const READ_CHUNK_BYTES = 2 * 1024 * 1024;
/**
 * BatchReadMemory calls a long read keeps in flight. A unary response leaves the bridge only once
 * all of its pages are read, so with one call at a time the bridge's reading and the network's
 * sending take turns; with two, one call's pages are read while the other's response travels.
 */
const READ_CALLS_IN_FLIGHT = 2;

/** {@link VmCommands.readPhysical} (`via` undefined) and {@link VmCommands.readVirtual}. */
export async function readMemory(
  commands: VmCommands,
  via: TranslationTarget | undefined,
  address: bigint,
  length: number,
  options?: CallOptions,
): Promise<Uint8Array> {
  checkLength(length);
  const data = new Uint8Array(length);
  // Holes per chunk, so that they come out in address order whichever call finishes first.
  const holesByChunk: (readonly MemoryHoleInfo[])[] = [];
  let next = 0;
  let failed = false;
  const readChunks = async (): Promise<void> => {
    try {
      while (next < length && !failed) {
        const offset = next;
        next += READ_CHUNK_BYTES;
        const size = Math.min(READ_CHUNK_BYTES, length - offset);
        const [result] = await commands.batchReadMemory([{ address: address + BigInt(offset), length: size, ...(via !== undefined && { via }) }], options);
        if (!result!.ok) throw result!.error;
        data.set(result!.data, offset);
        holesByChunk[offset / READ_CHUNK_BYTES] = result!.holes;
      }
    } catch (err) {
      // The other call in flight finishes, and no one starts another.
      failed = true;
      throw err;
    }
  };
  await Promise.all(Array.from({ length: Math.min(READ_CALLS_IN_FLIGHT, Math.ceil(length / READ_CHUNK_BYTES)) }, readChunks));
  const holes = holesByChunk.flat();
  if (holes.length > 0) {
    const space = via === undefined ? "guest physical" : "guest virtual";
    throw new MemoryHoleError(`${space} range ${hex(address)}+${hex(length)} is not fully readable (${describeHoles(holes)})`, holes, data);
  }
  return data;
}

/** {@link VmCommands.writePhysical}: one KVMI_VM_WRITE_PHYSICAL per page, in order. */
export async function writePhysicalPages(commands: VmCommands, gpa: bigint, data: Uint8Array, options?: CallOptions): Promise<void> {
  for (const piece of splitPages(gpa, data.length)) {
    await commands.writePhysicalMemory(piece.address, data.subarray(piece.offset, piece.offset + piece.length), options);
  }
}

/** {@link VmCommands.writeVirtual}: translates every page first, writes only if all are mapped. */
export async function writeVirtualPages(commands: VmCommands, via: TranslationTarget, gva: bigint, data: Uint8Array, options?: CallOptions): Promise<void> {
  const pieces = splitPages(gva, data.length);
  const gpas = await Promise.all(pieces.map((p) => commands.translate(via, p.address, options)));
  const holes: MemoryHoleInfo[] = pieces
    .filter((_, i) => gpas[i] === undefined)
    .map((p) => ({ address: p.address, length: BigInt(p.length), reason: "notMapped" }));
  if (holes.length > 0) {
    throw new MemoryHoleError(`guest virtual range ${hex(gva)}+${hex(data.length)} is not fully mapped (${describeHoles(holes)}); nothing was written`, holes);
  }
  for (let i = 0; i < pieces.length; i++) {
    const p = pieces[i]!;
    await commands.writePhysicalMemory(gpas[i]!, data.subarray(p.offset, p.offset + p.length), options);
  }
}

/** {@link VmCommands.translate}: KVMI_VCPU_TRANSLATE_GVA for a vCPU, a software page walk for a CR3. */
export async function translateVia(commands: VmCommands, via: TranslationTarget, gva: bigint, options?: CallOptions): Promise<bigint | undefined> {
  if (typeof via === "number") return commands.translateGva(via, gva, options);
  return walkPageTables(async (gpa, size) => {
    const [r] = await commands.batchReadMemory([{ address: gpa, length: size }], options);
    return r!.ok && r!.holes.length === 0 ? r!.data : undefined;
  }, via.cr3, gva);
}

function checkLength(length: number): void {
  if (!Number.isSafeInteger(length) || length < 0) throw new RangeError(`length must be a non-negative integer, got ${length}`);
}

function describeHoles(holes: readonly MemoryHoleInfo[]): string {
  const shown = holes.slice(0, 3).map((h) => `${hex(h.address)}+${hex(h.length)} ${h.reason}`);
  return holes.length > 3 ? `${shown.join(", ")}, …` : shown.join(", ");
}
