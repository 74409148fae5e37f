// SPDX-License-Identifier: Apache-2.0
/**
 * The emulated QEMU side (kvmi-abi §2.1-§2.3, §2.6, §2.8) over a real UNIX socket, against a small
 * test listener that does the tool's half of the handshake with the codec (`parseHandshake`,
 * `encodeHandshakeReply`) and then drives KVMI with a codec-only tool.
 */
import { afterEach, describe, expect, it, vi } from "vitest";
import { createEmulatedVm } from "@kvmi/kvm-bridge/emulator";
import type { EmulatedVm, EmulatedVmOptions } from "@kvmi/kvm-bridge/emulator";
import { errno, layouts, v9Ids } from "@kvmi/kvm-bridge/wire";
import type { HandshakeVariant } from "@kvmi/kvm-bridge/wire";
import { createTestListener } from "../support/test-listener.js";
import type { AcceptedConnection, TestListener, TestListenerOptions } from "../support/test-listener.js";
import { waitUntil, within } from "../support/wire-tool.js";

const RECONNECT_MS = 100;
const WAIT_MS = 5000;
/** Long enough for a reconnect that should not happen to have happened (several reconnect periods). */
const NO_RECONNECT_WATCH_MS = 4 * RECONNECT_MS;
const RWX = 7;
const X86_CR3_PWT = 1n << 3n;

const cleanups: Array<() => Promise<void>> = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function listen(options: TestListenerOptions = {}): Promise<TestListener> {
  const listener = await createTestListener(options);
  cleanups.push(() => listener.close());
  return listener;
}

function startVm(listener: TestListener, options: EmulatedVmOptions = {}): EmulatedVm {
  const vm = createEmulatedVm(listener.endpoint, {
    vcpus: 1,
    memoryMiB: 16,
    workload: false,
    reconnectMs: RECONNECT_MS,
    ...options,
  });
  cleanups.push(() => vm.stop());
  vm.start();
  return vm;
}

/** Waits until the device manager has hooked the connection (GET_VERSION answered). */
async function hookedConnection(listener: TestListener, n: number): Promise<AcceptedConnection> {
  const connection = await listener.connection(n, WAIT_MS);
  expect((await connection.tool.command("KVMI_GET_VERSION")).err).toBe(0);
  return connection;
}

/** Restricts one page to R through SET_PAGE_ACCESS and returns its GFN. */
async function restrictPage(vm: EmulatedVm, connection: AcceptedConnection): Promise<bigint> {
  const gpa = vm.guest.allocator.alloc();
  const reply = await connection.tool.command("KVMI_VM_SET_PAGE_ACCESS", { entries: [{ gpa, access: 1, visible: 0 }] });
  expect(reply.err).toBe(0);
  expect(vm.guest.memory.getPageAccess(gpa >> 12n)).toBe(1);
  return gpa >> 12n;
}

async function enableUnhook(connection: AcceptedConnection): Promise<void> {
  const reply = await connection.tool.command("KVMI_VM_CONTROL_EVENTS", { event_id: v9Ids.KVMI_EVENT_UNHOOK, enable: 1 });
  expect(reply.err).toBe(0);
}

/** Asserts that no further connection arrives for a while. */
async function expectNoReconnect(listener: TestListener): Promise<void> {
  const before = listener.attempts;
  await new Promise((resolve) => setTimeout(resolve, NO_RECONNECT_WATCH_MS));
  expect(listener.attempts).toBe(before);
}

