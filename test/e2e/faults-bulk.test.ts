// SPDX-License-Identifier: Apache-2.0
/**
 * Faults in the middle of bulk reads, which keep bursts of page reads in flight (a window being
 * sent and the next one being read): a client that cancels a DumpMemory leaves nothing pending on
 * the KVMI socket, and a device manager that drops mid-dump ends the stream with UNAVAILABLE at once
 * instead of leaving the client waiting.
 */
import http2 from "node:http2";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { Metadata } from "@grpc/grpc-js";
import type { ClientReadableStream, ServiceError } from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import { DumpMemoryRequestSchema } from "@kvmi/proto";
import type { DumpMemoryResponse } from "@kvmi/proto";
import { dumpLeaseBytes } from "@kvmi/service/testing";
import { GrpcStatus, startBareCall, startHarness, waitUntil, withTimeout } from "../support/bridge-harness.js";
import type { Harness } from "../support/bridge-harness.js";

let h: Harness;
const host = () => h.bridge.hosts.get(h.vms[0]!.uuid)!;

/** Starts a dump of the VM's first 48 MiB in 64 KiB chunks (thousands of page reads). */
function startDump(): ClientReadableStream<DumpMemoryResponse> {
  const request = create(DumpMemoryRequestSchema, { vm: h.vmName(0), startGpa: 1n << 20n, length: 48n << 20n, chunkSize: 65536 });
  return h.client.raw["dumpMemory"]!(request, new Metadata()) as ClientReadableStream<DumpMemoryResponse>;
}

beforeAll(async () => {
  h = await startHarness({ vms: [{ memoryMiB: 64 }] });
});

afterAll(async () => {
  await h?.stop();
});

