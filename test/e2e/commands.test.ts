// SPDX-License-Identifier: Apache-2.0
/**
 * Every unary RPC of kvmi.v1.IntrospectionService end to end: the 25 KVMI command RPCs, the
 * registry RPCs (GetVm, ListVms with paging, ReleaseVm) and BatchReadMemory, each with a success
 * checked against the emulated guest and at least one failure checked by gRPC code and decoded
 * google.rpc.ErrorInfo (reason, errno, command, vm, vcpu). Mutating RPCs need the controller's
 * session id in `kvmi-session-id`; arguments the bridge can check itself never reach the socket
 * (the emulated kernel receives no frame of the command, and the guest is unchanged).
 *
 * VMs: 0 is the main VM; 1 has a restricted allow list (no GET_XSAVE command; no PAUSE_VCPU, TRAP
 * or SINGLESTEP event); 2 is on a host without single-step or descriptor-exit support; 3 is
 * released by an operator and, with a long reconnect interval, stays disconnected.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Command, CpuMode, EventType, HandshakeVariant, MtrrType, State } from "@kvmi/proto";
import type { Vm } from "@kvmi/proto";
import { commandByOp, errno, V9_COMMANDS } from "@kvmi/kvm-bridge/wire";
import type { CommandOp, V9CommandName } from "@kvmi/kvm-bridge/wire";
import { guestModel } from "@kvmi/kvm-bridge/emulator";
import {
  CONTINUE,
  expectGrpcError,
  GrpcStatus,
  inlineFailure,
  Role,
  settle,
  startHarness,
  streamFailure,
  waitUntil,
  E2E_DIALECT,
  e2eEventId,
} from "../support/bridge-harness.js";
import type { Harness, SessionClient } from "../support/bridge-harness.js";

const MAIN = 0;
const RESTRICTED = 1;
const NO_HW = 2;
const RELEASED = 3;
const UNKNOWN_VM = "vms/00000000-0000-4000-8000-000000000000";
const UNKNOWN_UUID = "00000000-0000-4000-8000-000000000000";
const MSR_EFER = 0xc0000080;
const MSR_LSTAR = 0xc0000082;
const COMMANDS_TOTAL = "kvmi_bridge_commands_total";
/** Command ids allowed on the restricted VM: everything but GET_XSAVE. */
const RESTRICTED_COMMANDS = E2E_DIALECT.commands.filter((spec) => spec.op !== "GET_XSAVE").map((spec) => spec.id);
/** Event ids allowed on the restricted VM: no PAUSE_VCPU, TRAP, SINGLESTEP. */
const RESTRICTED_EVENTS = E2E_DIALECT.events.filter((spec) => !["PAUSE_VCPU", "TRAP", "SINGLESTEP"].includes(spec.kind)).map((spec) => spec.id);

let h: Harness;
let ctl: SessionClient;
let ctlRestricted: SessionClient;
let ctlNoHw: SessionClient;
let observer: SessionClient;

const vm = (i = MAIN): string => h.vmName(i);
const vcpu = (n: number, i = MAIN): string => h.vcpuName(i, n);
const uuid = (i = MAIN): string => h.vms[i]!.uuid;
const guest = (i = MAIN) => h.vms[i]!.guest;
const kernelVcpu = (n: number, i = MAIN) => h.vms[i]!.kernel.vcpu(n)!;

/** Frames with the id of `command` that the emulated kernels of every VM received (KvmiVm.receivedFrames). */
function kernelFrames(command: string): number {
  // kvmi.v1 names commands as v9 does; the frames carry the id of the same op in the VM's dialect.
  const op = V9_COMMANDS[command as V9CommandName]?.op;
  if (op === undefined) throw new Error(`${command} is not a v9 command`);
  // A command the VM's dialect lacks never reaches its socket: no frames to count.
  const id = commandByOp(E2E_DIALECT, op)?.id;
  if (id === undefined) return 0;
  return h.vms.reduce((sum, v) => sum + v.kernel.receivedFrames(id), 0);
}

/**
 * Orders the check after anything the call may have written: one GET_VERSION round trip per
 * hooked VM. Each KVMI socket is ordered, so once its reply is back, every earlier frame on it
 * has reached the kernel's receive thread.
 */
async function socketsFlushed(): Promise<void> {
  for (const [i, v] of h.vms.entries()) if (v.kernel.isHooked) await h.client.unary("getVersion", { vm: vm(i) });
}

/**
 * Runs `call` and asserts that no frame of `command` reached any emulated kernel: judged on the
 * kernel side, not by the bridge's own metrics (which count calls that fail before any write).
 */
async function neverReachesSocket<T>(command: string, call: () => Promise<T>): Promise<T> {
  const before = kernelFrames(command);
  const result = await call();
  await socketsFlushed();
  expect(kernelFrames(command) - before, `frames of ${command} the kernel received`).toBe(0);
  return result;
}

/** Whether the dialect's GET_VERSION reply carries the singlestep feature. */
const REPORTS_SINGLESTEP = JSON.stringify(commandByOp(E2E_DIALECT, "GET_VERSION")?.reply.layout ?? null).includes('"singlestep"');
/** Whether the dialect's SET_PAGE_ACCESS names an EPT view. */
const PAGE_ACCESS_HAS_VIEW = JSON.stringify(commandByOp(E2E_DIALECT, "SET_PAGE_ACCESS")?.request.layout ?? null).includes('"view"');
/** Whether the dialect's SET_PAGE_ACCESS entries carry `visible`. */
const PAGE_ACCESS_HAS_VISIBLE = JSON.stringify(commandByOp(E2E_DIALECT, "SET_PAGE_ACCESS")?.request ?? null).includes('"visible"');

/**
 * When the dialect lacks `op`, asserts that the RPC fails with FAILED_PRECONDITION, reason
 * NOT_IN_DIALECT, naming the dialect, and returns true; returns false when the dialect has it.
 */
async function failsNotInDialect(op: CommandOp, call: () => Promise<unknown>): Promise<boolean> {
  if (commandByOp(E2E_DIALECT, op) !== undefined) return false;
  const failure = await expectGrpcError(call(), GrpcStatus.FAILED_PRECONDITION);
  expect(failure.details).toMatchObject({ reason: "NOT_IN_DIALECT", vm: uuid() });
  expect(failure.message).toContain(E2E_DIALECT.name);
  return true;
}

/**
 * Runs `call` and asserts that exactly one frame of `command` reached an emulated kernel, and that
 * the bridge counted it as `status` ("ok", or failed by the kernel's answer).
 */
async function reachesSocket<T>(command: string, status: "ok" | "failed", call: () => Promise<T>): Promise<T> {
  const okCount = async (): Promise<number> => (await h.metrics()).value(COMMANDS_TOTAL, { command, status: "ok" });
  const [framesBefore, okBefore] = [kernelFrames(command), await okCount()];
  const result = await call();
  expect(kernelFrames(command) - framesBefore, `frames of ${command} the kernel received`).toBe(1);
  expect((await okCount()) - okBefore, `${command} ok count`).toBe(status === "ok" ? 1 : 0);
  return result;
}

