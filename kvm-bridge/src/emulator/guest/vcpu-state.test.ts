// SPDX-License-Identifier: Apache-2.0
import { describe, expect, it } from "vitest";
import { CPUID_1_ECX_OSXSAVE, CPUID_1_ECX_XSAVE } from "./cpuid.js";
import { createGuestMemory } from "./memory.js";
import { eventArchMsrs } from "./msr-file.js";
import { MTRR_TYPE_UNCACHABLE, MTRR_TYPE_WRBACK, MTRR_TYPE_WRPROT } from "./mtrr.js";
import { createVcpuState } from "./vcpu-state.js";
import {
  EFER_LMA, EFER_LME, MSR_CSTAR, MSR_EFER, MSR_FS_BASE, MSR_IA32_CR_PAT, MSR_IA32_SYSENTER_CS, MSR_IA32_SYSENTER_EIP,
  MSR_IA32_SYSENTER_ESP, MSR_IA32_TSC, MSR_KERNEL_GS_BASE, MSR_LSTAR, MSR_MISC_FEATURES_ENABLES, MSR_MTRRcap, MSR_STAR,
  X86_CR0_PE, X86_CR0_PG, X86_CR4_OSXSAVE, X86_CR4_PAE,
} from "./x86.js";
import { XSAVE_AREA_BYTES, XSAVE_HDR_OFFSET, XSAVE_MXCSR_OFFSET, isValidXcr0 } from "./xsave.js";

function newState(index = 0) {
  const memory = createGuestMemory({ memoryMiB: 64 });
  return createVcpuState({ index, vcpuCount: 2, memory });
}

describe("registers and mode", () => {
  it("powers on in 64-bit long mode with paging", () => {
    const s = newState();
    const { cr0, cr4, efer, cs } = s.sregs;
    expect(cr0 & (X86_CR0_PE | X86_CR0_PG)).toBe(X86_CR0_PE | X86_CR0_PG);
    expect(cr4 & X86_CR4_PAE).toBe(X86_CR4_PAE);
    expect(efer & (EFER_LME | EFER_LMA)).toBe(EFER_LME | EFER_LMA);
    expect(cs.l).toBe(1);
    expect(s.mode()).toBe(8);
    expect(s.regs.rflags).toBe(2n);
    expect(s.sregs.interrupt_bitmap).toEqual([0n, 0n, 0n, 0n]);
  });

  it("derives mode from EFER.LMA, CS.L, CS.D and CR0.PE like kvmi_vcpu_mode()", () => {
    const s = newState();
    s.sregs.cs.l = 0;
    s.sregs.cs.db = 1;
    expect(s.mode()).toBe(4); // compatibility mode, 32-bit code
    s.sregs.cs.db = 0;
    expect(s.mode()).toBe(2);
    s.sregs.efer &= ~EFER_LMA;
    s.sregs.cs.db = 1;
    expect(s.mode()).toBe(4); // protected mode
    s.sregs.cr0 &= ~X86_CR0_PE;
    expect(s.mode()).toBe(2); // real mode
  });

  it("copies on assignment so that references stay live, and reset restores power-on", () => {
    const s = newState();
    const regs = s.regs;
    s.regs = { ...s.regs, rip: 0x1234n, rax: 7n };
    expect(regs.rip).toBe(0x1234n);
    s.sregs = { ...s.sregs, cr3: 0x5000n };
    expect(s.sregs.cr3).toBe(0x5000n);
    s.reset();
    expect(regs.rip).toBe(0n);
    expect(s.sregs.cr3).toBe(0n);
  });
});

