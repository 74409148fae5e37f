// SPDX-License-Identifier: Apache-2.0
/**
 * Faults in the middle of bulk reads, which keep bursts of page reads in flight (a window being
 * sent and the next one being read): a client that cancels a DumpMemory leaves nothing pending on
 * the KVMI socket, and a device manager that drops mid-dump ends the stream with UNAVAILABLE at once
 * instead of leaving the client waiting.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { Metadata } from "@grpc/grpc-js";
import type { ClientReadableStream, ServiceError } from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import { DumpMemoryRequestSchema } from "@kvmi/proto";
import type { DumpMemoryResponse } from "@kvmi/proto";
import { GrpcStatus, startHarness, waitUntil, withTimeout } from "../support/bridge-harness.js";
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

  it("a client that stops reading stops the dump's page reads: the bridge holds a bounded amount, then finishes", async () => {
    const target = host();
    let pagesRequested = 0;
    const original = target.commandBatch.bind(target);
    const spy = vi.spyOn(target, "commandBatch").mockImplementation((name, requests, vcpu, caller) => {
      pagesRequested += requests.length;
      return original(name, requests, vcpu, caller);
    });
    try {
      const stream = startDump();
      let received = 0;
      const ended = new Promise<ServiceError | undefined>((resolve) => {
        stream.on("error", (err: ServiceError) => resolve(err));
        stream.on("end", () => resolve(undefined));
      });
      stream.on("data", (response: DumpMemoryResponse) => {
        received += response.data.length;
        if (received === 1 << 20) stream.pause();
      });
      await waitUntil(() => received >= 1 << 20, "the first MiB to arrive");
      // The reads stop while nobody reads: the count stays the same over 300 ms.
      let seen = -1;
      await waitUntil(
        async () => {
          const now = pagesRequested;
          await new Promise((resolve) => setTimeout(resolve, 300));
          const stable = now === pagesRequested && now === seen;
          seen = now;
          return stable;
        },
        "the page reads to stop while the client does not read",
        { timeoutMs: 10_000 },
      );
      // What is read but not taken by the client: the bursts read ahead, the chunk, what grpc-js and
      // HTTP/2 buffer on both sides. A bound far below the dump's 48 MiB.
      const heldBytes = pagesRequested * 4096 - received;
      expect(heldBytes).toBeLessThan(8 << 20);
      stream.resume();
      expect(await withTimeout(ended, 20_000, "the resumed dump to end")).toBeUndefined();
      expect(received).toBe(48 << 20);
      expect(pagesRequested).toBe((48 << 20) / 4096);
    } finally {
      spy.mockRestore();
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
