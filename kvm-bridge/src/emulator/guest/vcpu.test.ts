// SPDX-License-Identifier: Apache-2.0
// Each exit hook fires with the right arguments and its reply has the effect the ABI specifies
// (kvmi-abi §5, and the selftest scenarios of §8).
import { describe, expect, it } from "vitest";
import { passThroughExitHandler, type VcpuExitHandler } from "./exits.js";
import { createGuest } from "./guest.js";
import { KVMI_PAGE_ACCESS_R, KVMI_PAGE_ACCESS_RWX, KVMI_PAGE_ACCESS_W, KVMI_PAGE_ACCESS_X } from "./memory.js";
import type { Vcpu } from "./vcpu.js";
import { KVM_ENOSYS_U64, MSR_MISC_FEATURES_ENABLES, U64_MASK, X86_CR4_FSGSBASE, X86_CR4_OSXSAVE } from "./x86.js";

const TEST_GVA = 0x0000_7000_0000_0000n;

interface Call {
  readonly kind: keyof VcpuExitHandler;
  readonly args: unknown[];
  readonly rip: bigint;
}

function setup(overrides: Partial<VcpuExitHandler> = {}) {
  const guest = createGuest({ memoryMiB: 16, vcpus: 1, workload: false });
  const calls: Call[] = [];
  const handler = Object.fromEntries(
    (Object.keys(passThroughExitHandler) as Array<keyof VcpuExitHandler>).map((kind) => [
      kind,
      (vcpu: Vcpu, ...args: unknown[]) => {
        calls.push({ kind, args, rip: vcpu.state.regs.rip });
        const impl = (overrides[kind] ?? passThroughExitHandler[kind]) as (v: Vcpu, ...a: unknown[]) => unknown;
        return impl(vcpu, ...args);
      },
    ]),
  ) as unknown as VcpuExitHandler;
  guest.setExitHandler(handler);
  const testGpa = guest.allocator.alloc();
  guest.bootAddressSpace.map(TEST_GVA, testGpa);
  guest.start();
  const vcpu = guest.vcpus[0]!;
  const exits = () => calls.filter((c) => c.kind !== "onEntry");
  const entries = () => calls.filter((c) => c.kind === "onEntry").length;
  return { guest, vcpu, calls, exits, entries, testGpa, memory: guest.memory };
}

describe("entries", () => {
  it("calls onEntry before every guest operation", async () => {
    const { vcpu, calls } = setup();
    await vcpu.writeCr(2, 0x1234n);
    await vcpu.writeCr(4, vcpu.state.sregs.cr4 ^ X86_CR4_FSGSBASE);
    expect(calls.map((c) => c.kind)).toEqual(["onEntry", "onEntry", "crWrite"]);
    expect(vcpu.state.sregs.cr2).toBe(0x1234n);
  });
});