describe("MSR file", () => {
  it("has the MSRs the event arch block and the selftest need, and nothing else", () => {
    const s = newState();
    for (const msr of [
      MSR_IA32_TSC, MSR_MISC_FEATURES_ENABLES, MSR_IA32_SYSENTER_CS, MSR_IA32_SYSENTER_ESP, MSR_IA32_SYSENTER_EIP,
      MSR_IA32_CR_PAT, MSR_EFER, MSR_STAR, MSR_LSTAR, MSR_CSTAR, MSR_KERNEL_GS_BASE,
    ]) {
      expect(s.msrs.has(msr), msr.toString(16)).toBe(true);
    }
    expect(s.msrs.read(0xffffffff)).toBeUndefined();
    expect(s.msrs.has(0x12345)).toBe(false);
    expect(s.msrs.read(MSR_IA32_CR_PAT)).toBe(0x0007040600070406n);
    expect(s.msrs.indices()).toEqual([...s.msrs.indices()].sort((a, b) => a - b));
  });

  it("aliases EFER, FS base and TSC to the register state", () => {
    const s = newState();
    expect(s.msrs.read(MSR_EFER)).toBe(s.sregs.efer);
    expect(s.msrs.write(MSR_FS_BASE, 0x7fff0000n)).toBe(true);
    expect(s.sregs.fs.base).toBe(0x7fff0000n);
    s.tsc = 42n;
    expect(s.msrs.read(MSR_IA32_TSC)).toBe(42n);
    // LMA belongs to the CPU; LME cannot change while paging is on.
    expect(s.msrs.write(MSR_EFER, s.sregs.efer & ~EFER_LMA)).toBe(true);
    expect(s.sregs.efer & EFER_LMA).toBe(EFER_LMA);
    expect(s.msrs.write(MSR_EFER, s.sregs.efer & ~EFER_LME)).toBe(false);
  });

  it("fills the kvmi_event_arch MSR block", () => {
    const s = newState();
    s.msrs.write(MSR_LSTAR, 0xffffffff81000000n);
    s.msrs.write(MSR_KERNEL_GS_BASE, 0x7f00n);
    expect(eventArchMsrs(s.msrs)).toEqual({
      sysenter_cs: 0n, sysenter_esp: 0n, sysenter_eip: 0n, efer: s.sregs.efer, star: 0n,
      lstar: 0xffffffff81000000n, cstar: 0n, pat: 0x0007040600070406n, shadow_gs: 0x7f00n,
    });
  });

  it("rejects writes the CPU would #GP on", () => {
    const s = newState();
    expect(s.msrs.write(MSR_LSTAR, 0x0000_8000_0000_0000n)).toBe(false);
    expect(s.msrs.write(MSR_IA32_CR_PAT, 0x02n)).toBe(false);
    expect(s.msrs.write(MSR_MTRRcap, 0n)).toBe(false);
    expect(s.msrs.write(MSR_MISC_FEATURES_ENABLES, 1n)).toBe(true);
    expect(s.msrs.write(MSR_MISC_FEATURES_ENABLES, 4n)).toBe(false);
    expect(s.msrs.write(0xdead, 0n)).toBe(false);
    expect(s.msrs.read(MSR_MISC_FEATURES_ENABLES)).toBe(1n);
  });
});

describe("CPUID", () => {
  it("answers leaf 0 with the max leaf and GenuineIntel, ignoring the index", () => {
    const s = newState();
    const leaf0 = s.cpuid.get(0, 0)!;
    expect(leaf0.eax).toBe(0xd);
    const vendor = Buffer.alloc(12);
    vendor.writeUInt32LE(leaf0.ebx, 0);
    vendor.writeUInt32LE(leaf0.edx, 4);
    vendor.writeUInt32LE(leaf0.ecx, 8);
    expect(vendor.toString("latin1")).toBe("GenuineIntel");
    expect(s.cpuid.get(0, 5)).toEqual(leaf0);
  });

  it("reports XSAVE support, mirrors OSXSAVE from CR4 and sizes XSAVE by XCR0", () => {
    const s = newState(1);
    const leaf1 = () => s.cpuid.get(1, 0)!;
    expect(leaf1().ecx & CPUID_1_ECX_XSAVE).toBe(CPUID_1_ECX_XSAVE);
    expect(leaf1().ebx >>> 24).toBe(1); // APIC id
    expect(leaf1().ecx & CPUID_1_ECX_OSXSAVE).toBe(CPUID_1_ECX_OSXSAVE);
    s.sregs.cr4 &= ~X86_CR4_OSXSAVE;
    expect(leaf1().ecx & CPUID_1_ECX_OSXSAVE).toBe(0);
    expect(s.cpuid.get(0xd, 0)!.ebx).toBe(832);
    expect(s.xsave.setXcr0(3n)).toBe(true);
    expect(s.cpuid.get(0xd, 0)!.ebx).toBe(576);
    expect(s.cpuid.get(0x80000001, 0)!.edx & (1 << 29)).not.toBe(0); // long mode
  });

  it("has no entry for missing leaves or sub-leaves", () => {
    const s = newState();
    expect(s.cpuid.get(0x8000001f, 0)).toBeUndefined();
    expect(s.cpuid.get(0x7, 1)).toBeUndefined();
    expect(s.cpuid.get(0xd, 3)).toBeUndefined();
    expect(s.cpuid.leaves().length).toBeGreaterThan(10);
  });
});