beforeAll(async () => {
  h = await startHarness({
    vms: [
      {},
      { commands: RESTRICTED_COMMANDS, events: RESTRICTED_EVENTS },
      { features: { singlestep: false, descriptorExits: false } },
      { reconnectMs: 600_000 },
    ],
  });
  ctl = await h.attach(MAIN, Role.CONTROLLER);
  observer = await h.attach(MAIN, Role.OBSERVER);
  ctlRestricted = await h.attach(RESTRICTED, Role.CONTROLLER);
  ctlNoHw = await h.attach(NO_HW, Role.CONTROLLER);
});

afterAll(async () => {
  await h?.stop();
});

/** The controller's session id, for mutating unary RPCs. */
const asController = (): { sessionId: string } => ({ sessionId: ctl.id });

/** Asserts a mutating RPC without (or with a wrong) session id fails before the socket. */
async function expectNotController(command: string, call: (sessionId?: string) => Promise<unknown>, vcpuIndex?: number, i = MAIN): Promise<void> {
  for (const sessionId of [undefined, observer.id, "not-a-session"]) {
    const failure = await neverReachesSocket(command, () => expectGrpcError(call(sessionId), GrpcStatus.PERMISSION_DENIED));
    expect(failure.details).toMatchObject({ reason: "NOT_CONTROLLER", command, vm: uuid(i), ...(vcpuIndex !== undefined && { vcpu: vcpuIndex }) });
    expect(failure.message).toMatch(/controller/);
  }
}

// -------------------------------------------------------------------------------------------------
describe("GetVm", () => {
  it("returns the VM as the handshake and the kernel describe it", async () => {
    const { vm: got } = await h.client.unary("getVm", { name: vm() });
    expect(got).toMatchObject({
      name: vm(),
      uuid: uuid(),
      displayName: h.vms[MAIN]!.name,
      state: State.HOOKED,
      generation: 1n,
      vcpuCount: 2,
      dialect: E2E_DIALECT.name,
      kvmiVersion: 1,
      handshakeVariant: HandshakeVariant.BASE,
      controllerAttached: true,
      observerCount: 1,
    } satisfies Partial<Vm>);
    expect(got!.features?.singlestep).toBe(REPORTS_SINGLESTEP);
    // Every command and event of the dialect, as CHECK_COMMAND / CHECK_EVENT reported them at hook time.
    expect(got!.commands).toEqual(E2E_DIALECT.commands.map((spec) => spec.op));
    expect(got!.events).toEqual(E2E_DIALECT.events.map((spec) => spec.kind));
    // QEMU's allow lists remove some on the restricted VM.
    const { vm: restricted } = await h.client.unary("getVm", { name: vm(RESTRICTED) });
    expect(restricted!.commands).not.toContain("GET_XSAVE");
    expect(restricted!.commands).toContain("READ_PHYSICAL");
    expect(restricted!.events).toEqual(E2E_DIALECT.events.filter((spec) => RESTRICTED_EVENTS.includes(spec.id)).map((spec) => spec.kind));
    expect(got!.startTime?.seconds).toBe(h.vms[MAIN]!.deviceManager.vmStartTime);
  });

  it("fails with NOT_FOUND for an unknown VM and INVALID_ARGUMENT for a malformed name", async () => {
    const missing = await expectGrpcError(h.client.unary("getVm", { name: UNKNOWN_VM }), GrpcStatus.NOT_FOUND);
    expect(missing.details).toMatchObject({ reason: "VM_NOT_FOUND", vm: UNKNOWN_UUID });
    expect(missing.details.resourceInfo).toMatchObject({ resourceType: "kvmi.v1.Vm", resourceName: UNKNOWN_VM });
    const malformed = await expectGrpcError(h.client.unary("getVm", { name: "vm/1" }), GrpcStatus.INVALID_ARGUMENT);
    expect(malformed.details.reason).toBe("KVMI_INVALID_ARGUMENT");
    expect(malformed.details.fieldViolations).toEqual([expect.objectContaining({ field: "name" })]);
  });
});

describe("ListVms", () => {
  it("pages through every VM in UUID order", async () => {
    const first = await h.client.unary("listVms", { pageSize: 3 });
    expect(first.vms).toHaveLength(3);
    expect(first.nextPageToken).not.toBe("");
    const second = await h.client.unary("listVms", { pageSize: 3, pageToken: first.nextPageToken });
    expect(second.vms).toHaveLength(1);
    expect(second.nextPageToken).toBe("");
    const uuids = [...first.vms, ...second.vms].map((v) => v.uuid);
    expect(uuids).toEqual(h.vms.map((v) => v.uuid).sort());
    const all = await h.client.unary("listVms", {});
    expect(all.vms.map((v) => v.uuid)).toEqual(uuids);
    expect(all.nextPageToken).toBe("");
  });

  it("rejects a negative page size and a token it did not issue", async () => {
    const negative = await expectGrpcError(h.client.unary("listVms", { pageSize: -1 }), GrpcStatus.INVALID_ARGUMENT);
    expect(negative.details.fieldViolations).toEqual([expect.objectContaining({ field: "page_size" })]);
    const token = await expectGrpcError(h.client.unary("listVms", { pageToken: "bm90LWEtdG9rZW4" }), GrpcStatus.INVALID_ARGUMENT);
    expect(token.details.fieldViolations).toEqual([expect.objectContaining({ field: "page_token" })]);
  });
});

// -------------------------------------------------------------------------------------------------
describe("GetVersion", () => {
  it("returns version 1, the host features and the v9 message size", async () => {
    const reply = await reachesSocket("KVMI_GET_VERSION", "ok", () => h.client.unary("getVersion", { vm: vm() }));
    expect(reply).toMatchObject({ version: 1, maxMsgSize: 8184 });
    // A kernel whose GET_VERSION carries no singlestep feature (kvmi-v7) reports it as false.
    expect(reply.features?.singlestep).toBe(REPORTS_SINGLESTEP);
    const noHw = await h.client.unary("getVersion", { vm: vm(NO_HW) });
    expect(noHw.features?.singlestep).toBe(false);
  });

  it("fails with NOT_FOUND for an unknown VM, with the command in ErrorInfo", async () => {
    const failure = await expectGrpcError(h.client.unary("getVersion", { vm: UNKNOWN_VM }), GrpcStatus.NOT_FOUND);
    expect(failure.details).toMatchObject({ reason: "VM_NOT_FOUND", vm: UNKNOWN_UUID, command: "KVMI_GET_VERSION" });
    expect(failure.message).toContain(UNKNOWN_VM);
  });
});