describe("breakpoint", () => {
  it("fires on INT3 with the gpa and insn_len 1; CONTINUE re-injects #BP into the guest", async () => {
    const { vcpu, exits, memory, testGpa } = setup();
    memory.write(testGpa, Uint8Array.of(0xcc, 0x90));
    const out = await vcpu.executeAt(TEST_GVA);
    expect(out).toEqual({ status: "exception", exception: { nr: 3, has_error_code: false, error_code: 0, address: 0n } });
    expect(exits()).toEqual([{ kind: "breakpoint", args: [testGpa, 1], rip: TEST_GVA }]);
    // The next entry delivers the #BP; its handler returns past the INT3.
    await vcpu.writeCr(4, vcpu.state.sregs.cr4 ^ X86_CR4_FSGSBASE);
    expect(vcpu.deliveredExceptions).toEqual([{ nr: 3, has_error_code: false, error_code: 0, address: 0n, rip: TEST_GVA }]);
    expect(exits()[1]).toMatchObject({ kind: "crWrite", rip: TEST_GVA + 1n });
  });

  it("RETRY after moving RIP past the INT3 runs the next instruction and injects nothing (selftest 17)", async () => {
    const { vcpu, exits, memory, testGpa } = setup({
      breakpoint: (v) => {
        v.state.regs.rip += 1n;
        return "retry";
      },
    });
    memory.write(testGpa, Uint8Array.of(0xcc, 0x90));
    const out = await vcpu.executeAt(TEST_GVA);
    expect(out).toMatchObject({ status: "done", value: { gva: TEST_GVA + 1n, gpa: testGpa + 1n, insnLen: 1 } });
    expect(vcpu.state.regs.rip).toBe(TEST_GVA + 2n);
    expect(exits()).toHaveLength(1);
    expect(vcpu.deliveredExceptionCount).toBe(0);
  });

  it("RETRY at the same RIP re-executes the (restored) original instruction", async () => {
    const { vcpu, entries, memory, testGpa } = setup({
      breakpoint: () => {
        memory.write(testGpa, Uint8Array.of(0x0f, 0x05)); // the tool puts the original `syscall` back
        return "retry";
      },
    });
    memory.write(testGpa, Uint8Array.of(0xcc, 0x05));
    const out = await vcpu.executeAt(TEST_GVA);
    expect(out).toMatchObject({ status: "done", value: { gva: TEST_GVA, insnLen: 2 } });
    expect(entries()).toBe(2);
  });

  it("CRASH kills the VM and aborts the operation", async () => {
    const { guest, vcpu, memory, testGpa } = setup({ breakpoint: () => "crash" });
    memory.write(testGpa, Uint8Array.of(0xcc));
    expect(await vcpu.executeAt(TEST_GVA)).toEqual({ status: "aborted", reason: "crashed" });
    expect(guest.runState).toBe("crashed");
    expect(guest.crashReason).toMatch(/breakpoint/);
  });

  it("lets the #BP being re-injected win over a tool's #UD injection (selftest 20)", async () => {
    let injectUd = false;
    const trapsReported: number[] = [];
    const { vcpu, memory, testGpa } = setup({
      onEntry: (v) => {
        if (!injectUd) return;
        injectUd = false;
        v.queueException({ nr: 6 });
        trapsReported.push(v.state.pendingException!.nr);
      },
      breakpoint: (v) => {
        v.state.regs.rip += 1n;
        injectUd = true;
        return "continue";
      },
    });
    memory.write(testGpa, Uint8Array.of(0xcc, 0x90));
    await vcpu.executeAt(TEST_GVA);
    await vcpu.halt(0);
    expect(trapsReported).toEqual([3]);
    expect(vcpu.deliveredExceptions.map((e) => e.nr)).toEqual([3]);
  });
});

describe("CR writes", () => {
  it("receives the reply's value: old value blocks the write (selftest 19)", async () => {
    const { vcpu, exits } = setup({ crWrite: (_v, _cr, old) => ({ action: "continue", value: old }) });
    const cr4 = vcpu.state.sregs.cr4;
    const out = await vcpu.writeCr(4, cr4 & ~X86_CR4_OSXSAVE);
    expect(out).toEqual({ status: "done", value: cr4 });
    expect(vcpu.state.sregs.cr4).toBe(cr4);
    expect(exits()).toEqual([{ kind: "crWrite", args: [4, cr4, cr4 & ~X86_CR4_OSXSAVE], rip: 0n }]);
    expect(vcpu.state.regs.rip).toBe(3n);
  });

  it("loads whatever value the reply carries, and fires only on a change of CR0/CR3/CR4", async () => {
    const { vcpu, exits } = setup({ crWrite: (_v, _cr, _old, value) => ({ action: "continue", value: value | X86_CR4_FSGSBASE }) });
    const cr4 = vcpu.state.sregs.cr4;
    await vcpu.writeCr(4, cr4 & ~X86_CR4_OSXSAVE);
    expect(vcpu.state.sregs.cr4).toBe((cr4 & ~X86_CR4_OSXSAVE) | X86_CR4_FSGSBASE);
    await vcpu.writeCr(0, vcpu.state.sregs.cr0);
    await vcpu.writeCr(8, 3n);
    await vcpu.writeCr(3, vcpu.state.sregs.cr3);
    expect(exits().map((c) => c.args[0])).toEqual([4]);
    expect(vcpu.state.sregs.cr8).toBe(3n);
  });

  it("raises #GP for an invalid value and #UD for a non-existent CR", async () => {
    const { vcpu } = setup();
    const cr4 = vcpu.state.sregs.cr4;
    expect(await vcpu.writeCr(4, cr4 | (1n << 40n))).toMatchObject({ status: "exception", exception: { nr: 13 } });
    expect(vcpu.state.sregs.cr4).toBe(cr4);
    expect(await vcpu.writeCr(5, 0n)).toMatchObject({ status: "exception", exception: { nr: 6 } });
  });
});