describe("faults mid-dump", () => {
  it("a client that cancels leaves no page read pending, and the VM serves the next dump", async () => {
    const stream = startDump();
    let chunks = 0;
    const ended = new Promise<ServiceError | undefined>((resolve) => {
      stream.on("error", (err: ServiceError) => resolve(err));
      stream.on("end", () => resolve(undefined));
    });
    stream.on("data", () => {
      chunks++;
      if (chunks === 1) stream.cancel();
    });
    const err = await withTimeout(ended, 5_000, "the cancelled dump to end");
    expect(err?.code).toBe(GrpcStatus.CANCELLED);
    // The windows in flight are answered or abandoned; nothing is left on the socket.
    await waitUntil(() => host().channel.pendingCommands === 0, "no page read pending", { timeoutMs: 2_000 });
    expect(host().channel.isOpen).toBe(true);
    const { responses, status } = await h.client.dumpMemory({ vm: h.vmName(0), startGpa: 1n << 20n, length: 1n << 20n, chunkSize: 65536 });
    expect(status.code).toBe(GrpcStatus.OK);
    expect(responses.reduce((n, r) => n + r.data.length, 0)).toBe(1 << 20);
  });

  /** Counts the page reads the VM is asked for while `body` runs. */
  async function countingPageReads(body: (pagesRequested: () => number) => Promise<void>): Promise<number> {
    const target = host();
    let pagesRequested = 0;
    const original = target.commandBatch.bind(target);
    const spy = vi.spyOn(target, "commandBatch").mockImplementation((name, requests, vcpu, caller) => {
      pagesRequested += requests.length;
      return original(name, requests, vcpu, caller);
    });
    try {
      await body(() => pagesRequested);
      return pagesRequested;
    } finally {
      spy.mockRestore();
    }
  }

  /** Waits until the page-read count stays the same over two 300 ms looks. */
  async function readsStopped(pagesRequested: () => number): Promise<void> {
    let seen = -1;
    await waitUntil(
      async () => {
        const now = pagesRequested();
        await new Promise((resolve) => setTimeout(resolve, 300));
        const stable = now === pagesRequested() && now === seen;
        seen = now;
        return stable;
      },
      "the page reads to stop while the client does not read",
      { timeoutMs: 10_000 },
    );
  }

  it("a client that stops reading stops the dump's page reads: the bridge holds a bounded amount, then finishes", async () => {
    let received = 0;
    const pages = await countingPageReads(async (pagesRequested) => {
      const stream = startDump();
      const ended = new Promise<ServiceError | undefined>((resolve) => {
        stream.on("error", (err: ServiceError) => resolve(err));
        stream.on("end", () => resolve(undefined));
      });
      let paused = false;
      stream.on("data", (response: DumpMemoryResponse) => {
        received += response.data.length;
        if (!paused && received >= 1 << 20) {
          paused = true;
          stream.pause();
        }
      });
      await waitUntil(() => received >= 1 << 20, "the first MiB to arrive");
      await readsStopped(pagesRequested);
      // What is read but not taken by the client: the bursts read ahead, the chunks the dump holds,
      // what grpc-js and HTTP/2 buffer on both sides. A bound far below the dump's 48 MiB.
      expect(pagesRequested() * 4096 - received).toBeLessThan(8 << 20);
      stream.resume();
      expect(await withTimeout(ended, 20_000, "the resumed dump to end")).toBeUndefined();
    });
    expect(received).toBe(48 << 20);
    expect(pages).toBe((48 << 20) / 4096);
  });

  it("with 2 MiB chunks and a client that takes nothing past HTTP/2's first window, the bridge holds no more than the dump's lease", async () => {
    // A bare HTTP/2 client: no grpc-js buffering on the client side (its readable stream queues 16
    // messages, 32 MiB of 2 MiB chunks), so what the client has not taken sits in the bridge. The
    // bridge's side of grpc-js would itself queue 16 chunks before asking the dump to wait.
    const chunkSize = 2 << 20;
    const session = http2.connect(`http://${h.bridge.grpcTarget}`);
    try {
      let taken = 0;
      const pages = await countingPageReads(async (pagesRequested) => {
        const stream = startBareCall(session, "DumpMemory", DumpMemoryRequestSchema, { vm: h.vmName(0), startGpa: 1n << 20n, length: 48n << 20n, chunkSize });
        let grpcStatus: string | undefined;
        stream.on("trailers", (trailers) => (grpcStatus = String(trailers["grpc-status"])));
        const ended = new Promise<void>((resolve) => stream.on("close", resolve));
        // Take the first bytes, then stop: HTTP/2 lets the bridge send one window (64 KiB) more.
        await new Promise<void>((resolve) => stream.once("data", (chunk: Buffer) => ((taken += chunk.length), stream.pause(), resolve())));
        await readsStopped(pagesRequested);
        const held = pagesRequested() * 4096 - taken;
        expect(held).toBeLessThanOrEqual(dumpLeaseBytes(chunkSize) + (1 << 20));
        stream.on("data", (chunk: Buffer) => (taken += chunk.length));
        stream.resume();
        await withTimeout(ended, 20_000, "the resumed dump to end");
        expect(grpcStatus).toBe("0");
      });
      expect(pages).toBe((48 << 20) / 4096);
      // The 48 MiB of data and each response's few bytes of framing.
      expect(taken).toBeGreaterThan(48 << 20);
    } finally {
      session.close();
    }
  });

  it("a device manager that drops mid-dump ends the stream with UNAVAILABLE at once", async () => {
    const vm = h.vms[0]!;
    const stream = startDump();
    const ended = new Promise<ServiceError | undefined>((resolve) => {
      stream.on("error", (err: ServiceError) => resolve(err));
      stream.on("end", () => resolve(undefined));
    });
    let stopped: Promise<void> | undefined;
    stream.on("data", () => {
      stopped ??= vm.deviceManager.stop(); // QEMU killed: the socket drops, no PREUNHOOK
    });
    const t0 = performance.now();
    const err = await withTimeout(ended, 5_000, "the dump to end after the socket dropped");
    await stopped;
    expect(err?.code).toBe(GrpcStatus.UNAVAILABLE);
    // Well before any command deadline (30 s by default): the failure came from the socket closing.
    expect(performance.now() - t0).toBeLessThan(3_000);
    vm.deviceManager.start();
    await h.waitHooked(0);
  });
});
