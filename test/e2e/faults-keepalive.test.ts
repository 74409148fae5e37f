// SPDX-License-Identifier: Apache-2.0
/**
 * "Keepalive lost" is one of the ways a controller goes away (issue: stream closed, client killed,
 * keepalive lost). A controller process that freezes (SIGSTOP) keeps its TCP connection open and
 * never closes its stream, so only the server's HTTP/2 keepalive can tell: with short keepalive
 * settings the bridge drops the connection, the session ends, and the `release` policy undoes the
 * controller's hooks while the process is still frozen.
 */
import { afterAll, afterEach, beforeAll, expect, it } from "vitest";
import { startHarness, waitUntil } from "../support/bridge-harness.js";
import type { Harness } from "../support/bridge-harness.js";
import { cleanState, guestState, hookPlan, prepareGuest, ramDigest, startControllerProcess } from "../support/fault-tools.js";
import type { ControllerProcess } from "../support/fault-tools.js";

const KEEPALIVE_MS = 300;

let h: Harness;
let child: ControllerProcess | undefined;

const vm = () => h.vms[0]!;
const host = () => h.bridge.hosts.get(vm().uuid)!;

beforeAll(async () => {
  h = await startHarness({
    vms: 1,
    bridgeArgs: ["--grpc-keepalive-time-ms", String(KEEPALIVE_MS), "--grpc-keepalive-timeout-ms", String(KEEPALIVE_MS)],
  });
  prepareGuest(vm());
});

afterEach(() => {
  child?.child.kill("SIGKILL");
  child = undefined;
});

afterAll(async () => {
  await h?.stop();
});

it("undoes a frozen controller's hooks once its keepalive pings go unanswered", async () => {
  const before = ramDigest(vm());
  child = await startControllerProcess(h.bridge.grpcTarget, h.vmName(0), hookPlan(h.vmName(0)));
  expect(host().sessions.map((s) => s.role)).toEqual(["controller"]);
  expect(host().hookLedger.isEmpty).toBe(false);

  const frozen = Date.now();
  child.child.kill("SIGSTOP");
  // The process is alive and its socket open: only the missing ping acknowledgements reveal it.
  await waitUntil(() => host().sessions.length === 0 && host().hookLedger.isEmpty, "the keepalive to drop the frozen controller", {
    timeoutMs: 10_000,
  });
  expect(Date.now() - frozen).toBeGreaterThanOrEqual(KEEPALIVE_MS);
  expect(guestState(vm())).toEqual(cleanState(vm(), before));
  expect(child.child.exitCode).toBeNull();
});