describe("MSR writes", () => {
  it("fires for MSR_MISC_FEATURES_ENABLES and honours new_val (selftest 27)", async () => {
    let block = true;
    const { vcpu, exits } = setup({ msrWrite: (_v, _m, old, value) => ({ action: "continue", value: block ? old : value }) });
    expect(await vcpu.writeMsr(MSR_MISC_FEATURES_ENABLES, 1n)).toEqual({ status: "done", value: 0n });
    expect(exits()[0]).toMatchObject({ kind: "msrWrite", args: [0x140, 0n, 1n] });
    block = false;
    expect(await vcpu.writeMsr(MSR_MISC_FEATURES_ENABLES, 1n)).toEqual({ status: "done", value: 1n });
    expect(vcpu.state.msrs.read(0x140)).toBe(1n);
  });

  it("raises #GP for a missing MSR without an exit", async () => {
    const { vcpu, exits } = setup();
    expect(await vcpu.writeMsr(0xffffffff, 1n)).toMatchObject({ status: "exception", exception: { nr: 13, has_error_code: true } });
    expect(exits()).toEqual([]);
  });
});

describe("XSETBV", () => {
  it("notifies after XCR0 changed (selftest 22) and raises #GP/#UD like the CPU", async () => {
    let seen: bigint | undefined;
    const { vcpu, exits } = setup({ xsetbv: (v) => ((seen = v.state.xsave.xcr0), "continue") });
    expect(await vcpu.xsetbv(0, 3n)).toEqual({ status: "done", value: 3n });
    expect(exits()[0]).toMatchObject({ kind: "xsetbv", args: [0, 7n, 3n] });
    expect(seen).toBe(3n);
    await vcpu.xsetbv(0, 3n);
    expect(await vcpu.xsetbv(0, 5n)).toMatchObject({ status: "exception", exception: { nr: 13 } });
    expect(await vcpu.xsetbv(1, 3n)).toMatchObject({ status: "exception", exception: { nr: 13 } });
    vcpu.state.sregs.cr4 &= ~X86_CR4_OSXSAVE;
    expect(await vcpu.xsetbv(0, 7n)).toMatchObject({ status: "exception", exception: { nr: 6 } });
    expect(exits()).toHaveLength(1);
  });
});

describe("descriptor-table instructions", () => {
  it("reports SGDT as a read and LGDT as a write of GDTR (selftest 26)", async () => {
    const { vcpu, exits } = setup();
    vcpu.state.sregs.gdt = { base: 0xffff_8000_0000_1000n, limit: 0x7f };
    expect(await vcpu.descriptorOp("sgdt")).toEqual({ status: "done", value: { table: { base: 0xffff_8000_0000_1000n, limit: 0x7f } } });
    expect(await vcpu.descriptorOp("lgdt", { base: 0x2000n, limit: 0x3f })).toEqual({ status: "done", value: {} });
    expect(vcpu.state.sregs.gdt).toEqual({ base: 0x2000n, limit: 0x3f });
    await vcpu.descriptorOp("sidt");
    await vcpu.descriptorOp("sldt");
    await vcpu.descriptorOp("ltr", 0x40);
    expect(exits().map((c) => c.args)).toEqual([[2, false], [2, true], [1, false], [3, false], [4, true]]);
  });

  it("RETRY re-executes at the same RIP and skips the instruction if RIP moved", async () => {
    let replies: Array<"retry" | "continue"> = ["retry", "continue"];
    const { vcpu, exits } = setup({ descriptor: () => replies.shift()! });
    expect(await vcpu.descriptorOp("lidt", { base: 0x3000n, limit: 0xfff })).toMatchObject({ status: "done" });
    expect(exits()).toHaveLength(2);
    const before = vcpu.state.sregs.idt.base;
    replies = [];
    const moving = setup({ descriptor: (v) => ((v.state.regs.rip += 7n), "retry") });
    expect(await moving.vcpu.descriptorOp("lidt", { base: 0x5000n, limit: 0xfff }, { at: 0x100n })).toEqual({ status: "skipped" });
    expect(moving.vcpu.state.regs.rip).toBe(0x107n);
    expect(moving.vcpu.state.sregs.idt.base).not.toBe(0x5000n);
    expect(before).toBe(0x3000n);
  });
});