describe("device manager: handshake (kvmi-abi §2.2, §2.3)", () => {
  const variants: Array<[HandshakeVariant, (vm: EmulatedVm) => number]> = [
    ["base", () => layouts.qemuVmiToIntrospector.size],
    ["max-gpa", () => layouts.qemuVmiToIntrospectorMaxGpa.size],
    ["e820", (vm) => layouts.qemuVmiToIntrospectorE820.size + layouts.qemuVmiE820Entry.size * vm.guest.memory.e820().length],
  ];

  it.each(variants)("the %s variant carries the VM's identity, then the socket is hooked", async (variant, size) => {
    const listener = await listen({ expect: variant });
    const nowSeconds = BigInt(Math.floor(Date.now() / 1000));
    const vm = startVm(listener, { handshake: variant, name: `vm-${variant}` });
    const connection = await hookedConnection(listener, 1);
    expect(connection.handshake.length).toBe(size(vm));
    expect(connection.identity).toMatchObject({ variant, uuid: vm.uuid, name: `vm-${variant}` });
    expect(connection.identity.startTime).toBeGreaterThanOrEqual(nowSeconds - 1n);
    expect(connection.identity.startTime).toBeLessThanOrEqual(nowSeconds + 1n);
    if (variant === "base") expect(connection.handshake.length).toBe(96);
    if (variant === "max-gpa") {
      expect(connection.handshake.length).toBe(104);
      expect(connection.identity.maxGpa).toBe(vm.guest.memory.maxGfn() << 12n);
    }
    if (variant === "e820") {
      const map = vm.guest.memory.e820();
      expect(map.length).toBeGreaterThan(0);
      expect(connection.handshake.length).toBe(104 + 24 * map.length);
      expect(connection.identity.cpuType).toBe(1);
      expect(connection.identity.e820).toEqual(map.map(({ address, length, type }) => ({ address, length, type })));
    }
    expect(vm.kernel.isHooked).toBe(true);
    expect(vm.deviceManager.isHooked).toBe(true);
  });

  it("a long VM name is truncated to 63 bytes plus NUL", async () => {
    const listener = await listen();
    startVm(listener, { name: "n".repeat(100) });
    const connection = await listener.connection(1, WAIT_MS);
    expect(connection.identity.name).toBe("n".repeat(63));
    const nameField = layouts.qemuVmiToIntrospector.fields["name"]!;
    expect(connection.handshake[nameField.offset + 63]).toBe(0);
  });

  it("commands the tool sends glued to its answer wait in the socket for the receive thread (§2.2 step 7)", async () => {
    let early: Promise<{ err: number }> | undefined;
    const listener = await listen({ onAccepted: (c) => (early = c.tool.command("KVMI_GET_VERSION")) });
    startVm(listener);
    await listener.connection(1, WAIT_MS);
    expect(await within(early!, WAIT_MS, "early GET_VERSION")).toMatchObject({ err: 0 });
  });

  it("the right cookie is accepted: SHA-1 of the shared secret", async () => {
    const secret = new TextEncoder().encode("s3cret");
    const listener = await listen({ secret });
    const vm = startVm(listener, { secret });
    await hookedConnection(listener, 1);
    expect(vm.kernel.isHooked).toBe(true);
  });

  it("a wrong cookie is refused: no HOOK, the connection is dropped, and QEMU reconnects later", async () => {
    const listener = await listen({ secret: new TextEncoder().encode("wrong") });
    const refused = vi.fn();
    const vm = createEmulatedVm(listener.endpoint, {
      vcpus: 1,
      memoryMiB: 16,
      workload: false,
      reconnectMs: RECONNECT_MS,
      secret: new TextEncoder().encode("right"),
    });
    cleanups.push(() => vm.stop());
    const hook = vi.spyOn(vm.kernel, "hook");
    vm.deviceManager.on("handshake-refused", refused);
    vm.start();
    const first = await listener.connection(1, WAIT_MS);
    await within(first.tool.closed, WAIT_MS, "the device manager dropping the connection");
    const second = await listener.connection(2, WAIT_MS);
    expect(second.at - first.at).toBeGreaterThanOrEqual(RECONNECT_MS * 0.9);
    expect(second.identity.uuid).toBe(vm.uuid);
    expect(refused).toHaveBeenCalled();
    expect(hook).not.toHaveBeenCalled();
    expect(vm.kernel.isHooked).toBe(false);
  });

  it("a tool that never answers is dropped after handshake_timeout and QEMU reconnects", async () => {
    const listener = await listen({ silent: true });
    startVm(listener, { handshakeTimeoutMs: 150 });
    const first = await listener.connection(1, WAIT_MS);
    await within(first.tool.closed, WAIT_MS, "handshake timeout");
    expect(performance.now() - first.at).toBeGreaterThanOrEqual(140);
    await listener.connection(2, WAIT_MS);
  });
});

