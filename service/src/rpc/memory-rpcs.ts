// SPDX-License-Identifier: Apache-2.0
/**
 * Bulk memory access built on KVMI_VM_READ_PHYSICAL, which reads at most one page per message
 * (kvmi-abi §4 id 6): BatchReadMemory (many ranges of any length, physical or virtual, pages read
 * in parallel on the socket) here, and DumpMemory (a server stream of chunks with progress) in
 * dump-memory.ts, re-exported here; the page reads both use are in memory-reads.ts.
 */
import { create } from "@bufbuild/protobuf";
import type { ServerUnaryCall } from "@grpc/grpc-js";
import { KvmiArgumentError } from "@kvmi/kvm-bridge";
import { AddressSpace, BatchReadMemoryResponseSchema, HoleReason, MemoryHoleSchema, MemoryRangeResultSchema } from "@kvmi/proto";
import type { BatchReadMemoryRequest, BatchReadMemoryResponse, MemoryRange } from "@kvmi/proto";
import { encodeBatchReadResponse } from "./bulk-encoding.js";
import type { HoleFields, RangeOutcome } from "./bulk-encoding.js";
import { checkVcpuIndex } from "../mapping/bridge-error.js";
import { parseVmName } from "../mapping/resource-names.js";
import { statusToProto } from "../mapping/status.js";
import type { VmHost } from "../vm/vm-host.js";
import { ownerOf, principalOf } from "./principals.js";
import { atCallEnd } from "../server/call-end.js";
import type { RpcDeps } from "./call-context.js";
import { cancellationOf, callTimeoutMs, quotasOf, unary } from "./call-context.js";
import type { CommandCaller } from "./command-rpcs.js";
import { walkPageTables } from "../vm/page-walk.js";
import { PAGE, PAGE_WINDOW, READ_AHEAD_BURSTS, coalesce, hole, readPhysical, readPhysicalPieces, vmContext } from "./memory-reads.js";

export { DEFAULT_DUMP_MAX_HOLE_BYTES, dumpMemoryHandler } from "./dump-memory.js";

const MAX_RANGES = 1024;
/** Default cap of a batch, so the response fits gRPC's 4 MiB default message size. */
export const MAX_BATCH_BYTES = 3 * 1024 * 1024;
/**
 * Windows of page reads one batch read keeps going at once ({@link READ_AHEAD_BURSTS}); each may wait
 * for the channel's slots with the caller's cancel signal (one listener per waiting window).
 */
export const BATCH_READ_WINDOWS = READ_AHEAD_BURSTS;
const UNMAPPED = (1n << 64n) - 1n;

/** One page-bounded piece of a range. */
interface Piece {
  readonly address: bigint;
  readonly offset: number;
  readonly length: number;
}

/** Splits [address, address + length) at page boundaries. */
function pieces(address: bigint, length: number): Piece[] {
  const out: Piece[] = [];
  let offset = 0;
  while (offset < length) {
    const at = address + BigInt(offset);
    const room = Number(PAGE - (at % PAGE));
    const size = Math.min(room, length - offset);
    out.push({ address: at, offset, length: size });
    offset += size;
  }
  return out;
}

/** Zeros standing in for an unreadable piece (at most a page) in a range's data. */
const ZERO_PAGE = new Uint8Array(Number(PAGE));

/** Runs async work with at most `limit` tasks at once, in submission order. */
function createLimiter(limit: number): <T>(task: () => Promise<T>) => Promise<T> {
  let running = 0;
  const queue: Array<() => void> = [];
  return async (task) => {
    if (running >= limit) await new Promise<void>((resolve) => queue.push(resolve));
    running++;
    try {
      return await task();
    } finally {
      running--;
      queue.shift()?.();
    }
  };
}

type Limiter = ReturnType<typeof createLimiter>;

/**
 * What one batch may have in flight: virtual pieces one by one ({@link PAGE_WINDOW} at once, each
 * translated first), physical ones in bursts of {@link PAGE_WINDOW}, {@link READ_AHEAD_BURSTS} bursts
 * at once so that the socket is not idle while a burst's last replies come back.
 */
interface BatchLimits {
  readonly pieces: Limiter;
  readonly windows: Limiter;
}

/**
 * Reads one range. Its data is the pieces' reply buffers as they came (views, not copies), zeros
 * for unreadable pieces; the response encoder writes them out (bulk-encoding.ts).
 */