describe("CheckCommand", () => {
  it("succeeds for an allowed command", async () => {
    await reachesSocket("KVMI_VM_CHECK_COMMAND", "ok", () => h.client.unary("checkCommand", { vm: vm(), command: Command.VCPU_GET_XSAVE }));
  });

  it("fails with NOT_FOUND (ENOENT) for an unknown command and PERMISSION_DENIED (EPERM) for a disallowed one", async () => {
    const unknown = await expectGrpcError(h.client.unary("checkCommand", { vm: vm(), command: 99 as Command }), GrpcStatus.NOT_FOUND);
    expect(unknown.details).toMatchObject({ reason: "KVMI_NOT_FOUND", errno: errno.KVM_ENOENT, command: "KVMI_VM_CHECK_COMMAND", vm: uuid() });
    const denied = await expectGrpcError(
      h.client.unary("checkCommand", { vm: vm(RESTRICTED), command: Command.VCPU_GET_XSAVE }),
      GrpcStatus.PERMISSION_DENIED,
    );
    expect(denied.details).toMatchObject({ reason: "KVMI_NOT_ALLOWED", errno: errno.KVM_EPERM, command: "KVMI_VM_CHECK_COMMAND", vm: uuid(RESTRICTED) });
  });

  it("rejects COMMAND_UNSPECIFIED before the socket", async () => {
    const failure = await neverReachesSocket("KVMI_VM_CHECK_COMMAND", () =>
      expectGrpcError(h.client.unary("checkCommand", { vm: vm() }), GrpcStatus.INVALID_ARGUMENT),
    );
    expect(failure.details).toMatchObject({ reason: "KVMI_INVALID_ARGUMENT", command: "KVMI_VM_CHECK_COMMAND", vm: uuid() });
    expect(failure.details.fieldViolations).toEqual([expect.objectContaining({ field: "command" })]);
  });
});

describe("CheckEvent", () => {
  it("succeeds for an allowed event", async () => {
    await reachesSocket("KVMI_VM_CHECK_EVENT", "ok", () => h.client.unary("checkEvent", { vm: vm(), event: EventType.TRAP }));
  });

  it("fails with NOT_FOUND (ENOENT) for an unknown event and PERMISSION_DENIED (EPERM) for a disallowed one", async () => {
    const unknown = await expectGrpcError(h.client.unary("checkEvent", { vm: vm(), event: 50 as EventType }), GrpcStatus.NOT_FOUND);
    expect(unknown.details).toMatchObject({ reason: "KVMI_NOT_FOUND", errno: errno.KVM_ENOENT, command: "KVMI_VM_CHECK_EVENT" });
    const denied = await expectGrpcError(h.client.unary("checkEvent", { vm: vm(RESTRICTED), event: EventType.TRAP }), GrpcStatus.PERMISSION_DENIED);
    expect(denied.details).toMatchObject({ reason: "KVMI_NOT_ALLOWED", errno: errno.KVM_EPERM, command: "KVMI_VM_CHECK_EVENT", vm: uuid(RESTRICTED) });
  });
});

describe("GetVmInfo", () => {
  it("returns the vCPU count", async () => {
    expect((await h.client.unary("getVmInfo", { vm: vm() })).vcpuCount).toBe(guest().vcpus.length);
  });

  it("fails with NOT_FOUND for an unknown VM and INVALID_ARGUMENT for a malformed name", async () => {
    const missing = await expectGrpcError(h.client.unary("getVmInfo", { vm: UNKNOWN_VM }), GrpcStatus.NOT_FOUND);
    expect(missing.details).toMatchObject({ reason: "VM_NOT_FOUND", vm: UNKNOWN_UUID, command: "KVMI_VM_GET_INFO" });
    const malformed = await expectGrpcError(h.client.unary("getVmInfo", { vm: "" }), GrpcStatus.INVALID_ARGUMENT);
    expect(malformed.details).toMatchObject({ reason: "KVMI_INVALID_ARGUMENT", command: "KVMI_VM_GET_INFO" });
  });
});

describe("ControlVmEvents", () => {
  it("enables UNHOOK for the controller, and keeps it enabled when the controller disables it", async () => {
    const vmEvents = h.vms[MAIN]!.kernel.vmEvents();
    await h.client.unary("controlVmEvents", { vm: vm(), event: EventType.UNHOOK, enable: true }, asController());
    expect(vmEvents.has(e2eEventId("UNHOOK"))).toBe(true);
    // The bridge needs UNHOOK to announce unhooks: disabling it succeeds and changes nothing.
    await h.client.unary("controlVmEvents", { vm: vm(), event: EventType.UNHOOK, enable: false }, asController());
    expect(vmEvents.has(e2eEventId("UNHOOK"))).toBe(true);
  });

  it("is refused without the controller's session id", async () => {
    await expectNotController("KVMI_VM_CONTROL_EVENTS", (sessionId) =>
      h.client.unary("controlVmEvents", { vm: vm(), event: EventType.UNHOOK, enable: false }, { ...(sessionId && { sessionId }) }),
    );
    expect(h.vms[MAIN]!.kernel.vmEvents().has(e2eEventId("UNHOOK"))).toBe(true);
  });

  it("rejects a vCPU event before the socket", async () => {
    const failure = await neverReachesSocket("KVMI_VM_CONTROL_EVENTS", () =>
      expectGrpcError(h.client.unary("controlVmEvents", { vm: vm(), event: EventType.CR, enable: true }, asController()), GrpcStatus.INVALID_ARGUMENT),
    );
    expect(failure.details).toMatchObject({ reason: "KVMI_INVALID_ARGUMENT", command: "KVMI_VM_CONTROL_EVENTS", vm: uuid() });
    expect(failure.message).toMatch(/ControlVcpuEvents/);
  });
});

describe("ReadPhysicalMemory", () => {
  it("returns exactly the guest's bytes", async () => {
    guest().memory.write(0x5ff0n, Uint8Array.from({ length: 16 }, (_, i) => 0xa0 + i));
    const { data } = await h.client.unary("readPhysicalMemory", { vm: vm(), gpa: 0x5000n, size: 4096 });
    expect(Buffer.from(data)).toEqual(Buffer.from((guest().memory.read(0x5000n, 4096) as { bytes: Uint8Array }).bytes));
    expect([...data.subarray(0xff0)]).toEqual(Array.from({ length: 16 }, (_, i) => 0xa0 + i));
  });

  it.each([
    ["size 0", 0x1000n, 0, /1\.\.4096/],
    ["size 4097", 0x1000n, 4097, /4096/],
    ["a range crossing a page", 0x1ff0n, 32, /crosses the 4 KiB page boundary at 0x2000/],
  ])("rejects %s before the socket, with a message saying why", async (_what, gpa, size, message) => {
    const failure = await neverReachesSocket("KVMI_VM_READ_PHYSICAL", () =>
      expectGrpcError(h.client.unary("readPhysicalMemory", { vm: vm(), gpa, size }), GrpcStatus.INVALID_ARGUMENT),
    );
    expect(failure.message).toMatch(message);
    expect(failure.details).toMatchObject({ reason: "KVMI_INVALID_ARGUMENT", command: "KVMI_VM_READ_PHYSICAL", vm: uuid() });
    expect(failure.details.fieldViolations).toEqual([expect.objectContaining({ field: "size" })]);
  });

  it("fails with NOT_FOUND (ENOENT) beyond guest memory and in the low hole", async () => {
    for (const gpa of [guest().memory.maxGfn() << 12n, 0xa0000n]) {
      const failure = await reachesSocket("KVMI_VM_READ_PHYSICAL", "failed", () =>
        expectGrpcError(h.client.unary("readPhysicalMemory", { vm: vm(), gpa, size: 16 }), GrpcStatus.NOT_FOUND),
      );
      expect(failure.details).toMatchObject({ reason: "KVMI_NOT_FOUND", errno: errno.KVM_ENOENT, command: "KVMI_VM_READ_PHYSICAL", vm: uuid() });
    }
  });
});

