// SPDX-License-Identifier: Apache-2.0
// Thread semantics of a vCPU: blocking in exits, stop/resume (KVM_RUN in/out), crash, reset, halt.
import { describe, expect, it } from "vitest";
import { passThroughExitHandler, type VcpuExitHandler, type WriteReply } from "./exits.js";
import { createGuest, type GuestLifecycleEvent } from "./guest.js";
import { X86_CR4_FSGSBASE } from "./x86.js";

/** A promise the test resolves by hand, standing in for a tool that has not replied yet. */
function deferred<T>() {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

/** Lets every queued microtask and pending I/O callback run. */
const settle = () => new Promise((r) => setImmediate(r));

function guestWith(handler: Partial<VcpuExitHandler>, vcpus = 1) {
  const guest = createGuest({ memoryMiB: 16, vcpus, workload: false, exitHandler: { ...passThroughExitHandler, ...handler } });
  return { guest, vcpu: guest.vcpus[0]! };
}

const flipFsgsbase = (cr4: bigint) => cr4 ^ X86_CR4_FSGSBASE;

describe("blocking in an exit", () => {
  it("executes nothing else while the handler is pending, then continues in order", async () => {
    const reply = deferred<WriteReply>();
    let entries = 0;
    const { guest, vcpu } = guestWith({ onEntry: () => void entries++, crWrite: () => reply.promise });
    guest.start();
    const cr4 = vcpu.state.sregs.cr4;
    const first = vcpu.writeCr(4, flipFsgsbase(cr4));
    const second = vcpu.writeCr(2, 0x99n);
    await settle();
    expect(vcpu.currentExit).toBe("crWrite");
    expect(vcpu.pendingOperations).toBe(2);
    expect(vcpu.state.sregs.cr2).toBe(0n);
    expect(entries).toBe(1);
    reply.resolve({ action: "continue", value: flipFsgsbase(cr4) });
    expect(await first).toEqual({ status: "done", value: flipFsgsbase(cr4) });
    expect(await second).toEqual({ status: "done", value: 0x99n });
    expect(vcpu.currentExit).toBeUndefined();
  });
});

describe("stop and resume", () => {
  it("queues operations while the VM is stopped and runs them after resume", async () => {
    let entries = 0;
    const { guest, vcpu } = guestWith({ onEntry: () => void entries++ });
    guest.start();
    await guest.stop();
    expect(guest.runState).toBe("paused");
    expect(vcpu.runState).toBe("stopped");
    let done = false;
    const op = vcpu.writeCr(2, 5n).then((o) => ((done = true), o));
    vcpu.kick();
    await settle();
    expect(done).toBe(false);
    expect(entries).toBe(0); // not in KVM_RUN: no entries, so kernel jobs would wait
    guest.resume();
    expect(await op).toEqual({ status: "done", value: 5n });
    expect(vcpu.runState).toBe("running");
  });

  it("parks a vCPU blocked in an exit only after the handler returns", async () => {
    const reply = deferred<"continue">();
    const { guest, vcpu } = guestWith({ descriptor: () => reply.promise });
    guest.start();
    const op = vcpu.descriptorOp("sidt");
    await settle();
    let parked = false;
    const stopping = vcpu.stop().then(() => (parked = true));
    await settle();
    expect(parked).toBe(false);
    reply.resolve("continue");
    await stopping;
    expect(await op).toMatchObject({ status: "done" });
    expect(vcpu.runState).toBe("stopped");
    vcpu.resume();
    expect(await vcpu.writeCr(2, 1n)).toMatchObject({ status: "done" });
  });

  it("ignores stop() before start()", async () => {
    const { guest, vcpu } = guestWith({});
    await guest.stop();
    guest.start();
    expect(await vcpu.writeCr(2, 1n)).toMatchObject({ status: "done" });
    expect(guest.runState).toBe("running");
  });

  it("does not run anything before start(), and kicks an idle vCPU into onEntry", async () => {
    let entries = 0;
    const { guest, vcpu } = guestWith({ onEntry: () => void entries++ });
    const op = vcpu.writeCr(2, 7n);
    await settle();
    expect(vcpu.runState).toBe("not-started");
    expect(entries).toBe(0);
    guest.start();
    await op;
    expect(entries).toBe(1);
    vcpu.kick();
    await settle();
    expect(entries).toBe(2);
  });
});

describe("crash", () => {
  it("settles every pending operation, including one blocked in an exit, and refuses new ones", async () => {
    const never = new Promise<"continue">(() => undefined);
    const events: GuestLifecycleEvent[] = [];
    const { guest, vcpu } = guestWith({ descriptor: () => never }, 2);
    guest.onLifecycle((e) => events.push(e));
    guest.start();
    const blocked = vcpu.descriptorOp("sgdt");
    const queued = [vcpu.writeCr(2, 1n), vcpu.hypercall(34n, 24n, 0n), guest.vcpus[1]!.halt(60_000)];
    await settle();
    const stopping = guest.stop();
    guest.crash("KVMI CRASH");
    const aborted = { status: "aborted", reason: "crashed" };
    expect(await blocked).toEqual(aborted);
    for (const op of queued) expect(await op).toEqual(aborted);
    await stopping;
    expect(await vcpu.executeAt(0n)).toEqual(aborted);
    expect(guest.runState).toBe("crashed");
    expect(vcpu.runState).toBe("dead");
    expect(events).toEqual([{ type: "started" }, { type: "paused" }, { type: "crashed", reason: "KVMI CRASH" }]);
    expect(() => guest.start()).toThrow(expect.objectContaining({ code: "GUEST_INVALID_STATE" }));
  });

  it("vcpu.crash() kills the whole VM", async () => {
    const { guest } = guestWith({}, 2);
    guest.start();
    guest.vcpus[1]!.crash("tool said so");
    expect(guest.crashReason).toBe("tool said so");
    expect(guest.vcpus[0]!.runState).toBe("dead");
  });
});

describe("reset", () => {
  it("aborts pending operations with reason reset and restores power-on state", async () => {
    const never = new Promise<"continue">(() => undefined);
    const { guest, vcpu } = guestWith({ descriptor: () => never });
    guest.start();
    const blocked = vcpu.descriptorOp("str");
    await settle();
    vcpu.state.regs.rax = 0x1234n;
    guest.memory.write(0x100000n, Uint8Array.of(0xee));
    guest.reset();
    expect(await blocked).toEqual({ status: "aborted", reason: "reset" });
    expect(vcpu.state.regs.rax).toBe(0n);
    expect(vcpu.state.sregs.cr3).toBe(guest.bootAddressSpace.cr3);
    expect(guest.runState).toBe("running");
    // The thread keeps running after the reset even though the old exit never returned.
    expect(await vcpu.writeCr(2, 3n)).toEqual({ status: "done", value: 3n });
  });

  it("brings a crashed VM back to `created`", async () => {
    const { guest, vcpu } = guestWith({});
    guest.start();
    guest.crash();
    guest.reset();
    expect(guest.runState).toBe("created");
    guest.start();
    expect(await vcpu.writeCr(2, 4n)).toEqual({ status: "done", value: 4n });
  });
});

describe("halt", () => {
  it("stays halted for the requested time while kicks still reach onEntry", async () => {
    let entries = 0;
    const { guest, vcpu } = guestWith({ onEntry: () => void entries++ });
    guest.start();
    const started = Date.now();
    const halted = vcpu.halt(40);
    await new Promise((r) => setTimeout(r, 10));
    const before = entries;
    vcpu.kick();
    await settle();
    expect(entries).toBe(before + 1);
    expect(await halted).toEqual({ status: "done", value: undefined });
    expect(Date.now() - started).toBeGreaterThanOrEqual(35);
  });

  it("ends early when an exception is delivered", async () => {
    const { guest, vcpu } = guestWith({});
    guest.start();
    const halted = vcpu.halt(60_000);
    await settle();
    vcpu.queueException({ nr: 6 });
    expect(await halted).toMatchObject({ status: "done" });
    expect(vcpu.deliveredExceptions.map((e) => e.nr)).toEqual([6]);
  });
});

describe("uninitialized APs", () => {
  it("hold instructions until startup()", async () => {
    const guest = createGuest({ memoryMiB: 16, vcpus: 2, workload: { tickIntervalMs: 0 } });
    const ap = guest.vcpus[1]!;
    expect(ap.state.initialized).toBe(false);
    guest.start();
    let done = false;
    const op = ap.writeCr(2, 1n).then(() => (done = true));
    await settle();
    expect(done).toBe(false);
    ap.startup();
    await op;
    expect(ap.state.initialized).toBe(true);
  });
});
