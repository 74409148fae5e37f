// SPDX-License-Identifier: Apache-2.0
// Page-access restrictions on the real guest behind kvmi-qemu (docs/qemu-backend.md "Page
// restrictions"): a write restriction becomes a gdbstub watchpoint over the page's kernel mapping,
// and the guest's writes there come to the tool as PF events with KVMI's gpa, gva and access bits.
// The watched page holds kvmi-ticker's task_struct, which the kernel writes on every switch to and
// from the ticker (50 naps a second).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Command, PAGE_ACCESS, Profile, linux } from "@kvmi/clients";
import type { LinuxGuest, PageFaultEvent, Session, SessionItem } from "@kvmi/clients";
import { DIRECT_MAP } from "@kvmi/kvm-bridge/qemu";
import { startClientsBridge, type ClientsBridge } from "../support/clients-harness.js";
import { startLinuxVm, type LinuxVm } from "./linux-harness.js";

let bridge: ClientsBridge;
let vm: LinuxVm;
let guest: LinuxGuest;

beforeAll(async () => {
  bridge = await startClientsBridge({ vms: [] });
  vm = await startLinuxVm(bridge);
  guest = linux(bridge.client.vm(vm.backend.uuid), await Profile.load(vm.image.profile));
});

afterAll(async () => {
  await vm?.stop();
  await bridge?.stop();
});

/** The next event matching `match`; every other event is continued. */
async function nextEvent(session: Session, match: (item: SessionItem) => boolean, timeoutMs = 60_000): Promise<SessionItem> {
  for await (const item of session.events({ signal: AbortSignal.timeout(timeoutMs) })) {
    if (match(item)) return item;
    if (item.kind === "event") await item.continue();
  }
  throw new Error("the event stream ended");
}

describe("SET_PAGE_ACCESS on the QEMU guest", () => {
  it("CHECK_COMMAND and CHECK_EVENT offer it and the PF event", async () => {
    const commands = bridge.client.vm(vm.backend.uuid);
    await expect(commands.checkCommand(Command.VM_SET_PAGE_ACCESS)).resolves.toBeUndefined();
    await expect(commands.checkEvent("pageFault")).resolves.toBeUndefined();
    expect((await bridge.client.getVm(vm.backend.uuid)).events).toEqual(expect.arrayContaining(["PF"]));
  });

  it("a write restriction on the ticker's task_struct page gives PF events (gpa, gva, W); the guest goes on", async () => {
    const ticker = (await guest.processes()).find((p) => p.comm === "kvmi-ticker")!;
    const session = await bridge.client.attach(vm.backend.uuid, { role: "controller" });
    try {
      const taskGpa = (await session.translate(0, ticker.task))!;
      const page = taskGpa & ~0xfffn;
      await session.setPageAccess([{ gpa: page, access: PAGE_ACCESS.R | PAGE_ACCESS.X }]);
      for (const v of [0, 1]) await session.controlVcpuEvents(v, "pageFault", true);
      const faults: PageFaultEvent[] = [];
      while (faults.length < 3) {
        const item = await nextEvent(session, (i) => i.kind === "event" && i.type === "pageFault");
        if (item.kind !== "event" || item.type !== "pageFault") throw new Error("unreachable");
        faults.push(item);
        await item.continue();
      }
      for (const fault of faults) {
        expect(fault.gpa & ~0xfffn).toBe(page);
        expect(fault.gva).toBe(DIRECT_MAP + fault.gpa); // the kernel's direct map of the page
        expect(fault.access).toBe(PAGE_ACCESS.W);
        expect(fault.arch.regs.rip >= 0xffffffff80000000n).toBe(true); // kernel code did the write
      }
      // Lifting the restriction ends the events; the guest, and the ticker, carry on.
      await session.setPageAccess([{ gpa: page, access: PAGE_ACCESS.RWX }]);
      for (const v of [0, 1]) await session.controlVcpuEvents(v, "pageFault", false);
    } finally {
      await session.release();
    }
    const ps = await vm.qemu.guestPs();
    expect(ps.find((p) => p.pid === ticker.pid)?.comm).toBe("kvmi-ticker");
  });

  it("refuses what watchpoints cannot do (an execute restriction: EOPNOTSUPP); a read restriction is set and lifted", async () => {
    const ticker = (await guest.processes()).find((p) => p.comm === "kvmi-ticker")!;
    const session = await bridge.client.attach(vm.backend.uuid, { role: "controller" });
    try {
      const gpa = (await session.translate(0, ticker.task))! & ~0xfffn;
      await expect(session.setPageAccess([{ gpa, access: PAGE_ACCESS.R | PAGE_ACCESS.W }])).rejects.toThrow(/KVMI_VM_SET_PAGE_ACCESS is not supported/);
      // A read restriction is a read watchpoint (no PF events enabled: the reads go on); lifting it leaves nothing behind.
      await session.setPageAccess([{ gpa, access: PAGE_ACCESS.W | PAGE_ACCESS.X }]);
      await session.setPageAccess([{ gpa, access: PAGE_ACCESS.RWX }]);
    } finally {
      await session.release();
    }
    expect((await vm.qemu.guestPs()).length).toBeGreaterThan(0);
  });
});
