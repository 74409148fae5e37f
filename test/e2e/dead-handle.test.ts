// SPDX-License-Identifier: Apache-2.0
/**
 * Dead-handle matrix over gRPC (conventions §7 item 5): once a VM's device manager dropped (QEMU
 * killed, no PREUNHOOK), every command RPC on it fails the same way, UNAVAILABLE with reason
 * VM_UNHOOKING naming the command and the VM, and nothing reaches a kernel; the controller's
 * session ends UNAVAILABLE with KVMI_SESSION_LOST. The channel-level half of the matrix is
 * service/src/mapping/dead-handle.test.ts.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Command, EventType, State } from "@kvmi/proto";
import { V9_COMMANDS } from "@kvmi/kvm-bridge/wire";
import type { V9CommandName } from "@kvmi/kvm-bridge/wire";
import { expectGrpcError, GrpcStatus, Role, startHarness, streamFailure, waitUntil } from "../support/bridge-harness.js";
import type { Harness, SessionClient } from "../support/bridge-harness.js";

let h: Harness;
let controller: SessionClient;

const vm = (): string => h.vmName(0);
const vcpu = (): string => h.vcpuName(0, 1);

/** One valid request per command RPC: the argument checks pass, so only the dead VM can fail it. */
const REQUESTS: { readonly [N in V9CommandName]: readonly [method: string, request: () => Record<string, unknown>] } = {
  KVMI_GET_VERSION: ["getVersion", () => ({ vm: vm() })],
  KVMI_VM_CHECK_COMMAND: ["checkCommand", () => ({ vm: vm(), command: Command.VCPU_GET_REGISTERS })],
  KVMI_VM_CHECK_EVENT: ["checkEvent", () => ({ vm: vm(), event: EventType.PF })],
  KVMI_VM_GET_INFO: ["getVmInfo", () => ({ vm: vm() })],
  KVMI_VM_CONTROL_EVENTS: ["controlVmEvents", () => ({ vm: vm(), event: EventType.UNHOOK, enable: true })],
  KVMI_VM_READ_PHYSICAL: ["readPhysicalMemory", () => ({ vm: vm(), gpa: 0x1000n, size: 64 })],
  KVMI_VM_WRITE_PHYSICAL: ["writePhysicalMemory", () => ({ vm: vm(), gpa: 0x1000n, data: Uint8Array.of(1, 2) })],
  KVMI_VCPU_GET_INFO: ["getVcpuInfo", () => ({ name: vcpu() })],
  KVMI_VCPU_PAUSE: ["pauseVcpu", () => ({ name: vcpu(), wait: false })],
  KVMI_VCPU_CONTROL_EVENTS: ["controlVcpuEvents", () => ({ name: vcpu(), event: EventType.BREAKPOINT, enable: true })],
  KVMI_VCPU_GET_REGISTERS: ["getRegisters", () => ({ name: vcpu(), msrIndices: [0xc000_0082] })],
  KVMI_VCPU_SET_REGISTERS: ["setRegisters", () => ({ name: vcpu(), regs: { rip: 0x1000n, rflags: 2n } })],
  KVMI_VCPU_GET_CPUID: ["getCpuid", () => ({ name: vcpu(), function: 0, index: 0 })],
  KVMI_VM_CONTROL_CLEANUP: ["controlCleanup", () => ({ vm: vm(), enable: true })],
  KVMI_VCPU_CONTROL_CR: ["controlCr", () => ({ name: vcpu(), cr: 3, enable: true })],
  KVMI_VCPU_INJECT_EXCEPTION: ["injectException", () => ({ name: vcpu(), vector: 3 })],
  KVMI_VM_GET_MAX_GFN: ["getMaxGfn", () => ({ vm: vm() })],
  KVMI_VCPU_GET_XCR: ["getXcr", () => ({ name: vcpu(), xcr: 0 })],
  KVMI_VCPU_GET_XSAVE: ["getXsave", () => ({ name: vcpu() })],
  KVMI_VCPU_SET_XSAVE: ["setXsave", () => ({ name: vcpu(), region: new Uint8Array(576) })],
  KVMI_VCPU_GET_MTRR_TYPE: ["getMtrrType", () => ({ name: vcpu(), gpa: 0x1000n })],
  KVMI_VCPU_CONTROL_MSR: ["controlMsr", () => ({ name: vcpu(), msr: 0xc000_0082, enable: true })],
  KVMI_VM_SET_PAGE_ACCESS: ["setPageAccess", () => ({ vm: vm(), entries: [{ gpa: 0x1000n, access: 7 }] })],
  KVMI_VCPU_CONTROL_SINGLESTEP: ["controlSingleStep", () => ({ name: vcpu(), enable: true })],
  KVMI_VCPU_TRANSLATE_GVA: ["translateGva", () => ({ name: vcpu(), gva: 0x1000n })],
};

beforeAll(async () => {
  // The device manager does not come back by itself: the VM stays dropped for the whole file.
  h = await startHarness({ vms: [{ reconnectMs: 600_000 }] });
  controller = await h.attach(0, Role.CONTROLLER);
  await h.vms[0]!.deviceManager.stop(); // QEMU killed: the socket drops without PREUNHOOK
  await waitUntil(async () => (await h.client.unary("getVm", { name: vm() })).vm?.state === State.DISCONNECTED, "the VM disconnected");
});

afterAll(async () => {
  await h?.stop();
});

describe("a VM whose device manager dropped", () => {
  it("ended its controller's session with UNAVAILABLE / KVMI_SESSION_LOST", async () => {
    expect(streamFailure(await controller.closed())).toMatchObject({
      code: GrpcStatus.UNAVAILABLE,
      details: { reason: "KVMI_SESSION_LOST", vm: h.vms[0]!.uuid },
    });
  });

  it.each(Object.keys(V9_COMMANDS) as V9CommandName[])("%s: UNAVAILABLE / VM_UNHOOKING, and no frame reaches a kernel", async (name) => {
    const [method, request] = REQUESTS[name];
    const frames = h.vms[0]!.kernel.receivedFrames(V9_COMMANDS[name].id);
    const failure = await expectGrpcError(h.client.unary(method as never, request() as never, { sessionId: controller.id }), GrpcStatus.UNAVAILABLE);
    expect(failure.details).toMatchObject({ reason: "VM_UNHOOKING", command: name, vm: h.vms[0]!.uuid });
    expect(failure.message).toMatch(/not hooked/);
    expect(h.vms[0]!.kernel.receivedFrames(V9_COMMANDS[name].id)).toBe(frames);
  });
});