describe("WritePhysicalMemory", () => {
  it("writes guest memory for the controller", async () => {
    await h.client.unary("writePhysicalMemory", { vm: vm(), gpa: 0x6100n, data: Uint8Array.of(1, 2, 3, 4) }, asController());
    expect((guest().memory.read(0x6100n, 4) as { bytes: Uint8Array }).bytes).toEqual(Uint8Array.of(1, 2, 3, 4));
  });

  it("is refused without the controller's session id, and the guest is unchanged", async () => {
    const before = (guest().memory.read(0x6200n, 4) as { bytes: Uint8Array }).bytes;
    await expectNotController("KVMI_VM_WRITE_PHYSICAL", (sessionId) =>
      h.client.unary("writePhysicalMemory", { vm: vm(), gpa: 0x6200n, data: Uint8Array.of(9, 9, 9, 9) }, { ...(sessionId && { sessionId }) }),
    );
    expect((guest().memory.read(0x6200n, 4) as { bytes: Uint8Array }).bytes).toEqual(before);
  });

  it("rejects empty data and a range crossing a page before the socket", async () => {
    for (const [gpa, data] of [
      [0x6000n, new Uint8Array()],
      [0x6ffen, Uint8Array.of(1, 2, 3, 4)],
      [0x6000n, new Uint8Array(4097)],
    ] as const) {
      const before = (guest().memory.read(0x6000n, 8192) as { bytes: Uint8Array }).bytes;
      const failure = await neverReachesSocket("KVMI_VM_WRITE_PHYSICAL", () =>
        expectGrpcError(h.client.unary("writePhysicalMemory", { vm: vm(), gpa, data }, asController()), GrpcStatus.INVALID_ARGUMENT),
      );
      expect(failure.details).toMatchObject({ reason: "KVMI_INVALID_ARGUMENT", command: "KVMI_VM_WRITE_PHYSICAL", vm: uuid() });
      expect(failure.details.fieldViolations).toEqual([expect.objectContaining({ field: "data" })]);
      expect((guest().memory.read(0x6000n, 8192) as { bytes: Uint8Array }).bytes).toEqual(before);
    }
  });

  it("fails with NOT_FOUND (ENOENT) beyond guest memory, naming the write", async () => {
    const failure = await expectGrpcError(
      h.client.unary("writePhysicalMemory", { vm: vm(), gpa: guest().memory.maxGfn() << 12n, data: Uint8Array.of(1) }, asController()),
      GrpcStatus.NOT_FOUND,
    );
    expect(failure.details).toMatchObject({ reason: "KVMI_NOT_FOUND", errno: errno.KVM_ENOENT, command: "KVMI_VM_WRITE_PHYSICAL", vm: uuid() });
  });
});

describe("GetVcpuInfo", () => {
  it("returns the guest TSC frequency", async () => {
    expect((await h.client.unary("getVcpuInfo", { name: vcpu(1) })).tscSpeed).toBe(guest().vcpus[1]!.state.tscHz);
  });

  it("rejects an unknown vCPU with INVALID_ARGUMENT before the socket", async () => {
    const failure = await neverReachesSocket("KVMI_VCPU_GET_INFO", () =>
      expectGrpcError(h.client.unary("getVcpuInfo", { name: vcpu(2) }), GrpcStatus.INVALID_ARGUMENT),
    );
    expect(failure.details).toMatchObject({ reason: "VCPU_NOT_FOUND", command: "KVMI_VCPU_GET_INFO", vm: uuid(), vcpu: 2 });
    expect(failure.message).toMatch(/valid indexes are 0\.\.1/);
    expect(failure.details.fieldViolations).toEqual([expect.objectContaining({ field: "name" })]);
  });
});

describe("PauseVcpu", () => {
  it("kicks the vCPU: exactly one PAUSE_VCPU event follows", async () => {
    await h.client.unary("pauseVcpu", { name: vcpu(1), wait: true }, asController());
    const event = await ctl.event((e) => e.type === EventType.PAUSE_VCPU);
    expect(event).toMatchObject({ vcpu: 1, name: vcpu(1), vm: vm() });
    ctl.reply(event, CONTINUE);
    await ctl.queue.expectNone((r) => r.message.case === "event" && r.message.value.type === EventType.PAUSE_VCPU, 100, "second PAUSE_VCPU event");
  });

  it("is refused without the controller's session id", async () => {
    await expectNotController("KVMI_VCPU_PAUSE", (sessionId) => h.client.unary("pauseVcpu", { name: vcpu(0) }, { ...(sessionId && { sessionId }) }), 0);
  });

  it("fails with PERMISSION_DENIED (EPERM) when the PAUSE_VCPU event is not allowed", async () => {
    const failure = await expectGrpcError(
      h.client.unary("pauseVcpu", { name: vcpu(0, RESTRICTED) }, { sessionId: ctlRestricted.id }),
      GrpcStatus.PERMISSION_DENIED,
    );
    expect(failure.details).toMatchObject({ reason: "KVMI_NOT_ALLOWED", errno: errno.KVM_EPERM, command: "KVMI_VCPU_PAUSE", vm: uuid(RESTRICTED), vcpu: 0 });
  });
});

describe("ControlVcpuEvents", () => {
  it("enables and disables an event on one vCPU", async () => {
    await h.client.unary("controlVcpuEvents", { name: vcpu(1), event: EventType.XSETBV, enable: true }, asController());
    expect(kernelVcpu(1).enabledEvents.has(e2eEventId("XSETBV"))).toBe(true);
    expect(kernelVcpu(0).enabledEvents.has(e2eEventId("XSETBV"))).toBe(false);
    await h.client.unary("controlVcpuEvents", { name: vcpu(1), event: EventType.XSETBV, enable: false }, asController());
    expect(kernelVcpu(1).enabledEvents.has(e2eEventId("XSETBV"))).toBe(false);
  });

  it("is refused without the controller's session id", async () => {
    await expectNotController(
      "KVMI_VCPU_CONTROL_EVENTS",
      (sessionId) => h.client.unary("controlVcpuEvents", { name: vcpu(1), event: EventType.CR, enable: true }, { ...(sessionId && { sessionId }) }),
      1,
    );
    expect(kernelVcpu(1).enabledEvents.has(e2eEventId("CR"))).toBe(false);
  });

  it("rejects UNHOOK before the socket", async () => {
    const failure = await neverReachesSocket("KVMI_VCPU_CONTROL_EVENTS", () =>
      expectGrpcError(h.client.unary("controlVcpuEvents", { name: vcpu(0), event: EventType.UNHOOK, enable: true }, asController()), GrpcStatus.INVALID_ARGUMENT),
    );
    expect(failure.details).toMatchObject({ reason: "KVMI_INVALID_ARGUMENT", command: "KVMI_VCPU_CONTROL_EVENTS", vm: uuid(), vcpu: 0 });
    expect(failure.message).toMatch(/ControlVmEvents/);
  });

  it("fails with UNIMPLEMENTED (EOPNOTSUPP) for DESCRIPTOR without hardware support", async () => {
    const failure = await expectGrpcError(
      h.client.unary("controlVcpuEvents", { name: vcpu(0, NO_HW), event: EventType.DESCRIPTOR, enable: true }, { sessionId: ctlNoHw.id }),
      GrpcStatus.UNIMPLEMENTED,
    );
    expect(failure.details).toMatchObject({ reason: "KVMI_UNSUPPORTED", errno: errno.KVM_EOPNOTSUPP, command: "KVMI_VCPU_CONTROL_EVENTS", vm: uuid(NO_HW), vcpu: 0 });
  });
});

