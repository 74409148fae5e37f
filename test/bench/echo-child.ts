// SPDX-License-Identifier: Apache-2.0
/**
 * Baseline process: a bare grpc-js server (unary echo, bidi echo, server stream) on TCP loopback,
 * in its own process like the bridge, so the baseline has the bridge's process topology.
 */
import { Server, ServerCredentials } from "@grpc/grpc-js";
import type { sendUnaryData, ServerDuplexStream, ServerUnaryCall, ServerWritableStream } from "@grpc/grpc-js";
import { ECHO_SERVER_OPTIONS, ECHO_SERVICE } from "./lib/echo-protocol.js";
import { serve } from "./lib/ipc.js";
import { pseudoRandomBytes } from "./lib/pseudo-random.js";

const responses = new Map<number, Buffer>();
/**
 * Bulk answers are slices of 16 MiB of written memory, taken in turn, as the bridge's bulk reads
 * take distinct pages of the guest RAM the bench filled (lib/pseudo-random.ts: a buffer never
 * written is one shared zero page, always in cache).
 */
const BULK_MIN_BYTES = 64 * 1024;
const SOURCE_BYTES = 16 * 1024 * 1024;
const source = Buffer.from(pseudoRandomBytes(SOURCE_BYTES, 1).buffer);
let nextOffset = 0;
/** An answer of `size` bytes (the server only reads the size it is asked for). */
function response(size: number): Buffer {
  if (size >= BULK_MIN_BYTES && size <= SOURCE_BYTES) {
    if (nextOffset + size > SOURCE_BYTES) nextOffset = 0;
    const b = source.subarray(nextOffset, nextOffset + size);
    nextOffset += size;
    return b;
  }
  // Small answers (the latency baselines): one cached buffer per size, as before.
  let b = responses.get(size);
  if (b === undefined) {
    b = Buffer.alloc(size);
    responses.set(size, b);
  }
  return b;
}

const server = new Server(ECHO_SERVER_OPTIONS);
server.addService(ECHO_SERVICE, {
  unary: (call: ServerUnaryCall<Buffer, Buffer>, callback: sendUnaryData<Buffer>) => {
    callback(null, response(call.request.readUInt32LE(0)));
  },
  bidi: (call: ServerDuplexStream<Buffer, Buffer>) => {
    call.on("data", (request: Buffer) => call.write(response(request.readUInt32LE(0))));
    call.on("end", () => call.end());
    call.on("error", () => undefined);
  },
  stream: (call: ServerWritableStream<Buffer, Buffer>) => {
    const size = call.request.readUInt32LE(0);
    const total = call.request.readUInt32LE(4);
    let sent = 0;
    // Like the bridge's DumpMemory: write until grpc-js asks to wait, resume on drain.
    const pump = (): void => {
      while (sent < total) {
        const n = Math.min(size, total - sent);
        sent += n;
        if (!call.write(response(n))) {
          call.once("drain", pump);
          return;
        }
      }
      call.end();
    };
    call.on("error", () => undefined);
    pump();
  },
});

serve({
  start: async (): Promise<{ target: string }> => {
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
    );
    return { target: `127.0.0.1:${port}` };
  },
  memory: () => process.memoryUsage(),
  exit: () => server.forceShutdown(),
});
