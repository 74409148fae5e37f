// SPDX-License-Identifier: Apache-2.0
/**
 * The bridge as the operator runs it (`node service/bin/kvmi-bridge.mjs`, a child process), with an
 * emulated VM in the test process:
 *
 * - malformed, truncated and oversized handshakes and frames from the device-manager side: the
 *   bridge closes that one connection, logs why (JSON log lines on stdout), and keeps serving the
 *   emulated VM;
 * - SIGTERM with hooks set: the controller gets the unhook notice (BRIDGE_SHUTDOWN) with the
 *   deadline, ignores it, and at the deadline the bridge undoes the ledger, answers the pending
 *   event, closes the KVMI socket (the emulator sees the guest as it was before the controller)
 *   and exits 0 within the unhook deadline plus the shutdown grace.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EventType, Role, State, UnhookReason } from "@kvmi/proto";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { createEmulatedVm } from "@kvmi/kvm-bridge/emulator";
import { commandByOp } from "@kvmi/kvm-bridge/wire";
import type { CommandOp } from "@kvmi/kvm-bridge/wire";
import type { EmulatedVm } from "@kvmi/kvm-bridge/emulator";
import { randomUUID } from "node:crypto";
import { CONTINUE, E2E_DIALECT, GrpcStatus, IntrospectionClient, settle, streamFailure, waitUntil, withTimeout } from "../support/bridge-harness.js";
import {
  captureAtUnhook,
  cleanState,
  fakeHook,
  frame,
  handshakeBytes,
  hookPlan,
  MAX_FRAME_BODY,
  prepareGuest,
  ramDigest,
  RawPeer,
  SPOTS,
  startBridgeProcess,
} from "../support/fault-tools.js";
import type { BridgeProcess } from "../support/fault-tools.js";

/** What the bridge asks a VM at hook time, by op (each dialect names them its own way). */
const HOOK_TIME_OPS: readonly CommandOp[] = ["GET_VERSION", "GET_VM_INFO", "CONTROL_VM_EVENTS"];
/** The message id of a vCPU event and of a command reply (GET_VERSION's) in the project's dialect. */
const EVENT_ID = E2E_DIALECT.eventFraming.vcpuEventMessageId;
const REPLY_ID = commandByOp(E2E_DIALECT, "GET_VERSION")!.id;

const UNHOOK_DEADLINE_MS = 600;
const SHUTDOWN_GRACE_MS = 1000;

let dir: string;
let bridge: BridgeProcess;
let vm: EmulatedVm;
let client: IntrospectionClient;

const vmName = (): string => `vms/${vm.uuid}`;
const ms = (t: Timestamp | undefined): number => Number(t!.seconds) * 1000 + t!.nanos / 1e6;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "kvmi-faults-"));
  const kvmiPath = join(dir, "kvmi.sock");
  bridge = await startBridgeProcess(kvmiPath, [
    "--unhook-deadline-ms", String(UNHOOK_DEADLINE_MS),
    "--shutdown-grace-ms", String(SHUTDOWN_GRACE_MS),
    "--event-timeout-ms", "5000",
  ]);
  vm = createEmulatedVm({ kind: "unix", path: kvmiPath }, { name: "child-bridge-vm", dialect: E2E_DIALECT, vcpus: 2, memoryMiB: 8, workload: false, reconnectMs: 50 });
  prepareGuest(vm);
  vm.start();
  client = new IntrospectionClient(bridge.target);
  await waitUntil(async () => (await client.unary("getVm", { name: vmName() }, { deadlineMs: 1000 })).vm?.state === State.HOOKED, "the VM hooked on the child bridge", {
    timeoutMs: 10_000,
  });
}, 30_000);

afterAll(async () => {
  client?.close();
  await vm?.stop();
  await bridge?.proc.stop();
  if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
});

/** The emulated VM still answers a command and delivers an event to a controller. */
async function expectVmServed(): Promise<void> {
  const controller = await client.attach(vmName(), Role.CONTROLLER);
  await controller.ok({ case: "controlVcpuEvents", value: { name: `${vmName()}/vcpus/1`, event: EventType.HYPERCALL, enable: true } });
  const call = vm.guest.vcpus[1]!.hypercall(34n, 24n, 0n);
  controller.reply(await controller.event((e) => e.type === EventType.HYPERCALL), CONTINUE);
  expect(await settle(call, "VMCALL")).toEqual({ status: "done", value: 0n });
  await controller.ok({ case: "controlVcpuEvents", value: { name: `${vmName()}/vcpus/1`, event: EventType.HYPERCALL, enable: false } });
  controller.release();
  expect((await controller.closed()).code).toBe(GrpcStatus.OK);
}