describe("GetRegisters", () => {
  it("returns the mode, registers, special registers and requested MSRs", async () => {
    const state = guest().vcpus[0]!.state;
    state.regs = { ...state.regs, rbx: 0x1122334455667788n };
    const reply = await h.client.unary("getRegisters", { name: vcpu(0), msrIndices: [MSR_EFER, MSR_LSTAR] });
    expect(reply.mode).toBe(CpuMode.BITS_64);
    expect(reply.regs?.rbx).toBe(0x1122334455667788n);
    expect(reply.regs?.rip).toBe(state.regs.rip);
    expect(reply.sregs?.cr3).toBe(state.sregs.cr3);
    expect(reply.sregs?.cr0).toBe(state.sregs.cr0);
    expect(reply.msrs.map((m) => [m.index, m.data])).toEqual([
      [MSR_EFER, state.msrs.read(MSR_EFER)],
      [MSR_LSTAR, state.msrs.read(MSR_LSTAR)],
    ]);
  });

  it("fails with INVALID_ARGUMENT (EINVAL) for an MSR the vCPU cannot read", async () => {
    const failure = await expectGrpcError(h.client.unary("getRegisters", { name: vcpu(0), msrIndices: [0x12345] }), GrpcStatus.INVALID_ARGUMENT);
    expect(failure.details).toMatchObject({ reason: "KVMI_INVALID_ARGUMENT", errno: errno.KVM_EINVAL, command: "KVMI_VCPU_GET_REGISTERS", vm: uuid(), vcpu: 0 });
    expect(failure.details.fieldViolations).toEqual([expect.objectContaining({ field: "msr_indices" })]);
  });
});

describe("SetRegisters", () => {
  it("sets the registers of a vCPU waiting for an event reply", async () => {
    await h.client.unary("pauseVcpu", { name: vcpu(1) }, asController());
    const event = await ctl.event((e) => e.type === EventType.PAUSE_VCPU && e.vcpu === 1);
    const regs = { ...event.arch!.regs!, rbx: 0xfeedn, rcx: 0xbeefn };
    await h.client.unary("setRegisters", { name: vcpu(1), regs }, asController());
    ctl.reply(event, CONTINUE);
    await waitUntil(() => guest().vcpus[1]!.state.regs.rbx === 0xfeedn, "RBX set on vCPU 1");
    expect(guest().vcpus[1]!.state.regs.rcx).toBe(0xbeefn);
  });

  it("fails with FAILED_PRECONDITION (EOPNOTSUPP) when no event is pending", async () => {
    const failure = await expectGrpcError(h.client.unary("setRegisters", { name: vcpu(1), regs: { rbx: 1n } }, asController()), GrpcStatus.FAILED_PRECONDITION);
    expect(failure.details).toMatchObject({ reason: "KVMI_NO_EVENT_PENDING", errno: errno.KVM_EOPNOTSUPP, command: "KVMI_VCPU_SET_REGISTERS", vm: uuid(), vcpu: 1 });
    expect(failure.details.preconditionViolations).toHaveLength(1);
  });

  it("is refused without the controller's session id", async () => {
    await expectNotController("KVMI_VCPU_SET_REGISTERS", (sessionId) => h.client.unary("setRegisters", { name: vcpu(1), regs: {} }, { ...(sessionId && { sessionId }) }), 1);
  });
});

describe("GetCpuid", () => {
  it("returns the guest's CPUID leaf", async () => {
    const leaf = guest().vcpus[0]!.state.cpuid.get(0, 0)!;
    expect(await h.client.unary("getCpuid", { name: vcpu(0), function: 0 })).toMatchObject({ eax: leaf.eax, ebx: leaf.ebx, ecx: leaf.ecx, edx: leaf.edx });
  });

  it("fails with NOT_FOUND (ENOENT) for a missing leaf", async () => {
    const failure = await expectGrpcError(h.client.unary("getCpuid", { name: vcpu(0), function: 0x4fffffff }), GrpcStatus.NOT_FOUND);
    expect(failure.details).toMatchObject({ reason: "KVMI_NOT_FOUND", errno: errno.KVM_ENOENT, command: "KVMI_VCPU_GET_CPUID", vm: uuid(), vcpu: 0 });
  });
});

describe("ControlCleanup", () => {
  it("is accepted from the controller (FAILED_PRECONDITION NOT_IN_DIALECT where the kernel lacks it)", async () => {
    if (await failsNotInDialect("CONTROL_CLEANUP", () => h.client.unary("controlCleanup", { vm: vm(), enable: true }, asController()))) return;
    await reachesSocket("KVMI_VM_CONTROL_CLEANUP", "ok", () => h.client.unary("controlCleanup", { vm: vm(), enable: true }, asController()));
  });

  it("is refused without the controller's session id", async () => {
    await expectNotController("KVMI_VM_CONTROL_CLEANUP", (sessionId) => h.client.unary("controlCleanup", { vm: vm(), enable: false }, { ...(sessionId && { sessionId }) }));
  });
});

describe("ControlCr", () => {
  it("selects and deselects a control register", async () => {
    await h.client.unary("controlCr", { name: vcpu(1), cr: 4, enable: true }, asController());
    expect(kernelVcpu(1).crMask.has(4)).toBe(true);
    await h.client.unary("controlCr", { name: vcpu(1), cr: 4, enable: false }, asController());
    expect(kernelVcpu(1).crMask.has(4)).toBe(false);
  });

  it("rejects CR2 before the socket", async () => {
    const failure = await neverReachesSocket("KVMI_VCPU_CONTROL_CR", () =>
      expectGrpcError(h.client.unary("controlCr", { name: vcpu(1), cr: 2, enable: true }, asController()), GrpcStatus.INVALID_ARGUMENT),
    );
    expect(failure.details).toMatchObject({ reason: "KVMI_INVALID_ARGUMENT", command: "KVMI_VCPU_CONTROL_CR", vm: uuid(), vcpu: 1 });
    expect(failure.details.fieldViolations).toEqual([expect.objectContaining({ field: "cr" })]);
    expect(kernelVcpu(1).crMask.size).toBe(0);
  });

  it("is refused without the controller's session id", async () => {
    await expectNotController("KVMI_VCPU_CONTROL_CR", (sessionId) => h.client.unary("controlCr", { name: vcpu(1), cr: 3, enable: true }, { ...(sessionId && { sessionId }) }), 1);
  });
});

