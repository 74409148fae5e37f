// SPDX-License-Identifier: Apache-2.0
/**
 * The hook ledger under `--controller-gone-policy keep`: when the controller goes away its hooks
 * stay in the guest and the bridge keeps answering their events with the default action (the guest
 * never stalls), the VM stays hooked for the next controller; but on unhook (and shutdown, and
 * ReleaseVm) the ledger is still undone before the socket closes: the guest must not keep a
 * breakpoint nobody answers.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EventType, State } from "@kvmi/proto";
import { Role, settle, startHarness, waitUntil } from "../support/bridge-harness.js";
import type { Harness } from "../support/bridge-harness.js";
import { captureAtUnhook, cleanState, guestState, hookPlan, prepareGuest, ramDigest, SPOTS } from "../support/fault-tools.js";

let h: Harness;
/** Guest RAM before any controller touched it. */
let pristine: string;

const vm = () => h.vms[0]!;
const host = () => h.bridge.hosts.get(vm().uuid);

beforeAll(async () => {
  h = await startHarness({ vms: 1, bridgeArgs: ["--controller-gone-policy", "keep", "--event-timeout-ms", "200", "--unhook-deadline-ms", "500"] });
  prepareGuest(vm());
  pristine = ramDigest(vm());
});

afterAll(async () => {
  await h?.stop();
});

describe("policy keep", () => {
  it("leaves the hooks of a departed controller in place and answers their events with the default action", async () => {
    const controller = await h.attach(0, Role.CONTROLLER);
    for (const request of hookPlan(h.vmName(0))) await controller.ok(request);
    const hooked = guestState(vm());
    controller.cancel();
    await controller.closed();
    await waitUntil(() => host()!.sessions.length === 0, "the controller detached");

    // Everything is still there.
    expect(guestState(vm())).toEqual(hooked);
    expect(hooked.ramDigest).not.toBe(pristine);
    // The guest runs on: the bridge answers at once with the guest's own values.
    const scrape = await h.metrics();
    const autoBefore = scrape.value("kvmi_bridge_event_auto_replies_total", { event: "cr" }) + scrape.value("kvmi_bridge_event_auto_replies_total", { event: "msr" });
    const [v0, v1] = vm().guest.vcpus;
    const cr3 = v0!.state.sregs.cr3;
    const started = Date.now();
    expect(await settle(v0!.writeCr(3, cr3 + 0x1000n), "MOV CR3", 2000)).toEqual({ status: "done", value: cr3 + 0x1000n });
    expect(await settle(v1!.writeMsr(SPOTS.MSR_LSTAR, 0xffffffff81000000n), "WRMSR", 2000)).toEqual({ status: "done", value: 0xffffffff81000000n });
    expect(Date.now() - started).toBeLessThan(1000);
    const after = await h.metrics();
    expect(
      after.value("kvmi_bridge_event_auto_replies_total", { event: "cr" }) + after.value("kvmi_bridge_event_auto_replies_total", { event: "msr" }) - autoBefore,
    ).toBe(2);
    await settle(v0!.writeCr(3, cr3), "MOV CR3 back", 2000);
    expect((await h.client.unary("getVm", { name: h.vmName(0) })).vm).toMatchObject({ state: State.HOOKED, generation: 1n, controllerAttached: false });
  });

  it("still undoes the kept hooks before the socket closes when the device manager unhooks", async () => {
    // The previous test's controller left INT3s, page restrictions and interceptions behind.
    expect(vm().guest.memory.read(SPOTS.BP_GPA, 1)).toMatchObject({ ok: true, bytes: Uint8Array.of(SPOTS.INT3) });
    const capture = captureAtUnhook(vm());
    try {
      // A later controller comes and goes, changing nothing itself.
      const visitor = await h.attach(0, Role.CONTROLLER);
      await visitor.ok({ case: "controlVcpuEvents", value: { name: h.vcpuName(0, 1), event: EventType.HYPERCALL, enable: true } });
      await visitor.ok({ case: "controlVcpuEvents", value: { name: h.vcpuName(0, 1), event: EventType.HYPERCALL, enable: false } });
      visitor.release();
      await visitor.closed();

      const outcome = await settle(vm().runAction("pause"), "the pause", 3000);
      expect(outcome).toMatchObject({ preunhook: "ok", closedBy: "tool" });
      const { state } = await capture.next();
      // RAM as before the first controller: NOPs at both breakpoints and under the patch.
      expect(vm().guest.memory.read(SPOTS.BP_GPA, 2), "the INT3s of the departed controller at unhook").toMatchObject({
        ok: true,
        bytes: Uint8Array.of(SPOTS.NOP, SPOTS.NOP),
      });
      expect(vm().guest.memory.read(SPOTS.PATCH_GPA, 4)).toMatchObject({ ok: true, bytes: new Uint8Array(4).fill(SPOTS.NOP) });
      expect(state).toEqual(cleanState(vm(), pristine));
    } finally {
      capture.dispose();
    }
    vm().resume();
    await h.waitHooked(0, 2);
  });
});