describe("device manager: reconnect and reset (kvmi-abi §2.6 step 7, §2.8)", () => {
  it("reconnects with a new handshake after the tool drops the connection", async () => {
    const listener = await listen();
    const vm = startVm(listener);
    const first = await hookedConnection(listener, 1);
    first.socket.destroy();
    await waitUntil(() => !vm.kernel.isHooked, WAIT_MS, "UNHOOK after the tool left");
    const second = await hookedConnection(listener, 2);
    expect(second.identity.uuid).toBe(vm.uuid);
    // Same boot: same start_time.
    expect(second.identity.startTime).toBe(first.identity.startTime);
    expect(vm.kernel.isHooked).toBe(true);
  });

  it("a guest reset unhooks and reconnects with a strictly newer start_time, even twice in one second", async () => {
    const listener = await listen();
    const vm = startVm(listener);
    const first = await hookedConnection(listener, 1);
    await vm.reset();
    await within(first.tool.closed, WAIT_MS, "reset closing the old connection");
    const second = await hookedConnection(listener, 2);
    await vm.reset();
    const third = await hookedConnection(listener, 3);
    expect(second.identity.startTime).toBeGreaterThan(first.identity.startTime);
    expect(third.identity.startTime).toBeGreaterThan(second.identity.startTime);
    expect(vm.deviceManager.vmStartTime).toBe(third.identity.startTime);
  });

  it("commands= and events= set the allow masks; everything else is EPERM", async () => {
    const listener = await listen();
    startVm(listener, {
      commands: [v9Ids.KVMI_VM_GET_INFO, v9Ids.KVMI_VCPU_GET_INFO],
      events: [v9Ids.KVMI_EVENT_PAUSE_VCPU],
    });
    const { tool } = await hookedConnection(listener, 1);
    const check = async (id: number) => (await tool.command("KVMI_VM_CHECK_COMMAND", { id })).err;
    const checkEvent = async (id: number) => (await tool.command("KVMI_VM_CHECK_EVENT", { id })).err;
    expect(await check(v9Ids.KVMI_VM_GET_INFO)).toBe(0);
    expect(await check(v9Ids.KVMI_VCPU_GET_INFO)).toBe(0);
    expect(await check(v9Ids.KVMI_VM_CHECK_EVENT)).toBe(0);
    expect(await check(v9Ids.KVMI_VM_READ_PHYSICAL)).toBe(-errno.KVM_EPERM);
    expect(await check(v9Ids.KVMI_VCPU_PAUSE)).toBe(-errno.KVM_EPERM);
    // Quirk (kvmi-abi §9): id 0 is a known command, not allowed unless allowed explicitly or by -1.
    expect(await check(0)).toBe(-errno.KVM_EPERM);
    expect((await tool.command("KVMI_VM_READ_PHYSICAL", { gpa: 0n, size: 8 })).err).toBe(-errno.KVM_EPERM);
    expect((await tool.command("KVMI_VM_GET_INFO")).err).toBe(0);
    expect(await checkEvent(v9Ids.KVMI_EVENT_PAUSE_VCPU)).toBe(0);
    expect(await checkEvent(v9Ids.KVMI_EVENT_UNHOOK)).toBe(-errno.KVM_EPERM);
    expect(await checkEvent(v9Ids.KVMI_EVENT_CR)).toBe(-errno.KVM_EPERM);
  });

  it("without commands=/events= everything is allowed, bit 0 included", async () => {
    const listener = await listen();
    startVm(listener);
    const { tool } = await hookedConnection(listener, 1);
    expect((await tool.command("KVMI_VM_CHECK_COMMAND", { id: 0 })).err).toBe(0);
    expect((await tool.command("KVMI_VM_CHECK_COMMAND", { id: v9Ids.KVMI_VCPU_TRANSLATE_GVA })).err).toBe(0);
    expect((await tool.command("KVMI_VM_CHECK_EVENT", { id: v9Ids.KVMI_EVENT_SINGLESTEP })).err).toBe(0);
  });

  it("a vCPU blocked on an event is released as CONTINUE when the tool closes the socket", async () => {
    const listener = await listen();
    const vm = startVm(listener);
    const { tool, socket } = await hookedConnection(listener, 1);
    expect((await tool.command("KVMI_VCPU_CONTROL_EVENTS", { event_id: v9Ids.KVMI_EVENT_CR, enable: 1 }, 0)).err).toBe(0);
    expect((await tool.command("KVMI_VCPU_CONTROL_CR", { cr: 3, enable: 1 }, 0)).err).toBe(0);
    const vcpu = vm.guest.vcpus[0]!;
    const target = vcpu.state.sregs.cr3 | X86_CR3_PWT;
    const op = vcpu.writeCr(3, target);
    const event = await tool.nextEvent(WAIT_MS);
    expect(event.spec?.name).toBe("KVMI_EVENT_CR");
    expect(event.payload?.["cr"]).toBe(3);
    // Never answered: the tool goes away instead.
    socket.destroy();
    expect(await within(op, WAIT_MS, "the blocked MOV CR3")).toEqual({ status: "done", value: target });
    expect(vcpu.state.sregs.cr3).toBe(target);
    await waitUntil(() => !vm.kernel.isHooked, WAIT_MS, "UNHOOK on the chardev close");
    await hookedConnection(listener, 2);
  });
});