describe("InjectException", () => {
  it("queues the exception; a TRAP event reports it and the guest receives it; a second one meanwhile is busy", async () => {
    const delivered = guest().vcpus[0]!.deliveredExceptionCount;
    await h.client.unary("injectException", { name: vcpu(0), vector: 6 }, asController());
    const trap = await ctl.event((e) => e.type === EventType.TRAP);
    expect(trap.payload).toMatchObject({ case: "trap", value: { vector: 6 } });
    const busy = await expectGrpcError(h.client.unary("injectException", { name: vcpu(0), vector: 13 }, asController()), GrpcStatus.FAILED_PRECONDITION);
    expect(busy.details).toMatchObject({ reason: "KVMI_BUSY", errno: errno.KVM_EBUSY, command: "KVMI_VCPU_INJECT_EXCEPTION", vm: uuid(), vcpu: 0 });
    ctl.reply(trap, CONTINUE);
    await waitUntil(() => guest().vcpus[0]!.deliveredExceptionCount > delivered, "the #UD delivered to the guest");
    expect(guest().vcpus[0]!.deliveredExceptions.at(-1)?.nr).toBe(6);
  });

  it("is refused without the controller's session id", async () => {
    await expectNotController("KVMI_VCPU_INJECT_EXCEPTION", (sessionId) => h.client.unary("injectException", { name: vcpu(1), vector: 6 }, { ...(sessionId && { sessionId }) }), 1);
    expect(kernelVcpu(1).injection).toBeUndefined();
  });

  it("fails with PERMISSION_DENIED (EPERM) when the TRAP event is not allowed, and rejects vector 256 before the socket", async () => {
    const denied = await expectGrpcError(
      h.client.unary("injectException", { name: vcpu(0, RESTRICTED), vector: 6 }, { sessionId: ctlRestricted.id }),
      GrpcStatus.PERMISSION_DENIED,
    );
    expect(denied.details).toMatchObject({ reason: "KVMI_NOT_ALLOWED", errno: errno.KVM_EPERM, command: "KVMI_VCPU_INJECT_EXCEPTION", vcpu: 0 });
    const invalid = await neverReachesSocket("KVMI_VCPU_INJECT_EXCEPTION", () =>
      expectGrpcError(h.client.unary("injectException", { name: vcpu(0), vector: 256 }, asController()), GrpcStatus.INVALID_ARGUMENT),
    );
    expect(invalid.details.fieldViolations).toEqual([expect.objectContaining({ field: "vector" })]);
  });
});

describe("GetMaxGfn", () => {
  it("returns the first GFN past guest memory (FAILED_PRECONDITION NOT_IN_DIALECT where the kernel lacks it)", async () => {
    if (await failsNotInDialect("GET_MAX_GFN", () => h.client.unary("getMaxGfn", { vm: vm() }))) return;
    expect((await h.client.unary("getMaxGfn", { vm: vm() })).gfn).toBe(guest().memory.maxGfn());
  });

  it("fails with NOT_FOUND for an unknown VM", async () => {
    const failure = await expectGrpcError(h.client.unary("getMaxGfn", { vm: UNKNOWN_VM }), GrpcStatus.NOT_FOUND);
    expect(failure.details).toMatchObject({ reason: "VM_NOT_FOUND", command: "KVMI_VM_GET_MAX_GFN", vm: UNKNOWN_UUID });
  });
});

describe("GetXcr", () => {
  it("returns XCR0", async () => {
    expect((await h.client.unary("getXcr", { name: vcpu(0), xcr: 0 })).value).toBe(guest().vcpus[0]!.state.xsave.xcr0);
  });

  it("rejects XCR1 before the socket", async () => {
    const failure = await neverReachesSocket("KVMI_VCPU_GET_XCR", () =>
      expectGrpcError(h.client.unary("getXcr", { name: vcpu(0), xcr: 1 }), GrpcStatus.INVALID_ARGUMENT),
    );
    expect(failure.details).toMatchObject({ reason: "KVMI_INVALID_ARGUMENT", command: "KVMI_VCPU_GET_XCR", vm: uuid(), vcpu: 0 });
  });
});

describe("GetXsave", () => {
  it("returns the XSAVE area", async () => {
    const { region } = await h.client.unary("getXsave", { name: vcpu(0) });
    expect(Buffer.from(region)).toEqual(Buffer.from(guest().vcpus[0]!.state.xsave.getArea()));
  });

  it("fails with PERMISSION_DENIED (EPERM) when the device manager disallows the command", async () => {
    const failure = await expectGrpcError(h.client.unary("getXsave", { name: vcpu(0, RESTRICTED) }), GrpcStatus.PERMISSION_DENIED);
    expect(failure.details).toMatchObject({ reason: "KVMI_NOT_ALLOWED", errno: errno.KVM_EPERM, command: "KVMI_VCPU_GET_XSAVE", vm: uuid(RESTRICTED), vcpu: 0 });
  });
});

describe("SetXsave", () => {
  const MXCSR = 24;
  const XCOMP_BV = 512 + 8;

  it("loads the XSAVE area", async () => {
    const area = guest().vcpus[1]!.state.xsave.getArea();
    new DataView(area.buffer).setUint32(MXCSR, 0x1f00, true);
    await h.client.unary("setXsave", { name: vcpu(1), region: area }, asController());
    expect(new DataView(guest().vcpus[1]!.state.xsave.getArea().buffer).getUint32(MXCSR, true)).toBe(0x1f00);
  });

  it("fails with INVALID_ARGUMENT (EINVAL) for a state KVM rejects, and rejects 4097 bytes before the socket", async () => {
    const area = guest().vcpus[1]!.state.xsave.getArea();
    new DataView(area.buffer).setBigUint64(XCOMP_BV, 1n, true);
    const rejected = await expectGrpcError(h.client.unary("setXsave", { name: vcpu(1), region: area }, asController()), GrpcStatus.INVALID_ARGUMENT);
    expect(rejected.details).toMatchObject({ reason: "KVMI_INVALID_ARGUMENT", errno: errno.KVM_EINVAL, command: "KVMI_VCPU_SET_XSAVE", vm: uuid(), vcpu: 1 });
    const tooBig = await neverReachesSocket("KVMI_VCPU_SET_XSAVE", () =>
      expectGrpcError(h.client.unary("setXsave", { name: vcpu(1), region: new Uint8Array(4097) }, asController()), GrpcStatus.INVALID_ARGUMENT),
    );
    expect(tooBig.details.fieldViolations).toEqual([expect.objectContaining({ field: "region" })]);
  });

  it("is refused without the controller's session id", async () => {
    await expectNotController("KVMI_VCPU_SET_XSAVE", (sessionId) => h.client.unary("setXsave", { name: vcpu(1), region: new Uint8Array(512) }, { ...(sessionId && { sessionId }) }), 1);
  });
});

describe("GetMtrrType", () => {
  it("returns write-back for RAM", async () => {
    expect(await h.client.unary("getMtrrType", { name: vcpu(0), gpa: 0x1000n })).toMatchObject({ type: MtrrType.WRITE_BACK, rawType: guestModel.MTRR_TYPE_WRBACK });
  });

  it("rejects an unknown vCPU before the socket", async () => {
    const failure = await neverReachesSocket("KVMI_VCPU_GET_MTRR_TYPE", () =>
      expectGrpcError(h.client.unary("getMtrrType", { name: vcpu(7), gpa: 0n }), GrpcStatus.INVALID_ARGUMENT),
    );
    expect(failure.details).toMatchObject({ reason: "VCPU_NOT_FOUND", command: "KVMI_VCPU_GET_MTRR_TYPE", vm: uuid(), vcpu: 7 });
  });
});

