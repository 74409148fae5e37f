// SPDX-License-Identifier: Apache-2.0
/**
 * Fuzzing the device-manager side of the bridge's KVMI socket (fast-check, bounded: 200 runs or
 * 15 s): raw connections send random or broken handshakes, a valid handshake followed by random
 * KVMI frames (before the hook completed, and after the bridge hooked a fake VM), oversize headers
 * and truncated bodies. Each such connection is closed and forgotten (no host, no hooked record
 * left), and meanwhile two real VMs keep answering commands and delivering events to their
 * controllers, during the fuzz and after it.
 */
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import fc from "fast-check";
import { EventType, Role, State } from "@kvmi/proto";
import { CONTINUE, settle, startHarness, waitUntil } from "../support/bridge-harness.js";
import type { Harness, SessionClient } from "../support/bridge-harness.js";
import { arbitraryBadHandshake, arbitraryFrame, fakeHook, handshakeBytes, RawPeer } from "../support/fault-tools.js";

const RUNS = 200;
const TIME_LIMIT_MS = 15_000;

let h: Harness;
const controllers: SessionClient[] = [];

beforeAll(async () => {
  h = await startHarness({ vms: 2 });
  for (let i = 0; i < h.vms.length; i++) {
    const controller = await h.client.attach(h.vmName(i), Role.CONTROLLER);
    await controller.ok({ case: "controlVcpuEvents", value: { name: h.vcpuName(i, 0), event: EventType.HYPERCALL, enable: true } });
    controllers.push(controller);
  }
});

afterAll(async () => {
  await h?.stop();
});

/** One command and one event round trip on real VM `i`. */
async function exercise(i: number): Promise<void> {
  const controller = controllers[i]!;
  await controller.ok({ case: "getVmInfo", value: { vm: h.vmName(i) } }, 3000);
  const call = h.vms[i]!.guest.vcpus[0]!.hypercall(34n, 24n, 0n);
  controller.reply(await controller.event((e) => e.type === EventType.HYPERCALL, 3000), CONTINUE);
  const outcome = await settle(call, `VM ${i}'s VMCALL`, 3000);
  if (outcome.status !== "done") throw new Error(`VM ${i}'s VMCALL ended ${outcome.status}`);
}

/** Waits until nothing of the fake VM `uuid` is left: no host, no hooked record. */
async function expectForgotten(uuid: string): Promise<void> {
  await waitUntil(() => h.bridge.hosts.get(uuid) === undefined && h.bridge.registry.get(uuid)?.state !== "hooked", `fake VM ${uuid} forgotten`, {
    timeoutMs: 5000,
    intervalMs: 2,
  });
}

const scenario = fc.oneof(
  arbitraryBadHandshake.map((handshake) => ({ phase: "handshake" as const, handshake })),
  fc.array(arbitraryFrame, { minLength: 1, maxLength: 3 }).map((frames) => ({ phase: "before-hook" as const, frames })),
  fc.array(arbitraryFrame, { minLength: 1, maxLength: 3 }).map((frames) => ({ phase: "hooked" as const, frames })),
);

describe("fuzzing the KVMI socket", () => {
  it(`closes every malformed connection and keeps serving the real VMs (${RUNS} runs or ${TIME_LIMIT_MS / 1000} s)`, async () => {
    const failures: string[] = [];
    let rounds = 0;
    let stop = false;
    const traffic = (async () => {
      while (!stop) {
        try {
          await Promise.all([exercise(0), exercise(1)]);
          rounds++;
        } catch (err) {
          failures.push((err as Error).message);
          await new Promise((r) => setTimeout(r, 50));
        }
      }
    })();
    const seen = { handshake: 0, "before-hook": 0, hooked: 0, closedByBridge: 0 };

    try {
      await fc.assert(
        fc.asyncProperty(scenario, async (input) => {
          seen[input.phase]++;
          if (input.phase === "handshake") {
            const peer = await RawPeer.connect(h.kvmiPath);
            peer.write(input.handshake.bytes);
            await peer.waitClosed(20);
            if (peer.closedByBridge) seen.closedByBridge++;
            peer.destroy();
            return;
          }
          let peer: RawPeer;
          let uuid: string;
          if (input.phase === "before-hook") {
            uuid = randomUUID();
            peer = await RawPeer.connect(h.kvmiPath);
            peer.write(handshakeBytes(uuid));
            await peer.waitBytes(24, 5000);
          } else {
            const fake = await fakeHook(h.kvmiPath, { timeoutMs: 5000 });
            ({ peer, uuid } = fake);
            await waitUntil(() => h.bridge.hosts.get(uuid) !== undefined, "the fake VM's host", { timeoutMs: 5000, intervalMs: 2 });
          }
          for (const f of input.frames) peer.write(f.bytes);
          // An oversize header is fatal at once, whatever follows it; other input may or may not be.
          const fatal = input.frames[0]!.kind.startsWith("oversize");
          const closed = await peer.waitClosed(fatal ? 3000 : 20);
          if (peer.closedByBridge) seen.closedByBridge++;
          if (fatal) expect(closed, "the bridge closes on an oversize header").toBe(true);
          peer.destroy();
          await expectForgotten(uuid);
        }),
        { numRuns: RUNS, interruptAfterTimeLimit: TIME_LIMIT_MS },
      );
    } finally {
      stop = true;
      await traffic;
    }

    expect(failures, "the real VMs during the fuzz").toEqual([]);
    expect(rounds, "round trips on the real VMs during the fuzz").toBeGreaterThan(10);
    expect(seen.handshake + seen["before-hook"] + seen.hooked).toBeGreaterThan(50);
    expect(seen.closedByBridge).toBeGreaterThan(0);

    // And after it: only the two real VMs are hooked, still in their first generation, and serving.
    await waitUntil(() => h.bridge.hosts.all().length === 2, "only the real VMs left");
    expect(h.bridge.hosts.all().map((host) => host.uuid).sort()).toEqual(h.vms.map((vm) => vm.uuid).sort());
    expect(h.bridge.registry.list().filter((r) => r.state === "hooked").map((r) => r.uuid).sort()).toEqual(h.vms.map((vm) => vm.uuid).sort());
    for (let i = 0; i < 2; i++) {
      expect((await h.client.unary("getVm", { name: h.vmName(i) })).vm).toMatchObject({ state: State.HOOKED, generation: 1n, controllerAttached: true });
      await exercise(i);
    }
  });
});