async function readRange(host: VmHost, range: MemoryRange, index: number, caller: CommandCaller, limits: BatchLimits): Promise<RangeOutcome> {
  const length = Number(range.length);
  const holes: HoleFields[] = [];
  const virtual = range.space === AddressSpace.VIRTUAL;
  const translation = range.translation;
  if (virtual && translation.case === "vcpu") checkVcpuIndex(host.uuid, translation.value, host.record.vcpuCount, `ranges[${index}].vcpu`);
  const translate = async (gva: bigint): Promise<bigint | undefined> => {
    if (translation.case === "vcpu") {
      const { gpa } = await host.command("KVMI_VCPU_TRANSLATE_GVA", { gva }, translation.value, { timeoutMs: caller.timeoutMs });
      return gpa === UNMAPPED ? undefined : gpa;
    }
    return walkPageTables((gpa, size) => readPhysical(host, gpa, size, caller), translation.value as bigint, gva);
  };
  const all = pieces(range.address, length);
  const data = new Array<Uint8Array>(all.length);
  if (!virtual) {
    // Physical pieces need no translation: windows of them go out as one burst each.
    const bursts: Array<Promise<void>> = [];
    for (let first = 0; first < all.length; first += PAGE_WINDOW) {
      const window = all.slice(first, first + PAGE_WINDOW);
      bursts.push(
        limits.windows(async () => {
          const reads = await readPhysicalPieces(host, window.map((piece) => ({ gpa: piece.address, size: piece.length })), caller);
          for (let i = 0; i < reads.length; i++) {
            const piece = window[i]!;
            const bytes = reads[i];
            if (bytes === undefined) holes.push(hole(piece.address, piece.length, HoleReason.NOT_PRESENT));
            data[first + i] = bytes ?? ZERO_PAGE.subarray(0, piece.length);
          }
        }),
      );
    }
    await Promise.all(bursts);
  } else {
    await Promise.all(
      all.map((piece, i) =>
        limits.pieces(async () => {
          data[i] = ZERO_PAGE.subarray(0, piece.length);
          const gpa = await translate(piece.address);
          if (gpa === undefined) return void holes.push(hole(piece.address, piece.length, HoleReason.NOT_MAPPED));
          const bytes = await readPhysical(host, gpa, piece.length, caller);
          if (bytes === undefined) return void holes.push(hole(piece.address, piece.length, HoleReason.NOT_PRESENT));
          data[i] = bytes;
        }),
      ),
    );
  }
  return { data, dataBytes: length, holes: coalesce(holes) };
}

function checkRanges(request: BatchReadMemoryRequest): void {
  const { ranges } = request;
  if (ranges.length === 0 || ranges.length > MAX_RANGES) {
    throw new KvmiArgumentError("ranges", `ranges must hold 1 to ${MAX_RANGES} ranges, got ${ranges.length}`);
  }
  let total = 0n;
  ranges.forEach((range, i) => {
    if (range.length === 0n) throw new KvmiArgumentError(`ranges[${i}].length`, `ranges[${i}].length must be at least 1`);
    total += range.length;
    if (range.space === AddressSpace.UNSPECIFIED) throw new KvmiArgumentError(`ranges[${i}].space`, `ranges[${i}].space is required`);
    const virtual = range.space === AddressSpace.VIRTUAL;
    if (virtual !== (range.translation.case !== undefined)) {
      throw new KvmiArgumentError(
        `ranges[${i}].translation`,
        virtual ? `ranges[${i}] is virtual: set vcpu or cr3 to say how to translate it` : `ranges[${i}] is physical: leave vcpu and cr3 unset`,
      );
    }
  });
  if (total > BigInt(MAX_BATCH_BYTES)) {
    throw new KvmiArgumentError("ranges", `the ranges add up to ${total} bytes, more than ${MAX_BATCH_BYTES}: use DumpMemory for large reads`);
  }
}

/**
 * Runs a batch read; shared by the unary RPC (which encodes the outcomes straight into the response
 * bytes) and the session stream (which needs a message: {@link batchReadResponse}).
 */
export async function batchRead(deps: RpcDeps, request: BatchReadMemoryRequest, caller: CommandCaller): Promise<RangeOutcome[]> {
  checkRanges(request);
  const host = deps.hosts.require(parseVmName(request.vm, "vm"));
  const limits: BatchLimits = { pieces: createLimiter(PAGE_WINDOW), windows: createLimiter(BATCH_READ_WINDOWS) };
  return Promise.all(
    request.ranges.map((range, i) =>
      readRange(host, range, i, caller, limits).catch((err: unknown): RangeOutcome => {
        // A transport failure fails the call; anything else fails only its range.
        if (!host.channel.isOpen) throw err;
        return { error: statusToProto(err, { vm: host.uuid }) };
      }),
    ),
  );
}

/** The BatchReadMemoryResponse message of a batch read's outcomes (the session stream's result). */
export function batchReadResponse(outcomes: readonly RangeOutcome[]): BatchReadMemoryResponse {
  return create(BatchReadMemoryResponseSchema, {
    results: outcomes.map((outcome) => {
      if ("error" in outcome) return create(MemoryRangeResultSchema, { result: { case: "error", value: outcome.error } });
      const data = new Uint8Array(outcome.dataBytes);
      let at = 0;
      for (const piece of outcome.data) {
        data.set(piece, at);
        at += piece.length;
      }
      return create(MemoryRangeResultSchema, { result: { case: "data", value: data }, holes: outcome.holes.map((h) => create(MemoryHoleSchema, h)) });
    }),
  });
}

/** The unary BatchReadMemory handler. */
export function batchReadHandler(deps: RpcDeps) {
  return unary(
    deps,
    "batchReadMemory",
    async (call: ServerUnaryCall<BatchReadMemoryRequest, BatchReadMemoryResponse>) => {
      // The whole response is held at once, until it is written out (call-end.ts): its bytes count
      // against the bulk-bytes quota until then.
      let bytes = 0;
      for (const range of call.request.ranges) bytes += Number(range.length);
      const lease = quotasOf(deps).acquire("bulkBytes", ownerOf(principalOf(call)), Math.min(bytes, MAX_BATCH_BYTES));
      try {
        const outcomes = await batchRead(deps, call.request, { timeoutMs: callTimeoutMs(call, deps.requestTimeoutMs), signal: cancellationOf(call) });
        // The service definition's serializer writes pre-encoded messages as they are.
        const response = encodeBatchReadResponse(outcomes) as unknown as BatchReadMemoryResponse;
        atCallEnd(call.metadata, lease.release);
        return response;
      } catch (err) {
        lease.release();
        throw err;
      }
    },
    (request) => vmContext(request.vm),
  );
}
