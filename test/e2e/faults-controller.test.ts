// SPDX-License-Identifier: Apache-2.0
/**
 * Faults on the controller's side, each with nothing lost and nothing stalled:
 *
 * - a controller process is SIGKILLed while events wait for it on four vCPUs: every vCPU is answered
 *   at once (not at the 10 s deadline) with the safe default, each exactly once, counted as
 *   `controller_gone`; the breakpoint whose INT3 the bridge removes is re-executed (RETRY), not
 *   re-injected into the guest;
 * - two or more clients race to become controller: exactly one wins, every other gets
 *   FAILED_PRECONDITION (CONTROLLER_PRESENT).
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { EventType, Role, State } from "@kvmi/proto";
import { GrpcStatus, settle, startHarness, streamFailure, waitUntil } from "../support/bridge-harness.js";
import type { Harness, SessionClient, SessionCommandRequest } from "../support/bridge-harness.js";
import { prepareGuest, SPOTS, startControllerProcess } from "../support/fault-tools.js";
import type { ControllerProcess } from "../support/fault-tools.js";

/** Far longer than the test: only the controller's death may answer the events. */
const EVENT_DEADLINE_MS = 10_000;

let h: Harness;
let child: ControllerProcess | undefined;

const vm = () => h.vms[0]!;
const host = () => h.bridge.hosts.get(vm().uuid)!;

beforeAll(async () => {
  h = await startHarness({ vms: [{ vcpus: 4 }], bridgeArgs: ["--event-timeout-ms", String(EVENT_DEADLINE_MS)] });
  prepareGuest(vm());
});

afterEach(async () => {
  await child?.stop();
  child = undefined;
});

afterAll(async () => {
  await h?.stop();
});

describe("controller killed with events pending on several vCPUs", () => {
  it("answers every pending event at once with the safe default, once each, and undoes the ledger", async () => {
    const name = h.vmName(0);
    const vcpu = (n: number): string => h.vcpuName(0, n);
    const plan: SessionCommandRequest[] = [
      { case: "controlVcpuEvents", value: { name: vcpu(0), event: EventType.CR, enable: true } },
      { case: "controlCr", value: { name: vcpu(0), cr: 3, enable: true } },
      { case: "controlVcpuEvents", value: { name: vcpu(1), event: EventType.MSR, enable: true } },
      { case: "controlMsr", value: { name: vcpu(1), msr: SPOTS.MSR_LSTAR, enable: true } },
      { case: "writePhysicalMemory", value: { vm: name, gpa: SPOTS.BP_GPA, data: Uint8Array.of(SPOTS.INT3) } },
      { case: "controlVcpuEvents", value: { name: vcpu(2), event: EventType.BREAKPOINT, enable: true } },
      { case: "setPageAccess", value: { vm: name, entries: [{ gpa: SPOTS.PF_GPA, access: 1 }] } },
      { case: "controlVcpuEvents", value: { name: vcpu(3), event: EventType.PF, enable: true } },
    ];
    child = await startControllerProcess(h.bridge.grpcTarget, name, plan);

    const [v0, v1, v2, v3] = vm().guest.vcpus;
    const cr3 = v0!.state.sregs.cr3;
    const lstar = 0xffffffff81234560n;
    const operations = [
      v0!.writeCr(3, cr3 + 0x1000n),
      v1!.writeMsr(SPOTS.MSR_LSTAR, lstar),
      v2!.executeAt(SPOTS.BP_GPA),
      v3!.writeMemory({ gpa: SPOTS.PF_GPA + 0x10n }, Uint8Array.of(1, 2, 3, 4)),
    ];
    const delivered = await child.events(4);
    expect(delivered.map((e) => e.vcpu).sort()).toEqual([0, 1, 2, 3]);
    for (let i = 0; i < 4; i++) expect(vm().kernel.vcpu(i)!.isWaitingForReply, `vCPU ${i} waits`).toBe(true);
    const metricsBefore = await h.metrics();

    const killed = Date.now();
    child.child.kill("SIGKILL");
    const outcomes = await settle(Promise.all(operations), "the four vCPUs after the kill", 5000);
    expect(Date.now() - killed).toBeLessThan(3000);

    // CR and MSR: CONTINUE with the value the guest wrote.
    expect(outcomes[0]).toEqual({ status: "done", value: cr3 + 0x1000n });
    expect(outcomes[1]).toEqual({ status: "done", value: lstar });
    // PF: CONTINUE lets KVM carry the store out.
    expect(outcomes[3]).toEqual({ status: "done", value: undefined });
    expect(vm().guest.memory.read(SPOTS.PF_GPA + 0x10n, 4)).toMatchObject({ ok: true, bytes: Uint8Array.of(1, 2, 3, 4) });
    // BREAKPOINT: the bridge removes the controller's INT3 and answers RETRY, so the guest executes
    // its original instruction; CONTINUE would inject a #BP the guest never asked for.
    expect.soft(outcomes[2], "the vCPU stopped at the breakpoint").toMatchObject({ status: "done", value: { gva: SPOTS.BP_GPA } });
    expect.soft(v2!.deliveredExceptions.some((e) => e.nr === 3), "a #BP was injected into the guest").toBe(false);

    await waitUntil(() => host().hookLedger.isEmpty && host().sessions.length === 0, "the ledger undone");
    expect(vm().guest.memory.read(SPOTS.BP_GPA, 1)).toMatchObject({ ok: true, bytes: Uint8Array.of(SPOTS.NOP) });
    expect(vm().guest.memory.getPageAccess(SPOTS.PF_GPA >> 12n)).toBe(7);
    for (let i = 0; i < 4; i++) expect(vm().kernel.vcpu(i)!.isWaitingForReply, `vCPU ${i} still waits`).toBe(false);

    const after = await h.metrics();
    for (const event of ["cr", "msr", "breakpoint", "pf"]) {
      const delta = (reason: string) =>
        after.value("kvmi_bridge_event_auto_replies_total", { event, reason }) - metricsBefore.value("kvmi_bridge_event_auto_replies_total", { event, reason });
      expect(delta("controller_gone"), `${event} answered as controller_gone`).toBe(1);
      expect(delta("deadline"), `${event} answered at the deadline`).toBe(0);
    }
    expect((await h.client.unary("getVm", { name })).vm).toMatchObject({ state: State.HOOKED, generation: 1n, controllerAttached: false });
    // Put CR3 back.
    await settle(v0!.writeCr(3, cr3), "MOV CR3 back");
  });
});

