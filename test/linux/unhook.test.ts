// SPDX-License-Identifier: Apache-2.0
// The bridge's unhook flow, hook ledger and deadline on top of kvmi-qemu, unchanged (docs/qemu-backend.md):
// the operator's unhook (what kvmi-qemu does on SIGUSR1) sends PREUNHOOK/UNHOOK through the emulated
// kernel side to the bridge, which tells the tools; a tool that cleans up ends the wait, a tool that
// ignores the notice gets the bridge's deadline, after which the bridge undoes its guest writes
// itself. The guest's own console is the ground truth: kvmi-marker prints its text when it changes.
// Last, the guest powers itself off: QEMU's SHUTDOWN event starts the same flow.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Profile, State, linux } from "@kvmi/clients";
import { MARKER, TICKER_SYSCALL } from "../guest/build.js";
import { startClientsBridge, startNode, tsxArgs, type ClientsBridge } from "../support/clients-harness.js";
import { startLinuxVm, type LinuxVm } from "./linux-harness.js";

/** The bridge's `--unhook-deadline-ms`: how long a tool has after the notice. */
const DEADLINE_MS = 2500;

let bridge: ClientsBridge;
let vm: LinuxVm;

beforeAll(async () => {
  bridge = await startClientsBridge({ vms: [], bridgeArgs: ["--unhook-deadline-ms", String(DEADLINE_MS)] });
  vm = await startLinuxVm(bridge);
});

afterAll(async () => {
  await vm?.stop();
  await bridge?.stop();
});

/** After an unhook the device manager reconnects: wait until the bridge has the VM hooked again. */
const rehooked = () => bridge.waitForVm(vm.backend.uuid, (v) => v.state === State.HOOKED, 30_000);

describe("the unhook flow on the real guest", () => {
  it("the trace example gets the operator's notice, restores the syscall's byte and leaves before the deadline", async () => {
    const trace = startNode([
      ...tsxArgs("clients/examples/trace.ts"), "--target", bridge.target, "--vm", "linux-0", "--profile", vm.image.profile,
      "--symbol", TICKER_SYSCALL.kernelFunction, "--method", "int3", "--comm", "kvmi-ticker", "--follow", "--json",
    ]);
    await trace.waitFor(/armed: INT3/, 60_000);
    await trace.waitFor(/"comm":"kvmi-ticker"/, 30_000); // it is tracing

    const outcome = await vm.backend.unhook();
    const result = await trace.exited;
    expect(result.code, result.stderr).toBe(0);
    expect(result.stderr).toMatch(/unhook notice \(deviceManager\)/);
    expect(result.stderr).toMatch(/disarmed: entry byte is 0xf \(restored\)/);
    expect(outcome).toMatchObject({ preunhook: "ok", closedBy: "tool" });
    expect(outcome.durationMs).toBeLessThan(DEADLINE_MS);

    // Hooked again, the function's byte is the kernel's, and the ticker runs on.
    await rehooked();
    const gva = (await Profile.load(vm.image.profile)).requireSymbol(TICKER_SYSCALL.kernelFunction);
    const commands = bridge.client.vm(vm.backend.uuid);
    expect(await commands.readPhysical((await commands.translate(0, gva))!, 1)).toEqual(Uint8Array.of(0x0f));
    const ticker = vm.snapshot.ps.find((p) => p.comm === "kvmi-ticker")!;
    expect((await vm.qemu.guestPs()).some((p) => p.pid === ticker.pid && p.comm === "kvmi-ticker")).toBe(true);
  });

  it("a controller that ignores the notice gets the deadline; then the bridge undoes its write and the guest sees its own text again", async () => {
    await rehooked();
    const guest = linux(bridge.client.vm(vm.backend.uuid), await Profile.load(vm.image.profile));
    const marker = (await guest.processes()).find((p) => p.comm === "kvmi-marker")!;
    const session = await bridge.client.attach(vm.backend.uuid, { role: "controller" });
    const written = vm.qemu.waitForConsole(/KVMI-MARKER ignored-the-notice/, 30_000);
    await session.writeVirtual({ cr3: marker.pageTable! }, MARKER.gva, new TextEncoder().encode("ignored-the-notice\0"));
    await written;

    // The session never reads its events: the notice goes unanswered.
    const restored = vm.qemu.waitForConsole(new RegExp(`KVMI-MARKER ${MARKER.text}`), 60_000);
    const outcome = await vm.backend.unhook();
    await restored;
    // The bridge, the kernel side's tool, closed the socket once it had undone the write after its deadline.
    expect(outcome).toMatchObject({ preunhook: "ok", closedBy: "tool" });
    expect(outcome.durationMs).toBeGreaterThanOrEqual(DEADLINE_MS - 100);
    await session.release().catch(() => undefined); // the bridge has ended it already

    await rehooked();
    expect(new TextDecoder().decode(await guest.readProcessMemory(marker.pid, MARKER.gva, MARKER.text.length))).toBe(MARKER.text);
  });

  it("the guest powering itself off sends the controller the unhook notice (QMP SHUTDOWN) before QEMU goes", async () => {
    await rehooked();
    const session = await bridge.client.attach(vm.backend.uuid, { role: "controller" });
    const events = session.events({ signal: AbortSignal.timeout(60_000) });
    vm.qemu.sendConsole("poweroff");
    let notice: { reason: string } | undefined;
    try {
      for await (const item of events) {
        if (item.kind === "unhook") {
          notice = item;
          break;
        }
        if (item.kind === "event") await item.continue();
      }
    } catch {
      // The stream ends with the VM: what matters is whether the notice came first.
    }
    // "deviceManager" only ever comes from the kernel side's UNHOOK event, not from a lost socket.
    expect(notice?.reason).toBe("deviceManager");
    await session.release().catch(() => undefined);
    // And the guest really went: QEMU exits on its own (no -no-shutdown).
    const gone = await Promise.race([vm.qemu.exited.then(() => true), new Promise<false>((resolve) => setTimeout(() => resolve(false), 30_000))]);
    expect(gone).toBe(true);
  });
});