describe("page faults on restricted GFNs", () => {
  it("RETRY after lifting the restriction lets the write land (selftest 29)", async () => {
    const { vcpu, exits, entries, memory, testGpa } = setup({
      pageFault: (_v, _gva, gpa) => (memory.setPageAccess(gpa >> 12n, KVMI_PAGE_ACCESS_RWX), "retry"),
    });
    memory.setPageAccess(testGpa >> 12n, KVMI_PAGE_ACCESS_R);
    const out = await vcpu.writeMemory({ gva: TEST_GVA + 8n }, Uint8Array.of(1, 2, 3, 4));
    expect(out).toMatchObject({ status: "done" });
    expect(exits()).toEqual([{ kind: "pageFault", args: [TEST_GVA + 8n, testGpa + 8n, KVMI_PAGE_ACCESS_W], rip: 0n }]);
    expect(entries()).toBe(2);
    expect(memory.read(testGpa + 8n, 4)).toEqual({ ok: true, bytes: Uint8Array.of(1, 2, 3, 4) });
  });

  it("RETRY without lifting it faults again; CONTINUE performs the access anyway", async () => {
    let faults = 0;
    const { vcpu, memory, testGpa } = setup({ pageFault: () => (++faults < 3 ? "retry" : "continue") });
    memory.setPageAccess(testGpa >> 12n, KVMI_PAGE_ACCESS_R);
    await vcpu.writeMemory({ gpa: testGpa }, Uint8Array.of(9));
    expect(faults).toBe(3);
    expect(memory.read(testGpa, 1)).toEqual({ ok: true, bytes: Uint8Array.of(9) });
    expect(memory.getPageAccess(testGpa >> 12n)).toBe(KVMI_PAGE_ACCESS_R);
  });

  it("reports reads of a physical address with gva ~0 and fetches with the X bit", async () => {
    const { vcpu, exits, memory, testGpa } = setup();
    memory.setPageAccess(testGpa >> 12n, 0);
    memory.write(testGpa, Uint8Array.of(0x90));
    await vcpu.readMemory({ gpa: testGpa + 0x10n }, 4);
    await vcpu.executeAt(TEST_GVA);
    expect(exits().map((c) => c.args)).toEqual([
      [U64_MASK, testGpa + 0x10n, KVMI_PAGE_ACCESS_R],
      [TEST_GVA, testGpa, KVMI_PAGE_ACCESS_X],
    ]);
  });

  it("a restriction spanning two pages faults on each, in order", async () => {
    const { guest, vcpu, exits, memory } = setup();
    const a = guest.allocator.alloc();
    const b = guest.allocator.alloc();
    guest.bootAddressSpace.map(0x5000_0000_0000n, a);
    guest.bootAddressSpace.map(0x5000_0000_1000n, b);
    memory.setPageAccess(a >> 12n, KVMI_PAGE_ACCESS_R);
    memory.setPageAccess(b >> 12n, KVMI_PAGE_ACCESS_R);
    await vcpu.writeMemory({ gva: 0x5000_0000_0ffen }, Uint8Array.of(1, 2, 3, 4));
    expect(exits().map((c) => c.args)).toEqual([
      [0x5000_0000_0ffen, a + 0xffen, 2],
      [0x5000_0000_1000n, b, 2],
    ]);
    expect(memory.read(b, 2)).toEqual({ ok: true, bytes: Uint8Array.of(3, 4) });
  });
});