describe("device manager: the unhook flow (kvmi-abi §2.6)", () => {
  it("(a) the tool enabled UNHOOK and closes on the event: preunhook ok, closedBy tool, quick; no reconnect after migrate", async () => {
    const listener = await listen();
    const vm = startVm(listener, { unhookTimeoutMs: 10_000 });
    const connection = await hookedConnection(listener, 1);
    await enableUnhook(connection);
    const gfn = await restrictPage(vm, connection);
    const toolSide = (async () => {
      const event = await connection.tool.nextEvent(WAIT_MS);
      expect(event.spec?.name).toBe("KVMI_EVENT_UNHOOK");
      expect(event.size).toBe(layouts.kvmiEvent.size);
      connection.socket.destroy();
    })();
    const outcome = await within(vm.runAction("migrate"), WAIT_MS, "migrate");
    await toolSide;
    expect(outcome).toMatchObject({ action: "migrate", preunhook: "ok", closedBy: "tool" });
    expect(outcome.durationMs).toBeLessThan(1000);
    expect(vm.kernel.isHooked).toBe(false);
    expect(vm.guest.memory.getPageAccess(gfn)).toBe(RWX);
    await expectNoReconnect(listener);
  });

  it("(b) the tool did not enable UNHOOK: preunhook ENOENT, closedBy immediate; no reconnect after shutdown", async () => {
    const listener = await listen();
    const vm = startVm(listener, { unhookTimeoutMs: 10_000 });
    const connection = await hookedConnection(listener, 1);
    const gfn = await restrictPage(vm, connection);
    const outcome = await within(vm.runAction("shutdown"), WAIT_MS, "shutdown");
    expect(outcome).toMatchObject({ action: "shutdown", preunhook: "ENOENT", closedBy: "immediate" });
    expect(outcome.durationMs).toBeLessThan(1000);
    await within(connection.tool.closed, WAIT_MS, "QEMU closing the socket");
    expect(connection.tool.queuedEvents).toBe(0);
    expect(vm.kernel.isHooked).toBe(false);
    expect(vm.guest.memory.getPageAccess(gfn)).toBe(RWX);
    await expectNoReconnect(listener);
  });

  it("(c) the tool enabled UNHOOK but never closes: closedBy timeout after unhook_timeout; resume reconnects", async () => {
    const unhookTimeoutMs = 300;
    const listener = await listen();
    const vm = startVm(listener, { unhookTimeoutMs });
    const connection = await hookedConnection(listener, 1);
    await enableUnhook(connection);
    const gfn = await restrictPage(vm, connection);
    const outcome = await within(vm.runAction("pause"), WAIT_MS, "pause");
    expect(outcome).toMatchObject({ action: "pause", preunhook: "ok", closedBy: "timeout" });
    expect(outcome.durationMs).toBeGreaterThanOrEqual(unhookTimeoutMs - 5);
    expect(outcome.durationMs).toBeLessThan(unhookTimeoutMs + 500);
    const event = await connection.tool.nextEvent(WAIT_MS);
    expect(event.spec?.name).toBe("KVMI_EVENT_UNHOOK");
    await within(connection.tool.closed, WAIT_MS, "QEMU force-closing the socket");
    expect(vm.kernel.isHooked).toBe(false);
    expect(vm.guest.memory.getPageAccess(gfn)).toBe(RWX);
    await waitUntil(() => vm.guest.runState === "paused", WAIT_MS, "guest paused");
    // Paused: no reconnect until resume.
    await expectNoReconnect(listener);
    vm.resume();
    const again = await hookedConnection(listener, 2);
    expect(again.identity.uuid).toBe(vm.uuid);
    expect(vm.guest.runState).toBe("running");
  });

  it("an action during the handshake reports not-hooked, and a late answer does not hook the suspended VM", async () => {
    const replyDelayMs = 200;
    const listener = await listen({ replyDelayMs });
    const vm = startVm(listener);
    const hook = vi.spyOn(vm.kernel, "hook");
    const connection = await listener.connection(1, WAIT_MS);
    const outcome = await within(vm.runAction("suspend"), WAIT_MS, "suspend");
    expect(outcome).toMatchObject({ action: "suspend", preunhook: "not-hooked", closedBy: "immediate" });
    await within(connection.tool.closed, replyDelayMs + WAIT_MS, "QEMU dropping the half-open connection");
    expect(hook).not.toHaveBeenCalled();
    expect(vm.kernel.isHooked).toBe(false);
    await expectNoReconnect(listener);
  });
});
