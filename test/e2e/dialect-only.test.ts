// SPDX-License-Identifier: Apache-2.0
/**
 * The parts of kvmi.v1 that only some dialects carry (docs/protocol/kvmi-v7.md), end to end on
 * every dialect of the e2e matrix: kvmi-v7's CPUID event and its GET_PAGE_ACCESS command. Where the
 * VM's dialect has them they work against the emulated guest (the event carries the leaf the
 * guest asked for; a CONTINUE lets CPUID run, a RETRY with EventReply.registers hands the guest the
 * controller's values); where it does not, enabling or calling them fails with
 * FAILED_PRECONDITION, reason NOT_IN_DIALECT, naming the dialect, and nothing reaches the socket.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EventType } from "@kvmi/proto";
import { commandByOp, eventByKind } from "@kvmi/kvm-bridge/wire";
import type { Vcpu } from "@kvmi/kvm-bridge/emulator";
import { connect } from "@kvmi/clients";
import { main as kvmictlMain } from "@kvmi/clients/cli";
import { CONTINUE, E2E_DIALECT, expectGrpcError, GrpcStatus, RETRY, Role, settle, startHarness } from "../support/bridge-harness.js";
import type { Harness, SessionClient } from "../support/bridge-harness.js";

/** The vendor leaf and the hypervisor leaf (whose signature a controller may want to hide or replace). */
const LEAF_0 = 0;
const LEAF_HYPERVISOR = 0x4000_0000;
const CPUID_LENGTH = 2;
/** Code page in low RAM for the CPUID instructions (identity-mapped by the boot page tables). */
const CODE_GPA = 0x31000n;

const HAS_CPUID = eventByKind(E2E_DIALECT, "CPUID") !== undefined;
const HAS_GET_PAGE_ACCESS = commandByOp(E2E_DIALECT, "GET_PAGE_ACCESS") !== undefined;

let h: Harness;
let ctl: SessionClient;

const vcpu = (n: number): Vcpu => h.vms[0]!.guest.vcpus[n]!;
const vcpuName = (n: number): string => h.vcpuName(0, n);
const uuid = (): string => h.vms[0]!.uuid;

/** Asserts FAILED_PRECONDITION, reason NOT_IN_DIALECT, naming the e2e dialect. */
async function expectNotInDialect(call: Promise<unknown>): Promise<void> {
  const failure = await expectGrpcError(call, GrpcStatus.FAILED_PRECONDITION);
  expect(failure.details).toMatchObject({ reason: "NOT_IN_DIALECT", vm: uuid() });
  expect(failure.message).toContain(E2E_DIALECT.name);
}

beforeAll(async () => {
  h = await startHarness({ vms: 1 });
  ctl = await h.attach(0, Role.CONTROLLER);
});

afterAll(async () => {
  await h?.stop();
});

