// SPDX-License-Identifier: Apache-2.0
/**
 * The noisy-neighbour phase of `npm run bench` (issue 15): a well-behaved client's unary
 * GetVcpuInfo latency while the bridge is quiet, then while another client (its own HTTP/2
 * connection) misbehaves: hundreds of Session and WatchVms streams it never reads, a session that
 * sends BatchReadMemory commands and never reads the results (see UNREAD_BATCHES), and DumpMemory
 * calls over a terabyte of unbacked addresses. The report gives the p99 ratio.
 */
import { create } from "@bufbuild/protobuf";
import { Client, credentials, Metadata } from "@grpc/grpc-js";
import type { ClientDuplexStream, ClientReadableStream } from "@grpc/grpc-js";
import { AddressSpace, DumpMemoryRequestSchema, GetVcpuInfoRequestSchema, GetVmRequestSchema, Role, State, SessionRequestSchema, WatchVmsRequestSchema } from "@kvmi/proto";
import type { DumpMemoryResponse, SessionRequest, SessionResponse, WatchVmsResponse } from "@kvmi/proto";
import { BRIDGE } from "./lib/clients.js";
import { MEM_BASE, MiB } from "./perf-phases.js";
import type { Context } from "./perf-phases.js";

/** Silent Session streams and as many silent WatchVms streams the noisy client opens. */
const SILENT_STREAMS = 200;
/**
 * BatchReadMemory commands (1 MiB each) the noisy session sends and never reads; cancelling them
 * abandons thousands of page reads at once, which used to close the VM's KVMI connection (a late
 * reply taken for a protocol error). A command now holds its in-flight slot until the kernel
 * answers (docs/decisions/0140); the phase checks that the VM kept its connection.
 */
const UNREAD_BATCHES = 500;

/**
 * Samples each window takes at least, however long that lasts (up to {@link MAX_WINDOW_MS}): a
 * short window (`--quick`) while the noisy client floods the bridge may otherwise hold a single
 * call, and a p99 of one sample says nothing.
 */
const MIN_SAMPLES = 50;
const MAX_WINDOW_MS = 30_000;

/** Sequential calls for `ms`, and on until {@link MIN_SAMPLES} (bounded by {@link MAX_WINDOW_MS}); latencies in µs. */
async function sampleLoop(ms: number, once: () => Promise<unknown>): Promise<Float64Array> {
  const out: number[] = [];
  const start = performance.now();
  while (performance.now() - start < ms || (out.length < MIN_SAMPLES && performance.now() - start < MAX_WINDOW_MS)) {
    const t0 = performance.now();
    await once();
    out.push((performance.now() - t0) * 1000);
  }
  return Float64Array.from(out);
}

/** Starts the misbehaving client; `stop()` cancels everything it opened and closes its connection. */
function startNoise(target: string, vm: string): { stop(): void } {
  const client = new Client(target, credentials.createInsecure(), { "grpc.use_local_subchannel_pool": 1 });
  const streams: Array<{ cancel(): void }> = [];
  let running = true;
  const silence = <T extends { on(event: string, listener: () => void): unknown }>(stream: T): T => {
    stream.on("error", () => undefined);
    return stream;
  };
  const session = (): ClientDuplexStream<SessionRequest, SessionResponse> =>
    silence(client.makeBidiStreamRequest(BRIDGE.session.path, BRIDGE.session.requestSerialize, BRIDGE.session.responseDeserialize, new Metadata()));
  for (let i = 0; i < SILENT_STREAMS; i++) {
    const observer = session();
    observer.write(create(SessionRequestSchema, { message: { case: "attach", value: { vm, role: Role.OBSERVER } } }));
    const watcher: ClientReadableStream<WatchVmsResponse> = silence(
      client.makeServerStreamRequest(BRIDGE.watchVms.path, BRIDGE.watchVms.requestSerialize, BRIDGE.watchVms.responseDeserialize, create(WatchVmsRequestSchema, {})),
    );
    streams.push(observer, watcher);
  }
  const greedy = session();
  greedy.write(create(SessionRequestSchema, { message: { case: "attach", value: { vm, role: Role.OBSERVER } } }));
  const range = { address: BigInt(MEM_BASE), length: BigInt(MiB), space: AddressSpace.PHYSICAL };
  for (let id = 1n; id <= BigInt(UNREAD_BATCHES); id++) {
    greedy.write(create(SessionRequestSchema, { message: { case: "command", value: { id, request: { case: "batchReadMemory", value: { vm, ranges: [range] } } } } }));
  }
  streams.push(greedy);
  // Dumps over a terabyte of holes, one after the other (each ends at --dump-max-hole-bytes).
  const dump = (): void => {
    if (!running) return;
    const call: ClientReadableStream<DumpMemoryResponse> = silence(
      client.makeServerStreamRequest(
        BRIDGE.dumpMemory.path,
        BRIDGE.dumpMemory.requestSerialize,
        BRIDGE.dumpMemory.responseDeserialize,
        create(DumpMemoryRequestSchema, { vm, startGpa: 1n << 40n, length: 1n << 40n }),
      ),
    );
    call.on("data", () => undefined);
    call.on("status", () => setImmediate(dump));
    streams.push(call);
  };
  dump();
  return {
    stop: () => {
      running = false;
      for (const stream of streams) stream.cancel();
      client.close();
    },
  };
}

export async function noisyPhase(c: Context): Promise<void> {
  const vcpuInfo = create(GetVcpuInfoRequestSchema, { name: `${c.vm}/vcpus/0` });
  const once = (): Promise<unknown> => c.bridge.unary(BRIDGE.getVcpuInfo, vcpuInfo);
  const generation = async (): Promise<bigint | undefined> => {
    const { vm } = await c.bridge.unary(BRIDGE.getVm, create(GetVmRequestSchema, { vm: c.vm }));
    return vm?.state === State.HOOKED ? vm.generation : undefined;
  };
  const generationBefore = await generation();
  c.results.latency("bridge.noisy.quiet", "bridge unary GetVcpuInfo, quiet", await sampleLoop(c.settings.windowMs, once));
  const noise = startNoise(c.bridge.client.getChannel().getTarget().replace(/^dns:/, ""), c.vm);
  try {
    // Let the noisy client open its streams and fill its windows before measuring.
    await new Promise((resolve) => setTimeout(resolve, 500));
    c.results.latency("bridge.noisy.loud", "bridge unary GetVcpuInfo, neighbour misbehaving", await sampleLoop(c.settings.windowMs, once));
  } finally {
    noise.stop();
  }
  // The bridge drops the silent streams asynchronously; give it a moment before the next phase.
  await new Promise((resolve) => setTimeout(resolve, 500));
  // The abandoned reads' late replies must not have cost the VM its KVMI connection (a new
  // connection is a new generation).
  const generationAfter = await generation().catch((err: Error) => err.message);
  if (generationAfter !== generationBefore) {
    c.warnings.push(`noisy phase: the VM's KVMI connection did not survive the noisy client (generation ${String(generationBefore)} before, ${String(generationAfter)} after)`);
  }
}