describe("two clients racing to become controller", () => {
  it("lets exactly one win each round; every other gets FAILED_PRECONDITION CONTROLLER_PRESENT", async () => {
    for (let round = 0; round < 3; round++) {
      const clients = Array.from({ length: 5 }, () => h.connect());
      const sessions = clients.map((c) => c.openSession());
      const results = await Promise.allSettled(sessions.map((s) => s.attach(h.vmName(0), Role.CONTROLLER)));
      const winners = sessions.filter((_, i) => results[i]!.status === "fulfilled");
      expect(winners.length, `round ${round}`).toBe(1);
      const losers = sessions.filter((s) => !winners.includes(s));
      for (const [i, result] of results.entries()) {
        if (result.status === "rejected") expect((result.reason as { code?: number }).code, `round ${round}, client ${i}`).toBe(GrpcStatus.FAILED_PRECONDITION);
      }
      for (const loser of losers) {
        const status = streamFailure(await loser.closed());
        expect(status.details.reason).toBe("CONTROLLER_PRESENT");
        // issue 15: the winner's session id is never shown to the losers.
        expect(status.message).not.toContain(winners[0]!.id);
      }
      // The winner really controls the VM.
      const winner: SessionClient = winners[0]!;
      await winner.ok({ case: "controlVcpuEvents", value: { name: h.vcpuName(0, 0), event: EventType.HYPERCALL, enable: true } });
      expect(host().sessions.filter((s) => s.role === "controller").map((s) => s.id)).toEqual([winner.id]);
      winner.release();
      expect((await winner.closed()).code).toBe(GrpcStatus.OK);
      await waitUntil(() => host().sessions.length === 0 && host().hookLedger.isEmpty, "the winner gone");
      for (const c of clients) c.close();
    }
  });
});
