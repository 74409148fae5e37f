// SPDX-License-Identifier: Apache-2.0
/**
 * Issue 15: events a KVMI kernel would never send close that VM's connection as a protocol error
 * instead of being accepted. A vCPU blocks on its one event until the reply, so a second event on
 * a vCPU that still waits, an event seq already pending elsewhere, or a vCPU index the VM does not
 * have all mean the peer is not a kernel the bridge can trust. Before the fix, the second event
 * replaced the first in the pending table and the first one's deadline timer stayed armed.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EventType, State } from "@kvmi/proto";
import { encodeEvent, eventById, v9, v9Ids, zeroValue } from "@kvmi/kvm-bridge/wire";
import { Role, startHarness, waitUntil } from "../support/bridge-harness.js";
import type { Harness } from "../support/bridge-harness.js";
import { fakeHook } from "../support/fault-tools.js";
import type { FakeVm } from "../support/fault-tools.js";

let h: Harness;

beforeAll(async () => {
  h = await startHarness({ vms: 1, bridgeArgs: ["--event-timeout-ms", "5000"] });
});

afterAll(async () => {
  await h?.stop();
});

/** A hypercall event (no payload) from a fake kernel. */
function hypercall(seq: number, vcpu: number): Uint8Array {
  const spec = eventById(v9, v9Ids.KVMI_EVENT_HYPERCALL)!;
  const arch = (zeroValue(v9.layouts.event) as { arch: Record<string, unknown> }).arch;
  return encodeEvent(v9, spec, seq, vcpu, arch);
}

async function hookedFake(): Promise<FakeVm> {
  const fake = await fakeHook(h.kvmiPath, { vcpus: 2 });
  await waitUntil(async () => (await h.client.unary("getVm", { name: `vms/${fake.uuid}` }, { deadlineMs: 1000 })).vm?.state === State.HOOKED, "the fake VM hooked");
  return fake;
}

describe("invalid events close the VM's connection", () => {
  it.each([
    ["a vCPU index the VM does not have", [[1, 2]]],
    ["a second event on a vCPU that still waits for its reply", [[1, 0], [2, 0]]],
    ["a seq already pending on another vCPU", [[7, 0], [7, 1]]],
  ] as Array<[string, Array<[number, number]>]>)("%s", async (_what, events) => {
    const fake = await hookedFake();
    // A controller is attached, so a valid first event stays pending (waiting for its reply).
    const controller = h.client.openSession();
    await controller.attach(`vms/${fake.uuid}`, Role.CONTROLLER);
    for (const [seq, vcpu] of events) fake.peer.write(hypercall(seq, vcpu));
    expect(await fake.peer.waitClosed(3000), "the bridge closed the connection").toBe(true);
    expect(fake.peer.closedByBridge).toBe(true);
    const closed = await controller.closed(3000);
    expect(closed.code, "the session ends when the VM's socket closes").not.toBe(0);
    const host = h.bridge.hosts.get(fake.uuid);
    expect(host === undefined || !host.channel.isOpen).toBe(true);
    // The emulated VM next to it is untouched.
    expect((await h.client.unary("getVmInfo", { vm: h.vmName(0) })).vcpuCount).toBe(2);
  });

  it("accepts one event per vCPU with distinct seqs (the valid case stays open)", async () => {
    const fake = await hookedFake();
    const controller = h.client.openSession();
    await controller.attach(`vms/${fake.uuid}`, Role.CONTROLLER);
    fake.peer.write(hypercall(1, 0));
    fake.peer.write(hypercall(2, 1));
    const first = await controller.event((e) => e.type === EventType.HYPERCALL && e.vcpu === 0);
    const second = await controller.event((e) => e.type === EventType.HYPERCALL && e.vcpu === 1);
    expect([first.seq, second.seq]).toEqual([1, 2]);
    expect(await fake.peer.waitClosed(100)).toBe(false);
    controller.cancel();
    fake.peer.destroy();
  });
});