describe("XCR0 and XSAVE", () => {
  it("accepts only valid XCR0 values", () => {
    expect([1n, 3n, 7n].map(isValidXcr0)).toEqual([true, true, true]);
    expect([0n, 2n, 5n, 6n, 8n, 0xfn, -1n].map(isValidXcr0)).toEqual(Array(7).fill(false));
    const s = newState();
    expect(s.xsave.xcr0).toBe(7n);
    expect(s.xsave.setXcr0(5n)).toBe(false);
    expect(s.xsave.xcr0).toBe(7n);
  });

  it("round-trips the 4096-byte area and zero-extends short images", () => {
    const s = newState();
    const area = s.xsave.getArea();
    expect(area.length).toBe(XSAVE_AREA_BYTES);
    expect(s.xsave.setArea(area)).toEqual({ ok: true });
    expect(s.xsave.setArea(new Uint8Array(512).fill(0, 0))).toEqual({ ok: true });
    expect(s.xsave.getArea()).toEqual(new Uint8Array(XSAVE_AREA_BYTES));
    expect(s.xsave.setArea(new Uint8Array(XSAVE_AREA_BYTES + 1))).toEqual({ ok: false, reason: "TOO_LARGE" });
  });

  it("rejects invalid headers and leaves the area unchanged", () => {
    const s = newState();
    const good = s.xsave.getArea();
    const patched = (edit: (v: DataView) => void) => {
      const copy = good.slice();
      edit(new DataView(copy.buffer));
      return s.xsave.setArea(copy);
    };
    expect(s.xsave.setXcr0(3n)).toBe(true);
    expect(patched((v) => v.setBigUint64(XSAVE_HDR_OFFSET, 7n, true))).toEqual({ ok: false, reason: "XSTATE_BV_NOT_IN_XCR0" });
    expect(patched((v) => v.setBigUint64(XSAVE_HDR_OFFSET + 8, 1n << 63n, true))).toEqual({ ok: false, reason: "XCOMP_BV_SET" });
    expect(patched((v) => v.setUint8(XSAVE_HDR_OFFSET + 40, 1))).toEqual({ ok: false, reason: "HEADER_RESERVED_SET" });
    expect(patched((v) => v.setUint32(XSAVE_MXCSR_OFFSET, 0x10000, true))).toEqual({ ok: false, reason: "MXCSR_RESERVED_SET" });
    expect(s.xsave.getArea()).toEqual(good);
  });

  it("clears XSTATE_BV bits of components XSETBV disables, so GET/SET keeps working", () => {
    const s = newState();
    const avx = s.xsave.getArea();
    new DataView(avx.buffer).setBigUint64(XSAVE_HDR_OFFSET, 7n, true);
    expect(s.xsave.setArea(avx)).toEqual({ ok: true });
    expect(s.xsave.setXcr0(3n)).toBe(true);
    const after = s.xsave.getArea();
    expect(new DataView(after.buffer).getBigUint64(XSAVE_HDR_OFFSET, true)).toBe(3n);
    expect(s.xsave.setArea(after)).toEqual({ ok: true });
  });
});

describe("MTRR types and TSC", () => {
  it("is WB for RAM, UC for VGA and holes, WP for the BIOS shadow", () => {
    const memory = createGuestMemory({ memoryMiB: 64, mmioHole: { gpa: 0x2000000n, sizeBytes: 0x1000000n } });
    const s = createVcpuState({ index: 0, vcpuCount: 1, memory });
    expect(s.mtrrType(0x1000n)).toBe(MTRR_TYPE_WRBACK);
    expect(s.mtrrType(0xa0000n)).toBe(MTRR_TYPE_UNCACHABLE);
    expect(s.mtrrType(0xf0000n)).toBe(MTRR_TYPE_WRPROT);
    expect(s.mtrrType(0x100000n)).toBe(MTRR_TYPE_WRBACK);
    expect(s.mtrrType(0x2800000n)).toBe(MTRR_TYPE_UNCACHABLE); // MMIO hole
    expect(s.mtrrType(0x3000000n)).toBe(MTRR_TYPE_WRBACK); // relocated RAM
    expect(s.mtrrType(0xfee00000n)).toBe(MTRR_TYPE_UNCACHABLE);
    expect(s.tscHz).toBe(2_400_000_000n);
  });

  it("marks APs uninitialized when asked, and the BSP in APIC base", () => {
    const memory = createGuestMemory({ memoryMiB: 8 });
    const bsp = createVcpuState({ index: 0, vcpuCount: 2, memory });
    const ap = createVcpuState({ index: 1, vcpuCount: 2, memory, startUninitialized: true });
    expect(bsp.initialized).toBe(true);
    expect(ap.initialized).toBe(false);
    expect(bsp.sregs.apic_base).toBe(0xfee00900n);
    expect(ap.sregs.apic_base).toBe(0xfee00800n);
  });
});
