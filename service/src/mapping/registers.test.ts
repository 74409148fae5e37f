// SPDX-License-Identifier: Apache-2.0
/**
 * Register mappings: hand-checked samples, and property round trips wire -> proto -> wire that are
 * byte-identical through the real codec (padding aside), plus proto binary round trips.
 */
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { KvmiArgumentError } from "@kvmi/kvm-bridge";
import { encode, layouts } from "@kvmi/kvm-bridge/wire";
import { CpuMode, EventArchSchema, RegsSchema, SregsSchema } from "@kvmi/proto";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  eventArchToProto,
  eventArchToWire,
  regsToProto,
  regsToWire,
  segmentToProto,
  sregsToProto,
  sregsToWire,
} from "./registers.js";
import type { WireEventArch, WireRegs, WireSegment, WireSregs } from "./registers.js";
import { sampleArch, sampleSegment } from "./test-support.js";

const u64 = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });
const u32 = fc.integer({ min: 0, max: 0xffff_ffff });
const u16 = fc.integer({ min: 0, max: 0xffff });
const u8 = fc.integer({ min: 0, max: 0xff });
const bit = fc.integer({ min: 0, max: 1 });

const regsArb: fc.Arbitrary<WireRegs> = fc.record({
  rax: u64, rbx: u64, rcx: u64, rdx: u64, rsi: u64, rdi: u64, rsp: u64, rbp: u64,
  r8: u64, r9: u64, r10: u64, r11: u64, r12: u64, r13: u64, r14: u64, r15: u64,
  rip: u64, rflags: u64,
}); // prettier-ignore

// The single-bit flags are 0/1 on the wire (the kernel reports nothing else), booleans in proto.
const segmentArb: fc.Arbitrary<WireSegment> = fc.record({
  base: u64, limit: u32, selector: u16, type: u8, present: bit, dpl: u8, db: bit, s: bit, l: bit, g: bit, avl: bit, unusable: bit,
});
const dtableArb = fc.record({ base: u64, limit: u16 });
const sregsArb: fc.Arbitrary<WireSregs> = fc.record({
  cs: segmentArb, ds: segmentArb, es: segmentArb, fs: segmentArb, gs: segmentArb, ss: segmentArb, tr: segmentArb, ldt: segmentArb,
  gdt: dtableArb, idt: dtableArb,
  cr0: u64, cr2: u64, cr3: u64, cr4: u64, cr8: u64, efer: u64, apic_base: u64,
  interrupt_bitmap: fc.array(u64, { minLength: 4, maxLength: 4 }),
}); // prettier-ignore
const archArb: fc.Arbitrary<WireEventArch> = fc.record({
  mode: fc.constantFrom(2, 4, 8),
  regs: regsArb,
  sregs: sregsArb,
  msrs: fc.record({
    sysenter_cs: u64, sysenter_esp: u64, sysenter_eip: u64, efer: u64, star: u64, lstar: u64, cstar: u64, pat: u64, shadow_gs: u64,
  }), // prettier-ignore
});

describe("register round trips", () => {
  it("kvm_regs -> Regs -> kvm_regs is byte-identical, also through proto binary", () => {
    fc.assert(
      fc.property(regsArb, (w) => {
        const proto = fromBinary(RegsSchema, toBinary(RegsSchema, regsToProto(w)));
        expect(encode(layouts.kvmRegs, regsToWire(proto))).toEqual(encode(layouts.kvmRegs, w));
      }),
    );
  });

  it("kvm_sregs -> Sregs -> kvm_sregs is byte-identical, also through proto binary", () => {
    fc.assert(
      fc.property(sregsArb, (w) => {
        const proto = fromBinary(SregsSchema, toBinary(SregsSchema, sregsToProto(w)));
        expect(encode(layouts.kvmSregs, sregsToWire(proto))).toEqual(encode(layouts.kvmSregs, w));
      }),
    );
  });

  it("kvmi_event_arch -> EventArch -> kvmi_event_arch is byte-identical, and the built message equals the decoded one", () => {
    fc.assert(
      fc.property(archArb, (w) => {
        const built = eventArchToProto(w);
        const proto = fromBinary(EventArchSchema, toBinary(EventArchSchema, built));
        expect(encode(layouts.kvmiEventArch, eventArchToWire(proto))).toEqual(encode(layouts.kvmiEventArch, w));
        // The mapping builds message literals: they must be the complete messages a client decodes.
        expect(built).toEqual(proto);
      }),
    );
  });
});

describe("register samples", () => {
  it("maps kvm_segment flags to booleans and keeps the numeric fields", () => {
    expect(segmentToProto(sampleSegment(7))).toEqual(
      expect.objectContaining({
        base: 0xffff_8000_0000_0007n,
        limit: 0xffff_f007,
        selector: 0x48,
        type: 10,
        present: true,
        dpl: 3,
        db: true,
        s: false,
        l: true,
        g: true,
        avl: false,
        unusable: true,
      }),
    );
  });

  it("maps kvmi_event_arch, MSR block included", () => {
    const arch = eventArchToProto(sampleArch());
    expect(arch.mode).toBe(CpuMode.BITS_64);
    expect(arch.regs?.rflags).toBe(0x1000_0000_0000_0012n);
    expect(arch.sregs?.apicBase).toBe(0xfee0_0900n);
    expect(arch.sregs?.interruptBitmap).toEqual([1n, 2n, 1n << 63n, 0n]);
    expect(arch.sregs?.gdt).toEqual(expect.objectContaining({ base: 0xfffffe0000001000n, limit: 0x7f }));
    expect(arch.msrs).toEqual(expect.objectContaining({ lstar: 0xffffffff81a00010n, shadowGs: 0xffff88807fc00000n, sysenterCs: 0x10n }));
  });

  it("maps an unknown mode to CPU_MODE_UNSPECIFIED and writes UNSPECIFIED as 0", () => {
    expect(eventArchToProto({ ...sampleArch(), mode: 5 }).mode).toBe(CpuMode.UNSPECIFIED);
    expect(eventArchToWire(create(EventArchSchema)).mode).toBe(0);
  });

  it("treats unset registers as zeros, and rejects a malformed interrupt bitmap", () => {
    expect(encode(layouts.kvmRegs, regsToWire(undefined))).toEqual(new Uint8Array(layouts.kvmRegs.size));
    expect(encode(layouts.kvmSregs, sregsToWire(create(SregsSchema)))).toEqual(new Uint8Array(layouts.kvmSregs.size));
    expect(() => sregsToWire(create(SregsSchema, { interruptBitmap: [1n, 2n] }))).toThrow(KvmiArgumentError);
    expect(() => sregsToWire(create(SregsSchema, { interruptBitmap: [1n, 2n] }))).toThrow(/exactly 4 words/);
  });

  it("lets the codec reject out-of-range proto values with a KvmiArgumentError naming the field", () => {
    const sregs = sregsToWire(create(SregsSchema, { cs: { selector: 0x1_0000 } }));
    expect(() => encode(layouts.kvmSregs, sregs)).toThrow(/cs\.selector/);
    expect(() => encode(layouts.kvmRegs, regsToWire(create(RegsSchema, { rax: -1n })))).toThrow(KvmiArgumentError);
  });
});
