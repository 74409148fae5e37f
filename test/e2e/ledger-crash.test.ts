// SPDX-License-Identifier: Apache-2.0
/**
 * Issue 15, "a ledger that survives a crash": the bridge runs as its own process with
 * `--state-dir`; a controller sets breakpoints (INT3 in guest memory), a code patch, page
 * restrictions, and CR/MSR interceptions; the bridge is SIGKILLed (no unhook flow, no undo). The
 * emulated VM (the same boot: same UUID and start time) reconnects to a bridge restarted on the
 * same state directory, which replays the journal and undoes every change before anyone can
 * attach: the first attach that succeeds already sees guest RAM byte-identical to before, every
 * page rwx, nothing intercepted, and driving the old hook spots raises no event.
 */
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { State } from "@kvmi/proto";
import { createEmulatedVm } from "@kvmi/kvm-bridge/emulator";
import type { EmulatedVm } from "@kvmi/kvm-bridge/emulator";
import { E2E_DIALECT, GrpcStatus, IntrospectionClient, Role, settle, waitUntil, withTimeout } from "../support/bridge-harness.js";
import type { SessionClient } from "../support/bridge-harness.js";
import { cleanState, guestState, hookPlan, prepareGuest, ramDigest, SPOTS, startBridgeProcess } from "../support/fault-tools.js";
import type { BridgeProcess } from "../support/fault-tools.js";

let dir: string;
let stateDir: string;
let kvmiPath: string;
let vm: EmulatedVm;
const bridges: BridgeProcess[] = [];
const clients: IntrospectionClient[] = [];

const vmName = (): string => `vms/${vm.uuid}`;

async function startBridge(): Promise<{ bridge: BridgeProcess; client: IntrospectionClient }> {
  const bridge = await startBridgeProcess(kvmiPath, ["--state-dir", stateDir, "--event-timeout-ms", "2000"]);
  bridges.push(bridge);
  const client = new IntrospectionClient(bridge.target);
  clients.push(client);
  return { bridge, client };
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "kvmi-ledger-crash-"));
  stateDir = join(dir, "state");
  kvmiPath = join(dir, "kvmi.sock");
});

afterAll(async () => {
  for (const client of clients) client.close();
  await vm?.stop();
  for (const bridge of bridges) await bridge.proc.stop();
  if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
});

/** Attaches as soon as the bridge lets anyone attach (it refuses while it undoes the old ledger). */
async function firstAttach(client: IntrospectionClient, role: Role): Promise<SessionClient> {
  return waitUntil(
    async () => {
      const session = client.openSession();
      try {
        await session.attach(vmName(), role);
        return session;
      } catch {
        session.cancel();
        return undefined;
      }
    },
    "the first successful attach on the restarted bridge",
    { timeoutMs: 15_000, intervalMs: 5 },
  );
}

describe("SIGKILL of the bridge with hooks in place", () => {
  it("the restarted bridge undoes the journaled ledger before anyone can attach: RAM byte-identical, pages rwx, no interception, no event", async () => {
    const first = await startBridge();
    vm = createEmulatedVm({ kind: "unix", path: kvmiPath }, { name: "crash-vm", dialect: E2E_DIALECT, vcpus: 2, memoryMiB: 8, workload: false, reconnectMs: 50 });
    prepareGuest(vm);
    vm.start();
    await waitUntil(async () => (await first.client.unary("getVm", { name: vmName() }, { deadlineMs: 1000 })).vm?.state === State.HOOKED, "the VM hooked", {
      timeoutMs: 10_000,
    });
    const startTime = vm.deviceManager.vmStartTime;
    const before = ramDigest(vm);

    const controller = first.client.openSession();
    await controller.attach(vmName(), Role.CONTROLLER);
    for (const request of hookPlan(vmName(), { singlestep: true })) await controller.ok(request);
    const hooked = guestState(vm);
    expect(hooked.ramDigest).not.toBe(before);
    expect(Object.keys(hooked.restrictions)).toHaveLength(2);
    expect(hooked.vcpus[0]!.crs).toEqual([3]);
    expect(hooked.vcpus[1]!.msrs).toEqual([SPOTS.MSR_LSTAR]);
    expect(readdirSync(join(stateDir, "ledger"))).toEqual([`${vm.uuid}.journal`]);

    first.bridge.proc.child.kill("SIGKILL");
    expect(await withTimeout(first.bridge.proc.exited, 5000, "the SIGKILLed bridge")).toMatchObject({ signal: "SIGKILL" });
    // Nothing undid the writes: the INT3s and the patch are still in guest memory.
    await waitUntil(() => !vm.kernel.isHooked, "the emulated VM to notice the dead bridge");
    expect(vm.guest.memory.read(SPOTS.BP_GPA, 2)).toMatchObject({ ok: true, bytes: Uint8Array.of(SPOTS.INT3, SPOTS.INT3) });
    expect(ramDigest(vm)).not.toBe(before);

    // The same boot reconnects to a bridge restarted on the same state directory and socket path.
    const second = await startBridge();
    const observer = await firstAttach(second.client, Role.OBSERVER);
    expect(vm.deviceManager.vmStartTime).toBe(startTime);
    expect(guestState(vm)).toEqual(cleanState(vm, before));
    const [restored] = second.bridge.logs("restored what a controller left in guest memory before the connection dropped");
    expect(restored).toMatchObject({ vm: vm.uuid, failures: 0, restoredBytes: 7 });
    // Events, CR, MSR, single-step and both page restrictions were switched off too.
    expect(restored!["commands"]).toBeGreaterThanOrEqual(10);

    // Every old hook spot runs without an event; no #BP reaches the guest.
    const [v0, v1] = vm.guest.vcpus;
    const cr3 = v0!.state.sregs.cr3;
    const lstar = v1!.state.msrs.read(SPOTS.MSR_LSTAR)!;
    const byte = vm.guest.memory.read(SPOTS.PF_GPA, 1);
    if (!byte.ok) throw new Error("PF page unreadable");
    expect(await settle(v0!.executeAt(SPOTS.BP_GPA), "execution at the old breakpoint", 2000)).toMatchObject({ status: "done" });
    expect(await settle(v1!.executeAt(SPOTS.BP2_GPA), "execution at the old breakpoint", 2000)).toMatchObject({ status: "done" });
    expect(await settle(v0!.writeCr(3, cr3), "MOV CR3", 2000)).toEqual({ status: "done", value: cr3 });
    expect(await settle(v1!.writeMsr(SPOTS.MSR_LSTAR, lstar), "WRMSR", 2000)).toEqual({ status: "done", value: lstar });
    expect(await settle(v0!.writeMemory({ gpa: SPOTS.PF_GPA }, byte.bytes), "store to the old read-only page", 2000)).toEqual({ status: "done", value: undefined });
    expect(v0!.deliveredExceptions.concat(v1!.deliveredExceptions).some((e) => e.nr === 3)).toBe(false);
    await observer.queue.expectNone((r) => r.message.case === "event", 50, "an event after the recovery");
    expect(ramDigest(vm)).toBe(before);

    // The journal now holds only the header of the new connection.
    const next = await firstAttach(second.client, Role.CONTROLLER);
    expect(next.attached?.vm?.controllerAttached).toBe(true);
    next.release();
    expect((await next.closed()).code).toBe(GrpcStatus.OK);
  });
});