describe("ControlMsr", () => {
  it("selects and deselects an MSR for write events", async () => {
    await h.client.unary("controlMsr", { name: vcpu(1), msr: MSR_LSTAR, enable: true }, asController());
    expect(kernelVcpu(1).msrWrites.has(MSR_LSTAR)).toBe(true);
    await h.client.unary("controlMsr", { name: vcpu(1), msr: MSR_LSTAR, enable: false }, asController());
    expect(kernelVcpu(1).msrWrites.has(MSR_LSTAR)).toBe(false);
  });

  it("rejects an MSR outside the interceptable ranges before the socket", async () => {
    const failure = await neverReachesSocket("KVMI_VCPU_CONTROL_MSR", () =>
      expectGrpcError(h.client.unary("controlMsr", { name: vcpu(1), msr: 0x2000, enable: true }, asController()), GrpcStatus.INVALID_ARGUMENT),
    );
    expect(failure.details).toMatchObject({ reason: "KVMI_INVALID_ARGUMENT", command: "KVMI_VCPU_CONTROL_MSR", vm: uuid(), vcpu: 1 });
    expect(failure.message).toMatch(/0x2000/);
  });

  it("is refused without the controller's session id", async () => {
    await expectNotController("KVMI_VCPU_CONTROL_MSR", (sessionId) => h.client.unary("controlMsr", { name: vcpu(1), msr: MSR_LSTAR, enable: true }, { ...(sessionId && { sessionId }) }), 1);
  });
});

describe("SetPageAccess", () => {
  it("restricts and restores a page", async () => {
    await h.client.unary("setPageAccess", { vm: vm(), entries: [{ gpa: 0x7123n, access: 5 }] }, asController());
    expect(guest().memory.getPageAccess(7n)).toBe(5);
    await h.client.unary("setPageAccess", { vm: vm(), entries: [{ gpa: 0x7000n, access: 7 }] }, asController());
    expect(guest().memory.getPageAccess(7n)).toBe(7);
  });

  it("rejects unknown access bits before the socket", async () => {
    const failure = await neverReachesSocket("KVMI_VM_SET_PAGE_ACCESS", () =>
      expectGrpcError(h.client.unary("setPageAccess", { vm: vm(), entries: [{ gpa: 0x7000n, access: 8 }] }, asController()), GrpcStatus.INVALID_ARGUMENT),
    );
    expect(failure.details).toMatchObject({ reason: "KVMI_INVALID_ARGUMENT", command: "KVMI_VM_SET_PAGE_ACCESS", vm: uuid() });
    expect(failure.details.fieldViolations).toEqual([expect.objectContaining({ field: "entries[0].access" })]);
    expect(guest().memory.getPageAccess(7n)).toBe(7);
  });

  it("takes an EPT view only where the dialect has views: elsewhere FAILED_PRECONDITION NOT_IN_DIALECT", async () => {
    const call = (): Promise<unknown> => h.client.unary("setPageAccess", { vm: vm(), view: 1, entries: [{ gpa: 0x7000n, access: 7 }] }, asController());
    if (PAGE_ACCESS_HAS_VIEW) {
      // kvmi-sim's host has only the default view: the kernel itself refuses view 1.
      const failure = await reachesSocket("KVMI_VM_SET_PAGE_ACCESS", "failed", () => expectGrpcError(call(), GrpcStatus.UNIMPLEMENTED));
      expect(failure.details).toMatchObject({ errno: errno.KVM_EOPNOTSUPP, vm: uuid() });
    } else {
      const failure = await expectGrpcError(call(), GrpcStatus.FAILED_PRECONDITION);
      expect(failure.details).toMatchObject({ reason: "NOT_IN_DIALECT", vm: uuid() });
      expect(failure.message).toContain(E2E_DIALECT.name);
    }
    expect(guest().memory.getPageAccess(7n)).toBe(7);
  });

  // Only kernels whose page access entries carry `visible` (v9) can refuse it.
  it.runIf(PAGE_ACCESS_HAS_VISIBLE)("fails with INVALID_ARGUMENT (EINVAL) for visible=true on a page guest memory does not back", async () => {
    const failure = await expectGrpcError(
      h.client.unary("setPageAccess", { vm: vm(), entries: [{ gpa: 0xa0000n, access: 1, visible: true }] }, asController()),
      GrpcStatus.INVALID_ARGUMENT,
    );
    expect(failure.details).toMatchObject({ reason: "KVMI_INVALID_ARGUMENT", errno: errno.KVM_EINVAL, command: "KVMI_VM_SET_PAGE_ACCESS", vm: uuid() });
  });

  it("is refused without the controller's session id", async () => {
    await expectNotController("KVMI_VM_SET_PAGE_ACCESS", (sessionId) =>
      h.client.unary("setPageAccess", { vm: vm(), entries: [{ gpa: 0x7000n, access: 1 }] }, { ...(sessionId && { sessionId }) }),
    );
    expect(guest().memory.getPageAccess(7n)).toBe(7);
  });
});

describe("ControlSingleStep", () => {
  it("starts and stops single-stepping", async () => {
    await h.client.unary("controlSingleStep", { name: vcpu(1), enable: true }, asController());
    expect(kernelVcpu(1).singlestep).toBe(true);
    expect(guest().vcpus[1]!.state.singlestep).toBe(true);
    await h.client.unary("controlSingleStep", { name: vcpu(1), enable: false }, asController());
    expect(kernelVcpu(1).singlestep).toBe(false);
  });

  it("fails with UNIMPLEMENTED (EOPNOTSUPP) without hardware support and PERMISSION_DENIED (EPERM) when SINGLESTEP is disallowed", async () => {
    const unsupported = await expectGrpcError(
      h.client.unary("controlSingleStep", { name: vcpu(0, NO_HW), enable: true }, { sessionId: ctlNoHw.id }),
      GrpcStatus.UNIMPLEMENTED,
    );
    expect(unsupported.details).toMatchObject({ reason: "KVMI_UNSUPPORTED", errno: errno.KVM_EOPNOTSUPP, command: "KVMI_VCPU_CONTROL_SINGLESTEP", vm: uuid(NO_HW), vcpu: 0 });
    const denied = await expectGrpcError(
      h.client.unary("controlSingleStep", { name: vcpu(1, RESTRICTED), enable: true }, { sessionId: ctlRestricted.id }),
      GrpcStatus.PERMISSION_DENIED,
    );
    expect(denied.details).toMatchObject({ reason: "KVMI_NOT_ALLOWED", errno: errno.KVM_EPERM, command: "KVMI_VCPU_CONTROL_SINGLESTEP", vcpu: 1 });
  });

  it("is refused without the controller's session id", async () => {
    await expectNotController("KVMI_VCPU_CONTROL_SINGLESTEP", (sessionId) => h.client.unary("controlSingleStep", { name: vcpu(1), enable: true }, { ...(sessionId && { sessionId }) }), 1);
    expect(kernelVcpu(1).singlestep).toBe(false);
  });
});