/** Log lines (JSON) whose text mentions `needle` (and `also`), after waiting (bounded) for at least one. */
async function logged(msg: string, needle: string | RegExp, also = ""): Promise<Array<Record<string, unknown>>> {
  const mentions = (text: string): boolean => (typeof needle === "string" ? text.includes(needle) : needle.test(text)) && text.includes(also);
  const matches = () => bridge.logs(msg).filter((l) => mentions(JSON.stringify(l)));
  await waitUntil(() => matches().length > 0, `a "${msg}" log line mentioning ${String(needle)}`, { timeoutMs: 3000 });
  return matches();
}

describe("malformed input from the device-manager side", () => {
  it("closes only that connection, logs the reason, and keeps serving the emulated VM", async () => {
    // Handshakes: too small, absurdly large, truncated.
    for (const size of [8, 0x7fff_ffff]) {
      const peer = await RawPeer.connect(bridge.kvmiPath);
      const bytes = new Uint8Array(8);
      new DataView(bytes.buffer).setUint32(0, size, true);
      peer.write(bytes);
      expect(await peer.waitClosed(2000), `struct_size ${size}: closed by the bridge`).toBe(true);
      expect(peer.closedByBridge).toBe(true);
      const [line] = await logged("closing a device-manager connection", `struct_size ${size}`);
      expect(line!["level"]).toBe("warn");
    }
    {
      const peer = await RawPeer.connect(bridge.kvmiPath);
      peer.write(handshakeBytes(randomUUID()).subarray(0, 50));
      await new Promise((r) => setTimeout(r, 50));
      expect(peer.isClosed).toBe(false); // the bridge waits for the rest (bounded by its handshake timeout)
      peer.destroy();
      await logged("closing a device-manager connection", /handshake failed: .*46 of 92 bytes/);
    }

    // A valid handshake, then an oversize header (8185 = KVMI_MSG_SIZE + 1) before the hook completed.
    {
      const uuid = randomUUID();
      const peer = await RawPeer.connect(bridge.kvmiPath);
      peer.write(handshakeBytes(uuid));
      await peer.waitBytes(24);
      peer.write(frame(REPLY_ID, 2, new Uint8Array(0), MAX_FRAME_BODY + 1));
      expect(await peer.waitClosed(2000)).toBe(true);
      expect(peer.closedByBridge).toBe(true);
      await logged("KVMI channel closed", "8185");
      await logged("could not hook the VM", uuid);
    }

    // Hooked VMs that then send garbage.
    const cases: Array<[string, (peer: RawPeer) => void, RegExp, boolean]> = [
      ["oversize header", (p) => p.write(frame(EVENT_ID, 9, new Uint8Array(0), MAX_FRAME_BODY + 1)), /declares 8185 body bytes/, true],
      ["malformed event", (p) => p.write(frame(EVENT_ID, 9, new Uint8Array(10))), /malformed event/, true],
      ["reply to nothing", (p) => p.write(frame(REPLY_ID, 0x7777, new Uint8Array(24))), /reply seq 30583/, true],
      ["truncated body, then close", (p) => {
        p.write(frame(EVENT_ID, 9, new Uint8Array(10), 100));
        setTimeout(() => p.destroy(), 30);
      }, /device manager disconnected/, false],
    ];
    for (const [what, send, reason, bridgeCloses] of cases) {
      const fake = await fakeHook(bridge.kvmiPath);
      await waitUntil(async () => (await client.unary("getVm", { name: `vms/${fake.uuid}` }, { deadlineMs: 1000 })).vm?.state === State.HOOKED, `${what}: fake VM hooked`);
      send(fake.peer);
      expect(await fake.peer.waitClosed(2000), `${what}: connection closed`).toBe(true);
      expect(fake.peer.closedByBridge, `${what}: closed by the bridge`).toBe(bridgeCloses);
      const [line] = await logged("KVMI channel closed", reason, fake.uuid);
      expect(line!["vm"], `${what}: the log line names the VM`).toBe(fake.uuid);
      await waitUntil(async () => (await client.unary("getVm", { name: `vms/${fake.uuid}` }, { deadlineMs: 1000 })).vm?.state === State.DISCONNECTED, `${what}: fake VM disconnected`);
      expect((await client.unary("getVmInfo", { vm: vmName() })).vcpuCount, `${what}: the emulated VM still answers`).toBe(2);
    }
    await expectVmServed();
    expect(bridge.proc.child.exitCode).toBeNull();
  });
});

