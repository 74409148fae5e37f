// SPDX-License-Identifier: Apache-2.0
/**
 * Bulk memory access built on KVMI_VM_READ_PHYSICAL, which reads at most one page per message
 * (kvmi-abi §4 id 6): BatchReadMemory (many ranges of any length, physical or virtual, pages read
 * in parallel on the socket) and DumpMemory (a server stream of chunks with progress).
 */
import { create } from "@bufbuild/protobuf";
import type { ServerUnaryCall, ServerWritableStream } from "@grpc/grpc-js";
import { KvmiArgumentError, KvmiRemoteError } from "@kvmi/kvm-bridge";
import { commandByOp, errno } from "@kvmi/kvm-bridge/wire";
import { AddressSpace, BatchReadMemoryResponseSchema, HoleReason, MemoryHoleSchema, MemoryRangeResultSchema } from "@kvmi/proto";
import type {
  BatchReadMemoryRequest,
  BatchReadMemoryResponse,
  DumpMemoryRequest,
  DumpMemoryResponse,
  MemoryRange,
} from "@kvmi/proto";
import { encodeBatchReadResponse, encodeDumpChunk } from "./bulk-encoding.js";
import type { HoleFields, RangeOutcome } from "./bulk-encoding.js";
import { checkVcpuIndex } from "../mapping/bridge-error.js";
import { parseVmName } from "../mapping/resource-names.js";
import { statusToProto } from "../mapping/status.js";
import type { VmHost } from "../vm/vm-host.js";
import { ownerOf, principalOf } from "./principals.js";
import type { RpcDeps } from "./call-context.js";
import { abortSignalOf, callTimeoutMs, failStream, failure, markSettled, quotasOf, unary } from "./call-context.js";
import { QuotaExceededError } from "../mapping/bridge-error.js";
import type { QuotaLease } from "./quotas.js";
import type { CommandCaller } from "./command-rpcs.js";
import { walkPageTables } from "../vm/page-walk.js";

const PAGE = 4096n;
const PAGE_BYTES = 4096;
const MAX_RANGES = 1024;
/** Default cap of a batch, so the response fits gRPC's 4 MiB default message size. */
export const MAX_BATCH_BYTES = 3 * 1024 * 1024;
const DEFAULT_CHUNK = 256 * 1024;
const MAX_CHUNK = 2 * 1024 * 1024;
/**
 * Page reads a dump or a batch keeps in flight on the KVMI socket: enough to keep the socket busy,
 * few enough that a large batch does not queue thousands of commands at once.
 */
const PAGE_WINDOW = 64;
/**
 * Bursts of {@link PAGE_WINDOW} pages a dump or a batch keeps in flight: while gRPC sends one chunk
 * the next bursts are already on the KVMI socket, so it never idles (measured in
 * docs/performance.md; 3 × 64 pages stay below the channel's 256 in-flight slots, leaving room for
 * the controller's own commands). A dump holds at most this many bursts beside its chunk.
 */
const READ_AHEAD_BURSTS = 3;
/**
 * Windows of page reads one batch read keeps going at once ({@link READ_AHEAD_BURSTS}); each may wait
 * for the channel's slots with the caller's AbortSignal (one listener per waiting window).
 */
export const BATCH_READ_WINDOWS = READ_AHEAD_BURSTS;
const UNMAPPED = (1n << 64n) - 1n;
/** A dump that finds only holes still reports progress at least every this many windows (16 MiB). */
const PROGRESS_EVERY_WINDOWS = 64;
/** Default of `--dump-max-hole-bytes`: unbacked bytes in a row after which a dump stops. */
export const DEFAULT_DUMP_MAX_HOLE_BYTES = 4 * 1024 * 1024 * 1024;

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

/** True for the kernel's answer to a read of a page no memslot backs (-KVM_ENOENT). */
function isNotBacked(err: unknown): boolean {
  return err instanceof KvmiRemoteError && err.errno === errno.KVM_ENOENT;
}

/**
 * Reads one page piece; undefined for a page guest memory does not back (KVM_ENOENT). The caller's
 * AbortSignal is checked here rather than handed to every page command: a batch has thousands.
 */