describe("CPUID event", () => {
  beforeAll(async () => {
    const enable = h.client.unary("controlVcpuEvents", { name: vcpuName(0), event: EventType.CPUID, enable: true }, { sessionId: ctl.id });
    if (!HAS_CPUID) return expectNotInDialect(enable);
    await enable;
  });

  it("is listed on the Vm and known to CheckEvent exactly where the dialect has it", async () => {
    const events = (await h.client.unary("getVm", { name: h.vmName(0) })).vm?.events;
    expect(events).toContain("PF");
    if (!HAS_CPUID) {
      expect(events).not.toContain("CPUID");
      return expectNotInDialect(h.client.unary("checkEvent", { vm: h.vmName(0), event: EventType.CPUID }));
    }
    expect(events).toContain("CPUID");
    await h.client.unary("checkEvent", { vm: h.vmName(0), event: EventType.CPUID });
  });

  it("is delivered with the leaf, sub-leaf and instruction length; CONTINUE executes CPUID", async () => {
    const leaf = vcpu(0).state.cpuid.get(LEAF_0, 0)!;
    const run = vcpu(0).cpuid(LEAF_0, 7, { at: CODE_GPA });
    if (HAS_CPUID) {
      const event = await ctl.event((e) => e.type === EventType.CPUID);
      expect(event).toMatchObject({ vcpu: 0, name: vcpuName(0) });
      expect(event.payload).toMatchObject({ case: "cpuid", value: { function: LEAF_0, index: 7, insnLength: CPUID_LENGTH } });
      expect(event.arch?.regs).toMatchObject({ rax: BigInt(LEAF_0), rcx: 7n, rip: CODE_GPA });
      ctl.reply(event, CONTINUE);
    }
    // Without the event (v9, v12) the guest's CPUID simply runs.
    expect(await settle(run, "CPUID")).toEqual({ status: "done", value: leaf });
    expect(vcpu(0).state.regs).toMatchObject({ rax: BigInt(leaf.eax), rbx: BigInt(leaf.ebx), rip: CODE_GPA + 2n });
  });

  it("RETRY with EventReply.registers gives the guest the controller's values and skips the instruction", async () => {
    const run = vcpu(0).cpuid(LEAF_HYPERVISOR, 0, { at: CODE_GPA });
    const real = vcpu(0).state.cpuid.get(LEAF_HYPERVISOR, 0) ?? { eax: 0, ebx: 0, ecx: 0, edx: 0 };
    if (!HAS_CPUID) {
      // No event, so nobody answers: the guest gets the emulated CPU's own hypervisor leaf.
      expect(await settle(run, "CPUID")).toEqual({ status: "done", value: real });
      return;
    }
    const event = await ctl.event((e) => e.type === EventType.CPUID);
    expect(event.payload).toMatchObject({ case: "cpuid", value: { function: LEAF_HYPERVISOR, index: 0 } });
    const regs = event.arch!.regs!;
    // "KVMIKVMIKVMI" as a hypervisor signature, RIP past the instruction (event.proto, CpuidEvent).
    const answer = { rax: 0x4000_0001n, rbx: 0x494d_564bn, rcx: 0x494d_564bn, rdx: 0x494d_564bn };
    expect(BigInt(real.ebx)).not.toBe(answer.rbx);
    ctl.reply(event, RETRY, { registers: { ...regs, ...answer, rip: regs.rip + BigInt(CPUID_LENGTH) } });
    expect(await settle(run, "CPUID")).toEqual({ status: "skipped" });
    expect(vcpu(0).state.regs).toMatchObject({ ...answer, rip: CODE_GPA + 2n });
  });

  it("refuses new_val, which the CPUID reply has no room for: ReplyRejected, the event stays pending", async () => {
    const run = vcpu(0).cpuid(LEAF_0, 0, { at: CODE_GPA });
    if (HAS_CPUID) {
      const event = await ctl.event((e) => e.type === EventType.CPUID);
      ctl.reply(event, CONTINUE, { newVal: 1n });
      const rejected = await ctl.next("replyRejected", (r) => r.vcpu === event.vcpu && r.seq === event.seq);
      expect(rejected.status?.message).toMatch(/new_val/);
      expect(vcpu(0).currentExit).toBe("cpuid");
      ctl.reply(event, CONTINUE);
    }
    expect(await settle(run, "CPUID")).toMatchObject({ status: "done" });
  });

  it("is not sent for a vCPU without the event", async () => {
    expect(await settle(vcpu(1).cpuid(LEAF_0, 0), "CPUID")).toMatchObject({ status: "done" });
    await ctl.queue.expectNone((r) => r.message.case === "event" && r.message.value.type === EventType.CPUID, 50, "CPUID event");
  });
});