describe("guest page tables", () => {
  it("translates like KVMI_VCPU_TRANSLATE_GVA (selftest 31)", () => {
    const { vcpu, testGpa } = setup();
    expect(vcpu.translateGva(TEST_GVA + 0x10n)).toBe(testGpa + 0x10n);
    expect(vcpu.translateGva(U64_MASK)).toBeNull();
    expect(vcpu.translateGva(0x123456n)).toBe(0x123456n); // boot identity map
  });

  it("raises guest #PF (not an exit) for unmapped, read-only and NX pages, setting CR2 on delivery", async () => {
    const { guest, vcpu, exits } = setup();
    const missing = 0x6000_0000_0000n;
    expect(await vcpu.readMemory({ gva: missing }, 8)).toEqual({
      status: "exception",
      exception: { nr: 14, has_error_code: true, error_code: 0, address: missing },
    });
    await vcpu.halt(0);
    expect(vcpu.state.sregs.cr2).toBe(missing);
    guest.bootAddressSpace.map(0x6000_0000_1000n, guest.allocator.alloc(), { writable: false, executable: false });
    expect(await vcpu.writeMemory({ gva: 0x6000_0000_1000n }, Uint8Array.of(1))).toMatchObject({ exception: { nr: 14, error_code: 3 } });
    expect(await vcpu.executeAt(0x6000_0000_1000n)).toMatchObject({ exception: { nr: 14, error_code: 0x11 } });
    expect(await vcpu.readMemory({ gva: 0x0000_8000_0000_0000n }, 1)).toMatchObject({ exception: { nr: 13 } });
    expect(exits()).toEqual([]);
  });

  it("reads unbacked GPAs as all-ones (MMIO without a device)", async () => {
    const { vcpu } = setup();
    expect(await vcpu.readMemory({ gpa: 0xa0000n }, 2)).toEqual({ status: "done", value: Uint8Array.of(0xff, 0xff) });
  });
});

describe("hypercalls", () => {
  it("routes only the KVMI agent hypercall to the handler; RAX = 0 when consumed (selftest 16)", async () => {
    const seen: bigint[] = [];
    const { vcpu, exits } = setup({
      hypercall: (v) => (seen.push(v.state.regs.rax, v.state.regs.rdi, v.state.regs.rsi), { action: "continue", consumed: true }),
    });
    expect(await vcpu.hypercall(34n, 24n, 0n)).toEqual({ status: "done", value: 0n });
    expect(seen).toEqual([34n, 24n, 0n]);
    expect(vcpu.state.regs.rax).toBe(0n);
    expect(await vcpu.hypercall(34n, 24n, 1n)).toEqual({ status: "done", value: KVM_ENOSYS_U64 });
    expect(await vcpu.hypercall(9n, 0n, 0n)).toEqual({ status: "done", value: KVM_ENOSYS_U64 });
    expect(exits()).toHaveLength(1);
  });

  it("returns -KVM_ENOSYS when the event is not consumed", async () => {
    const { vcpu } = setup();
    expect(await vcpu.hypercall(34n, 24n, 0n)).toEqual({ status: "done", value: 0xfffffffffffffc18n });
  });
});

describe("single-step", () => {
  it("runs the singleStep exit after each completed instruction", async () => {
    const { vcpu, exits } = setup();
    vcpu.state.singlestep = true;
    await vcpu.writeCr(2, 1n, { at: 0x1000n });
    await vcpu.writeMsr(0xdead, 0n);
    expect(exits()).toEqual([{ kind: "singleStep", args: [false], rip: 0x1003n }]);
    vcpu.state.singlestep = false;
    await vcpu.writeCr(2, 2n);
    expect(exits()).toHaveLength(1);
  });

  it("CRASH from singleStep aborts the instruction", async () => {
    const { guest, vcpu } = setup({ singleStep: () => "crash" });
    vcpu.state.singlestep = true;
    expect(await vcpu.writeCr(2, 1n)).toEqual({ status: "aborted", reason: "crashed" });
    expect(guest.runState).toBe("crashed");
  });
});

describe("handler failures", () => {
  it("crash the VM when an exit handler throws", async () => {
    const { guest, vcpu } = setup({
      crWrite: () => {
        throw new Error("kernel bug");
      },
    });
    expect(await vcpu.writeCr(4, vcpu.state.sregs.cr4 ^ X86_CR4_FSGSBASE)).toEqual({ status: "aborted", reason: "crashed" });
    expect(guest.crashReason).toMatch(/crWrite/);
  });
});