describe("TranslateGva", () => {
  it("translates a mapped address and reports an unmapped one", async () => {
    const gva = 0x345678n;
    expect(await h.client.unary("translateGva", { name: vcpu(0), gva })).toMatchObject({ gpa: guest().vcpus[0]!.translateGva(gva)!, mapped: true });
    expect(await h.client.unary("translateGva", { name: vcpu(0), gva: 0x7f0000000000n })).toMatchObject({ gpa: 0xffffffffffffffffn, mapped: false });
  });

  it("rejects an unknown vCPU before the socket", async () => {
    const failure = await neverReachesSocket("KVMI_VCPU_TRANSLATE_GVA", () =>
      expectGrpcError(h.client.unary("translateGva", { name: vcpu(65_536), gva: 0n }), GrpcStatus.INVALID_ARGUMENT),
    );
    expect(failure.details).toMatchObject({ reason: "KVMI_INVALID_ARGUMENT", command: "KVMI_VCPU_TRANSLATE_GVA", vm: uuid() });
  });
});

// -------------------------------------------------------------------------------------------------
describe("BatchReadMemory", () => {
  it("reads physical and virtual ranges in one call", async () => {
    guest().memory.write(0x8ffcn, Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8));
    const { results } = await h.client.unary("batchReadMemory", {
      vm: vm(),
      ranges: [
        { address: 0x8ffcn, length: 8n, space: 1 },
        { address: 0x8ffcn, length: 8n, space: 2, translation: { case: "vcpu", value: 0 } },
      ],
    });
    for (const result of results) {
      expect(result.result.case).toBe("data");
      expect([...(result.result.value as Uint8Array)]).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
      expect(result.holes).toEqual([]);
    }
  });

  it("rejects malformed batches before the socket", async () => {
    const cases = [
      [[], "ranges"],
      [Array.from({ length: 1025 }, () => ({ address: 0n, length: 1n, space: 1 })), "ranges"],
      [[{ address: 0n, length: 3n * 1024n * 1024n + 1n, space: 1 }], "ranges"],
      [[{ address: 0n, length: 0n, space: 1 }], "ranges[0].length"],
      [[{ address: 0n, length: 1n, space: 2 }], "ranges[0].translation"],
      [[{ address: 0n, length: 1n, space: 1, translation: { case: "cr3", value: 0n } }], "ranges[0].translation"],
    ] as const;
    for (const [ranges, field] of cases) {
      const failure = await neverReachesSocket("KVMI_VM_READ_PHYSICAL", () =>
        expectGrpcError(h.client.unary("batchReadMemory", { vm: vm(), ranges: ranges as never }), GrpcStatus.INVALID_ARGUMENT),
      );
      expect(failure.details.fieldViolations).toEqual([expect.objectContaining({ field })]);
      expect(failure.details.vm).toBe(uuid());
    }
  });

  it("fails one range with an inline status for an unknown vCPU, and the call with NOT_FOUND for an unknown VM", async () => {
    const { results } = await h.client.unary("batchReadMemory", {
      vm: vm(),
      ranges: [
        { address: 0x1000n, length: 4n, space: 2, translation: { case: "vcpu", value: 9 } },
        { address: 0x1000n, length: 4n, space: 1 },
      ],
    });
    expect(results[0]!.result.case).toBe("error");
    const inline = inlineFailure(results[0]!.result.value as never);
    expect(inline).toMatchObject({ code: GrpcStatus.INVALID_ARGUMENT, reason: "VCPU_NOT_FOUND", vm: uuid(), vcpu: 9 });
    expect(results[1]!.result.case).toBe("data");
    const missing = await expectGrpcError(h.client.unary("batchReadMemory", { vm: UNKNOWN_VM, ranges: [{ address: 0n, length: 1n, space: 1 }] }), GrpcStatus.NOT_FOUND);
    expect(missing.details).toMatchObject({ reason: "VM_NOT_FOUND", vm: UNKNOWN_UUID });
  });
});

// -------------------------------------------------------------------------------------------------
describe("ReleaseVm", () => {
  it("rejects a grace period above 300 s and a negative one, without releasing", async () => {
    for (const gracePeriod of [{ seconds: 301n }, { seconds: -1n }]) {
      const failure = await expectGrpcError(h.client.unary("releaseVm", { name: vm(RELEASED), gracePeriod }), GrpcStatus.INVALID_ARGUMENT);
      expect(failure.details).toMatchObject({ reason: "KVMI_INVALID_ARGUMENT", vm: uuid(RELEASED) });
      expect(failure.details.fieldViolations).toEqual([expect.objectContaining({ field: "grace_period" })]);
    }
    expect((await h.client.unary("getVm", { name: vm(RELEASED) })).vm?.state).toBe(State.HOOKED);
  });

  it("fails with NOT_FOUND for an unknown VM", async () => {
    const failure = await expectGrpcError(h.client.unary("releaseVm", { name: UNKNOWN_VM }), GrpcStatus.NOT_FOUND);
    expect(failure.details).toMatchObject({ reason: "VM_NOT_FOUND", vm: UNKNOWN_UUID });
  });

  it("tells the controller, waits for its Release, closes the socket; then FAILED_PRECONDITION and UNAVAILABLE", async () => {
    const controller = await h.attach(RELEASED, Role.CONTROLLER);
    const release = h.client.unary("releaseVm", { name: vm(RELEASED), gracePeriod: { seconds: 30n } }, { deadlineMs: 10_000 });
    const notice = await controller.next("unhook");
    expect(notice).toMatchObject({ vm: vm(RELEASED), reason: 2 /* UNHOOK_REASON_OPERATOR */ });
    expect(Number(notice.deadline!.seconds) * 1000).toBeGreaterThan(Date.now() + 20_000);
    // During UNHOOK_PENDING commands still work: the controller undoes its own changes.
    expect((await controller.command({ case: "getVmInfo", value: { vm: vm(RELEASED) } })).result.case).toBe("getVmInfo");
    controller.release();
    const { vm: released } = await settle(release, "ReleaseVm after the controller's Release", 3000);
    expect(released?.state).toBe(State.DISCONNECTED);
    expect((await controller.closed()).code).toBe(GrpcStatus.OK);

    const again = await expectGrpcError(h.client.unary("releaseVm", { name: vm(RELEASED) }), GrpcStatus.FAILED_PRECONDITION);
    expect(again.details).toMatchObject({ reason: "VM_DISCONNECTED", vm: uuid(RELEASED) });
    const command = await expectGrpcError(h.client.unary("getVmInfo", { vm: vm(RELEASED) }), GrpcStatus.UNAVAILABLE);
    expect(command.details).toMatchObject({ reason: "VM_UNHOOKING", vm: uuid(RELEASED), command: "KVMI_VM_GET_INFO" });
    const attach = h.client.openSession();
    await expect(attach.attach(vm(RELEASED), Role.OBSERVER)).rejects.toMatchObject({ code: GrpcStatus.UNAVAILABLE });
    expect(streamFailure((await attach.closed())).details.reason).toBe("VM_UNHOOKING");
  });
});