describe("GetPageAccess", () => {
  it("returns what SetPageAccess stored, per page, in request order (NOT_IN_DIALECT where the dialect lacks it)", async () => {
    if (!HAS_GET_PAGE_ACCESS) return expectNotInDialect(h.client.unary("getPageAccess", { vm: h.vmName(0), gpas: [0x7000n] }));
    await h.client.unary("setPageAccess", { vm: h.vmName(0), entries: [{ gpa: 0x7000n, access: 5 }, { gpa: 0x9000n, access: 1 }] }, { sessionId: ctl.id });
    const reply = await h.client.unary("getPageAccess", { vm: h.vmName(0), gpas: [0x9000n, 0x8000n, 0x7123n] });
    expect(reply.entries.map((e) => [e.gpa, e.access])).toEqual([
      [0x9000n, 1],
      [0x8000n, 7],
      [0x7123n, 5],
    ]);
    await h.client.unary("setPageAccess", { vm: h.vmName(0), entries: [{ gpa: 0x7000n, access: 7 }, { gpa: 0x9000n, access: 7 }] }, { sessionId: ctl.id });
    expect((await h.client.unary("getPageAccess", { vm: h.vmName(0), gpas: [0x7000n] })).entries[0]?.access).toBe(7);
  });

  it("checks its arguments before the socket, on every dialect: no gpas, a view beyond u16", async () => {
    const none = await expectGrpcError(h.client.unary("getPageAccess", { vm: h.vmName(0), gpas: [] }), GrpcStatus.INVALID_ARGUMENT);
    expect(none.details.fieldViolations).toEqual([expect.objectContaining({ field: "gpas" })]);
    const view = await expectGrpcError(h.client.unary("getPageAccess", { vm: h.vmName(0), gpas: [0n], view: 0x1_0000 }), GrpcStatus.INVALID_ARGUMENT);
    expect(view.details.fieldViolations).toEqual([expect.objectContaining({ field: "view" })]);
  });

  it("needs only read access: an observer's session may call it", async () => {
    const observer = await h.attach(0, Role.OBSERVER);
    const call = h.client.unary("getPageAccess", { vm: h.vmName(0), gpas: [0x7000n] }, { sessionId: observer.id });
    if (!HAS_GET_PAGE_ACCESS) return expectNotInDialect(call);
    expect((await call).entries).toHaveLength(1);
  });

  it("reaches SDK and kvmictl users: VmHandle.getPageAccess and `kvmictl page-access <vm> <gpa>`", async () => {
    const sdk = connect({ target: h.bridge.grpcTarget, timeoutMs: 10_000 });
    let stdout = "";
    let stderr = "";
    const kvmictl = (...args: string[]): Promise<number> =>
      kvmictlMain(["--target", h.bridge.grpcTarget, ...args], {
        stdout: (t) => (stdout += t),
        stderr: (t) => (stderr += t),
        stderrIsTTY: false,
        signal: new AbortController().signal,
        env: {},
      });
    try {
      if (!HAS_GET_PAGE_ACCESS) {
        await expect(sdk.vm(uuid()).getPageAccess([0x7000n])).rejects.toMatchObject({ reason: "NOT_IN_DIALECT" });
        expect(await kvmictl("page-access", uuid(), "0x7000")).not.toBe(0);
        expect(stderr).toContain("NOT_IN_DIALECT");
        return;
      }
      await h.client.unary("setPageAccess", { vm: h.vmName(0), entries: [{ gpa: 0x7000n, access: 5 }] }, { sessionId: ctl.id });
      expect(await sdk.vm(uuid()).getPageAccess([0x7000n, 0x8000n])).toEqual([
        { gpa: 0x7000n, access: 5 },
        { gpa: 0x8000n, access: 7 },
      ]);
      expect(await kvmictl("--json", "page-access", uuid(), "0x7000"), stderr).toBe(0);
      expect(JSON.parse(stdout)).toMatchObject({ access: "r-x" });
      await h.client.unary("setPageAccess", { vm: h.vmName(0), entries: [{ gpa: 0x7000n, access: 7 }] }, { sessionId: ctl.id });
    } finally {
      sdk.close();
    }
  });
});