describe("SIGTERM with hooks set", () => {
  it("announces BRIDGE_SHUTDOWN, undoes the ledger at the deadline, closes the KVMI socket, exits 0 within the grace", async () => {
    const before = ramDigest(vm);
    const capture = captureAtUnhook(vm);
    try {
      const controller = await client.attach(vmName(), Role.CONTROLLER);
      for (const request of hookPlan(vmName())) await controller.ok(request);
      expect(ramDigest(vm)).not.toBe(before);
      const run = vm.guest.vcpus[0]!.executeAt(SPOTS.BP_GPA);
      await controller.event((e) => e.type === EventType.BREAKPOINT);

      const sent = Date.now();
      bridge.proc.child.kill("SIGTERM");
      const notice = await controller.next("unhook");
      expect(notice).toMatchObject({ vm: vmName(), reason: UnhookReason.BRIDGE_SHUTDOWN });
      expect(ms(notice.deadline) - sent).toBeGreaterThan(UNHOOK_DEADLINE_MS - 150);
      expect(ms(notice.deadline) - sent).toBeLessThan(UNHOOK_DEADLINE_MS + 1000);

      // The controller ignores it. The emulator sees the socket close only after the undo.
      const closed = await capture.next(UNHOOK_DEADLINE_MS + 5000);
      expect(closed.state).toEqual(cleanState(vm, before));
      expect(closed.at - sent).toBeGreaterThanOrEqual(UNHOOK_DEADLINE_MS - 150);
      expect(await settle(run, "the breakpoint")).toMatchObject({ status: "done", value: { gva: SPOTS.BP_GPA } });
      expect(vm.guest.vcpus[0]!.deliveredExceptions.some((e) => e.nr === 3)).toBe(false);
      expect(streamFailure(await controller.closed(3000)).code).toBe(GrpcStatus.UNAVAILABLE);

      const exit = await withTimeout(bridge.proc.exited, UNHOOK_DEADLINE_MS + SHUTDOWN_GRACE_MS + 5000, "the bridge's exit");
      expect(exit).toMatchObject({ code: 0, signal: null });
      expect(exit.at - sent).toBeLessThan(UNHOOK_DEADLINE_MS + SHUTDOWN_GRACE_MS + 1500);
      expect(exit.at).toBeGreaterThanOrEqual(closed.at);
      const [undo] = bridge.logs("undid the controller's hooks");
      expect(undo).toMatchObject({ failures: 0, restoredBytes: 7 });
    } finally {
      capture.dispose();
    }
  });
});

describe("SIGTERM while a VM is still being hooked", () => {
  it("does not hook a VM whose hook-time commands complete during the shutdown, closes it, and exits 0 in time", async () => {
    const localDir = mkdtempSync(join(tmpdir(), "kvmi-faults-"));
    const path = join(localDir, "kvmi.sock");
    const late = await startBridgeProcess(path, ["--unhook-deadline-ms", "300", "--shutdown-grace-ms", "500"]);
    try {
      let release!: () => void;
      const hold = new Promise<void>((resolveHold) => (release = resolveHold));
      // A device manager whose kernel answers the bridge's hook-time commands only after SIGTERM.
      const hooking = fakeHook(path, { hold, timeoutMs: 10_000 }).catch((err: unknown) => err as Error);
      await waitUntil(() => late.logs("handshake complete").length === 1, "the handshake", { timeoutMs: 5000 });
      const sent = Date.now();
      late.proc.child.kill("SIGTERM");
      await late.proc.line((l) => l["msg"] === "shutting down: releasing every VM", "the shutdown to start", 5000);
      release();
      const fake = await hooking;
      // Either the bridge closed the connection before the hook-time commands were all answered
      // (fakeHook rejects), or it got their answers and closed it right after; never hooked.
      if (fake instanceof Error) expect(fake.message).toMatch(/closed the fake VM during its hook/);
      else expect(await fake.peer.waitClosed(2000), "the bridge closes the VM it admitted during shutdown").toBe(true);
      const exit = await withTimeout(late.proc.exited, 5000, "the bridge's exit").catch((err: Error) => err);
      expect(exit, "the bridge exits").not.toBeInstanceOf(Error);
      expect(exit).toMatchObject({ code: 0 });
      expect((exit as { at: number }).at - sent).toBeLessThan(300 + 500 + 1500);
      const uuid = late.logs("handshake complete")[0]!["vm"] as string;
      // Not hooked: its channel was closed by the shutdown itself, never released by a VM host (which
      // announces "unhook pending" and closes with "introspection released"), and the bridge sent
      // nothing but the hook-time commands.
      const closes = late.logs("KVMI channel closed", { vm: uuid });
      expect(closes.map((l) => l["reason"]), "why the bridge closed the VM's channel").toEqual(["the bridge is shutting down"]);
      expect(late.logs("unhook pending", { vm: uuid }), "a VM host released the VM").toEqual([]);
      if (!(fake instanceof Error)) expect(fake.commands).toEqual(HOOK_TIME_OPS.map((op) => commandByOp(E2E_DIALECT, op)!.name));
    } finally {
      await late.proc.stop();
      rmSync(localDir, { recursive: true, force: true });
    }
  });
});