async function readPhysical(host: VmHost, gpa: bigint, size: number, caller: CommandCaller): Promise<Uint8Array | undefined> {
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
async function readPhysicalPieces(host: VmHost, reads: ReadonlyArray<{ gpa: bigint; size: number }>, caller: CommandCaller): Promise<Array<Uint8Array | undefined>> {
  caller.signal?.throwIfAborted();
  const replies = await host.commandBatch("KVMI_VM_READ_PHYSICAL", reads, undefined, caller);
  return replies.map((reply) => {
    if (!(reply instanceof Error)) return reply.data;
    if (isNotBacked(reply)) return undefined;
    throw reply;
  });
}

function hole(address: bigint, length: number, reason: HoleReason): HoleFields {
  return { address, length: BigInt(length), reason };
}

/** Coalesces adjacent holes of the same reason. */
function coalesce(holes: HoleFields[]): HoleFields[] {
  const out: HoleFields[] = [];
  for (const h of holes.sort((a, b) => (a.address < b.address ? -1 : 1))) {
    const last = out.at(-1);
    if (last !== undefined && last.reason === h.reason && last.address + last.length === h.address) last.length += h.length;
    else out.push(h);
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

/** The VM a memory request names, for ErrorInfo metadata; nothing when the name does not parse. */
function vmContext(name: string): { vm?: string } {
  try {
    return { vm: parseVmName(name, "vm") };
  } catch {
    return {};
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
      // The whole response is held at once: its bytes count against the bulk-bytes quota.
      let bytes = 0;
      for (const range of call.request.ranges) bytes += Number(range.length);
      const lease = quotasOf(deps).acquire("bulkBytes", ownerOf(principalOf(call)), Math.min(bytes, MAX_BATCH_BYTES));
      try {
        const outcomes = await batchRead(deps, call.request, { timeoutMs: callTimeoutMs(call, deps.requestTimeoutMs), signal: abortSignalOf(call) });
        // The service definition's serializer writes pre-encoded messages as they are.
        return encodeBatchReadResponse(outcomes) as unknown as BatchReadMemoryResponse;
      } finally {
        lease.release();
      }
    },
    (request) => vmContext(request.vm),
  );
}

/**
 * DumpMemory: reads pages in bursts of {@link PAGE_WINDOW} ({@link READ_AHEAD_BURSTS} in flight while a
 * chunk is sent), emits contiguous readable runs as chunks encoded around the reply buffers,
 * reports holes and progress, and waits for the client to drain before reading on, so a slow client
 * never makes the bridge buffer more than the bursts read ahead beside the chunk.
 */
export function dumpMemoryHandler(deps: RpcDeps) {
  return (call: ServerWritableStream<DumpMemoryRequest, DumpMemoryResponse>): void => {
    const signal = abortSignalOf(call);
    let lease: QuotaLease;
    try {
      // What a dump holds at most: the bursts read ahead and the chunk being filled.
      const chunkSize = Math.min(call.request.chunkSize === 0 ? DEFAULT_CHUNK : call.request.chunkSize, MAX_CHUNK);
      lease = quotasOf(deps).acquire("bulkBytes", ownerOf(principalOf(call)), chunkSize + READ_AHEAD_BURSTS * PAGE_WINDOW * Number(PAGE));
    } catch (err) {
      failStream(call, failure(deps, "dumpMemory", err, vmContext(call.request.vm)));
      return;
    }
    dump(deps, call, signal).then(
      () => {
        lease.release();
        markSettled(call);
        call.end();
      },
      (err: unknown) => {
        lease.release();
        if (signal.aborted) return;
        const status = failure(deps, "dumpMemory", err, vmContext(call.request.vm));
        failStream(call, status);
      },
    );
  };
}

/**
 * The first address past guest memory, for a dump without a length: GET_MAX_GFN where the VM's
 * dialect has it; otherwise (v12) what QEMU's handshake reported (max-gpa, or the end of the e820
 * map); otherwise GET_MAX_GFN's FAILED_PRECONDITION NOT_IN_DIALECT tells the client to give a length.
 */
async function memoryEnd(deps: RpcDeps, uuid: string, getMaxGfn: () => Promise<{ gfn: bigint }>): Promise<bigint> {
  const dialect = deps.registry.channel(uuid)?.dialect;
  if (dialect === undefined || commandByOp(dialect, "GET_MAX_GFN") !== undefined) return (await getMaxGfn()).gfn * PAGE;
  const record = deps.registry.get(uuid);
  if (record?.maxGpa !== undefined) return record.maxGpa;
  const e820End = (record?.e820 ?? []).reduce((end, entry) => (entry.address + entry.length > end ? entry.address + entry.length : end), 0n);
  if (e820End > 0n) return e820End;
  return (await getMaxGfn()).gfn * PAGE;
}

async function dump(deps: RpcDeps, call: ServerWritableStream<DumpMemoryRequest, DumpMemoryResponse>, signal: AbortSignal): Promise<void> {
  const request = call.request;
  const chunkSize = request.chunkSize === 0 ? DEFAULT_CHUNK : request.chunkSize;
  if (chunkSize % 4096 !== 0 || chunkSize > MAX_CHUNK) {
    throw new KvmiArgumentError("chunk_size", "chunk_size must be a multiple of 4096 between 4096 and 2097152");
  }
  if (request.startGpa % PAGE !== 0n) throw new KvmiArgumentError("start_gpa", "start_gpa must be a multiple of 4096");
  if (request.length % PAGE !== 0n) throw new KvmiArgumentError("length", "length must be a multiple of 4096");
  const uuid = parseVmName(request.vm, "vm");
  const host = deps.hosts.require(uuid);
  const caller = { timeoutMs: deps.requestTimeoutMs, signal };
  const end = request.length === 0n ? await memoryEnd(deps, uuid, () => host.command("KVMI_VM_GET_MAX_GFN", {}, undefined, caller)) : request.startGpa + request.length;
  const total = end > request.startGpa ? end - request.startGpa : 0n;
  /** The chunk being filled: the page views in address order, not yet copied anywhere. */
  let pages: Uint8Array[] = [];
  // Pages are counted from start_gpa in numbers: BigInt arithmetic per page showed in profiles.
  let chunkStartPage = 0;
  let chunkBytes = 0;
  let holes: HoleFields[] = [];
  let pagesDone = 0;
  const maxHoleBytes = BigInt(deps.dumpMaxHoleBytes ?? DEFAULT_DUMP_MAX_HOLE_BYTES);
  /** Unbacked bytes since the last readable page. */
  let holeRun = 0n;
  let windowsSinceFlush = 0;
  /** Adds one unbacked page, merged into the last hole when adjacent (so holes stay few). */
  const addHole = (gpa: bigint): void => {
    const last = holes.at(-1);
    if (last !== undefined && last.address + last.length === gpa) last.length += PAGE;
    else holes.push(hole(gpa, Number(PAGE), HoleReason.NOT_PRESENT));
  };
  const flush = async (): Promise<void> => {
    if (chunkBytes === 0 && holes.length === 0) return;
    windowsSinceFlush = 0;
    const message = encodeDumpChunk({
      gpa: chunkBytes === 0 ? holes[0]!.address : request.startGpa + BigInt(chunkStartPage) * PAGE,
      data: pages,
      dataBytes: chunkBytes,
      bytesDone: BigInt(pagesDone) * PAGE,
      bytesTotal: total,
      holes: coalesce(holes),
    });
    // The service definition's serializer writes pre-encoded messages as they are.
    const ok = call.write(message as unknown as DumpMemoryResponse);
    pages = [];
    chunkBytes = 0;
    holes = [];
    if (!ok) await new Promise<void>((resolve) => call.once("drain", resolve));
  };
  const step = PAGE * BigInt(PAGE_WINDOW);
  /** Reads the (up to) {@link PAGE_WINDOW} pages from `start`, in order. */
  const readWindow = (start: bigint): Promise<Array<Uint8Array | undefined>> => {
    const reads: Array<{ gpa: bigint; size: number }> = [];
    for (let gpa = start; gpa < end && reads.length < PAGE_WINDOW; gpa += PAGE) reads.push({ gpa, size: Number(PAGE) });
    return readPhysicalPieces(host, reads, caller);
  };
  // The next windows are read while this one is sent, so the socket never idles between windows.
  const ahead: Array<Promise<Array<Uint8Array | undefined>>> = [];
  let nextRead = request.startGpa;
  const readAhead = (): void => {
    while (ahead.length < READ_AHEAD_BURSTS && nextRead < end) {
      const burst = readWindow(nextRead);
      // Awaited in turn; a failure then fails the call, an abandoned call drops it.
      burst.catch(() => undefined);
      ahead.push(burst);
      nextRead += step;
    }
  };
  readAhead();
  for (let window = request.startGpa; window < end; window += step) {
    signal.throwIfAborted();
    const reads = await ahead.shift()!;
    readAhead();
    const firstPage = pagesDone;
    for (let i = 0; i < reads.length; i++) {
      const page = firstPage + i;
      const bytes = reads[i];
      pagesDone++;
      if (bytes === undefined) {
        addHole(window + BigInt(i) * PAGE);
        holeRun += PAGE;
        continue;
      }
      holeRun = 0n;
      // A chunk holds contiguous bytes only: a hole or a full chunk starts a new one.
      if (chunkBytes > 0 && (chunkStartPage + chunkBytes / PAGE_BYTES !== page || chunkBytes === chunkSize)) await flush();
      if (chunkBytes === 0) chunkStartPage = page;
      pages.push(bytes);
      chunkBytes += bytes.length;
    }
    if (chunkBytes === chunkSize) await flush();
    // Only holes for a while: tell the client how far the dump got (and that it is alive).
    if (++windowsSinceFlush >= PROGRESS_EVERY_WINDOWS) await flush();
    if (holeRun > maxHoleBytes) {
      await flush();
      throw new QuotaExceededError(
        "call",
        "dumpMaxHoleBytes",
        `the dump found ${holeRun} bytes in a row that no guest memory backs (up to 0x${(window + step).toString(16)}); dump the backed ranges (GetVmInfo / e820) instead`,
        { vm: host.uuid },
      );
    }
  }
  await flush();
}
