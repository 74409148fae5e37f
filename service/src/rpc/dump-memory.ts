// SPDX-License-Identifier: Apache-2.0
/**
 * DumpMemory: a server stream of guest-physical memory in chunks, with holes and progress. Apart
 * from BatchReadMemory (memory-rpcs.ts) because it streams: it reads ahead while a chunk is sent,
 * waits for the client to drain and stops on long unbacked runs, none of which a batch does.
 */
import type { ServerWritableStream } from "@grpc/grpc-js";
import { KvmiArgumentError } from "@kvmi/kvm-bridge";
import type { CancelSignal } from "@kvmi/kvm-bridge";
import { commandByOp } from "@kvmi/kvm-bridge/wire";
import { HoleReason } from "@kvmi/proto";
import type { DumpMemoryRequest, DumpMemoryResponse } from "@kvmi/proto";
import { encodeDumpChunk } from "./bulk-encoding.js";
import type { HoleFields } from "./bulk-encoding.js";
import { QuotaExceededError } from "../mapping/bridge-error.js";
import { parseVmName } from "../mapping/resource-names.js";
import { ownerOf, principalOf } from "./principals.js";
import type { RpcDeps } from "./call-context.js";
import { cancellationOf, failStream, failure, markSettled, quotasOf } from "./call-context.js";
import type { QuotaLease } from "./quotas.js";
import { PAGE, PAGE_WINDOW, READ_AHEAD_BURSTS, coalesce, hole, readPhysicalPieces, vmContext } from "./memory-reads.js";

const PAGE_BYTES = 4096;
const DEFAULT_CHUNK = 256 * 1024;
const MAX_CHUNK = 2 * 1024 * 1024;
/** A dump that finds only holes still reports progress at least every this many windows (16 MiB). */
const PROGRESS_EVERY_WINDOWS = 64;
/** Default of `--dump-max-hole-bytes`: unbacked bytes in a row after which a dump stops. */
export const DEFAULT_DUMP_MAX_HOLE_BYTES = 4 * 1024 * 1024 * 1024;
/**
 * Chunks handed to grpc-js and not yet written to the socket, at most: one being sent and one
 * waiting, so HTTP/2 never idles between chunks. grpc-js's own backpressure (`write()` returning
 * false) comes only after 16 queued messages, 32 MiB of 2 MiB chunks per dump, far more than the
 * bulk quota's lease; the dump waits on each chunk's write callback instead.
 */
export const DUMP_CHUNKS_QUEUED = 2;

/** What one dump holds at most (its bulk quota lease): queued chunks, the chunk being filled, the bursts read ahead. */
export function dumpLeaseBytes(chunkSize: number): number {
  return (DUMP_CHUNKS_QUEUED + 1) * chunkSize + READ_AHEAD_BURSTS * PAGE_WINDOW * Number(PAGE);
}

/**
 * DumpMemory: reads pages in bursts of {@link PAGE_WINDOW} ({@link READ_AHEAD_BURSTS} in flight while a
 * chunk is sent), emits contiguous readable runs as chunks encoded around the reply buffers,
 * reports holes and progress, and stops reading while {@link DUMP_CHUNKS_QUEUED} chunks wait for the
 * socket, so a slow client never makes the bridge hold more than {@link dumpLeaseBytes}.
 */
export function dumpMemoryHandler(deps: RpcDeps) {
  return (call: ServerWritableStream<DumpMemoryRequest, DumpMemoryResponse>): void => {
    const signal = cancellationOf(call);
    let lease: QuotaLease;
    try {
      const chunkSize = Math.min(call.request.chunkSize === 0 ? DEFAULT_CHUNK : call.request.chunkSize, MAX_CHUNK);
      lease = quotasOf(deps).acquire("bulkBytes", ownerOf(principalOf(call)), dumpLeaseBytes(chunkSize));
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

async function dump(deps: RpcDeps, call: ServerWritableStream<DumpMemoryRequest, DumpMemoryResponse>, signal: CancelSignal): Promise<void> {
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
  const sending = new SendQueue(call, signal);
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
    pages = [];
    chunkBytes = 0;
    holes = [];
    // The service definition's serializer writes pre-encoded messages as they are.
    await sending.write(message as unknown as DumpMemoryResponse);
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
  await sending.drained();
}

/**
 * The chunks of one dump between the dump loop and the socket: at most {@link DUMP_CHUNKS_QUEUED}
 * written and not yet sent (grpc-js calls a message's write callback once HTTP/2 has written it
 * out). A client that stops reading therefore stops the dump here, with a bounded amount held. A
 * wait ends when the call is cancelled (grpc-js then calls no more write callbacks) or fails.
 */
class SendQueue {
  private unsent = 0;
  private wake: (() => void) | undefined;
  private failure: Error | undefined;
  private readonly onWritten = (err?: Error | null): void => {
    this.unsent--;
    if (err) this.failure ??= err;
    this.wakeUp();
  };
  private readonly wakeUp = (): void => {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  };

  constructor(
    private readonly call: ServerWritableStream<DumpMemoryRequest, DumpMemoryResponse>,
    private readonly signal: CancelSignal,
  ) {
    signal.addEventListener("abort", this.wakeUp, { once: true });
    call.once("close", this.wakeUp);
  }

  /** Writes one message once fewer than {@link DUMP_CHUNKS_QUEUED} are unsent. */
  async write(message: DumpMemoryResponse): Promise<void> {
    await this.until(DUMP_CHUNKS_QUEUED - 1);
    this.unsent++;
    this.call.write(message, this.onWritten);
  }

  /** Waits until every written message is out, so the dump's lease covers them until then. */
  drained(): Promise<void> {
    return this.until(0);
  }

  private async until(unsent: number): Promise<void> {
    while (this.unsent > unsent) {
      this.check();
      await new Promise<void>((resolve) => (this.wake = resolve));
    }
    this.check();
  }

  private check(): void {
    this.signal.throwIfAborted();
    if (this.failure !== undefined) throw this.failure;
    if (this.call.destroyed) throw new Error("the dump's stream closed before its chunks were sent");
  }
}
