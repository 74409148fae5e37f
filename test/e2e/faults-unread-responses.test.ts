// SPDX-License-Identifier: Apache-2.0
/**
 * A client that asks for bulk reads and never reads the responses: each unary response waits in
 * the bridge for the client's HTTP/2 window. Its bytes stay counted against the client's bulk
 * quota until they are written out or the call ends (service/src/server/call-end.ts), so such a
 * client holds at most its quota in the bridge, and gets it back when it goes.
 */
import http2 from "node:http2";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AddressSpace, BatchReadMemoryRequestSchema } from "@kvmi/proto";
import { GrpcStatus, startBareCall, startHarness, waitUntil } from "../support/bridge-harness.js";
import type { Harness } from "../support/bridge-harness.js";

const MIB = 1 << 20;
const QUOTA = 16 * MIB;
const READ = 3 * MIB;

let h: Harness;

beforeAll(async () => {
  h = await startHarness({ vms: [{ memoryMiB: 64 }], bridgeArgs: ["--max-bulk-bytes-per-identity", String(QUOTA)] });
});

afterAll(async () => {
  await h?.stop();
});

describe("a client that never reads its bulk responses", () => {
  it("holds at most its bulk quota in the bridge, one call after another, and gets it back when it goes", async () => {
    // A bare HTTP/2 client that reads nothing: HTTP/2 lets the bridge send it 64 KiB per stream.
    const session = http2.connect(`http://${h.bridge.grpcTarget}`);
    const statuses: Array<number | undefined> = [];
    try {
      for (let i = 0; i < 12; i++) {
        const stream = startBareCall(session, "BatchReadMemory", BatchReadMemoryRequestSchema, {
          vm: h.vmName(0),
          ranges: [{ address: BigInt(MIB), length: BigInt(READ), space: AddressSpace.PHYSICAL }],
        });
        stream.pause();
        // One call after another: each has finished reading guest memory before the next starts.
        const headers = new Promise<http2.IncomingHttpHeaders>((resolve) => stream.once("response", resolve));
        const status = (await headers)["grpc-status"];
        // A response on its way has no status yet; a refused call is trailers-only.
        statuses.push(status === undefined ? undefined : Number(status));
      }
      const answered = statuses.filter((s) => s === undefined).length;
      const refused = statuses.filter((s) => s === GrpcStatus.RESOURCE_EXHAUSTED).length;
      // Five responses of 3 MiB fit the 16 MiB quota; every later call is refused while they wait.
      expect(answered).toBe(Math.floor(QUOTA / READ));
      expect(refused).toBe(12 - answered);
    } finally {
      session.destroy();
    }
    // The calls ended with the connection: the quota is free again.
    await waitUntil(async () => {
      try {
        const response = await h.client.unary("batchReadMemory", { vm: h.vmName(0), ranges: [{ address: BigInt(MIB), length: BigInt(READ), space: AddressSpace.PHYSICAL }] });
        return response.results[0]?.result.case === "data";
      } catch {
        return false;
      }
    }, "a read of the same size to be served after the client went");
  });
});
