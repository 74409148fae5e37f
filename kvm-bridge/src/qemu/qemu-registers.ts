// SPDX-License-Identifier: Apache-2.0
/**
 * `struct kvm_regs` / `kvm_sregs` from what QEMU reports: general registers, control registers,
 * EFER and the FS/GS/kernel-GS bases from the gdbstub (`g`), segment descriptors (base, limit,
 * attributes) and the GDT/IDT from HMP `info registers`, which the gdbstub does not carry.
 */
import type { KvmRegs, KvmSregs } from "../emulator/kernel/guest-port.js";
import { zeroValue } from "../wire/codec.js";
import { kvmSregs } from "../wire/layouts/x86.js";

type Segment = KvmSregs["cs"];

/** Parses one `CS =0010 0000000000000000 ffffffff 00a09b00 …` line's numbers into a kvm_segment. */
function segmentOf(selector: number, base: bigint, limit: number, flags: number): Segment {
  return {
    base,
    limit,
    selector,
    type: (flags >>> 8) & 0xf,
    present: (flags >>> 15) & 1,
    dpl: (flags >>> 13) & 3,
    db: (flags >>> 22) & 1,
    s: (flags >>> 12) & 1,
    l: (flags >>> 21) & 1,
    g: (flags >>> 23) & 1,
    avl: (flags >>> 20) & 1,
    unusable: (flags >>> 15) & 1 ? 0 : 1,
    padding: 0,
  } as unknown as Segment;
}

const NULL_SEGMENT = { ...segmentOf(0, 0n, 0, 0), unusable: 1 };

/** Segment and descriptor-table state from HMP `info registers`. */
export interface HmpSegments {
  readonly segments: Record<string, Segment>;
  readonly gdt: { base: bigint; limit: number };
  readonly idt: { base: bigint; limit: number };
  readonly apicBase?: bigint;
}

export function parseInfoRegisters(text: string): HmpSegments {
  const segments: Record<string, Segment> = {};
  for (const match of text.matchAll(/^(ES|CS|SS|DS|FS|GS|LDT|TR)\s*=([0-9a-f]{4})(?: ([0-9a-f]{16}) ([0-9a-f]{8}) ([0-9a-f]{8}))?/gim)) {
    const selector = Number.parseInt(match[2]!, 16);
    segments[match[1]!.toLowerCase()] = match[3] === undefined ? { ...NULL_SEGMENT, selector } : segmentOf(selector, BigInt(`0x${match[3]}`), Number.parseInt(match[4]!, 16), Number.parseInt(match[5]!, 16));
  }
  const table = (name: string) => {
    const match = new RegExp(`^${name}=\\s*([0-9a-f]{16}) ([0-9a-f]{8})`, "im").exec(text);
    return match ? { base: BigInt(`0x${match[1]}`), limit: Number.parseInt(match[2]!, 16) } : { base: 0n, limit: 0 };
  };
  return { segments, gdt: table("GDT"), idt: table("IDT") };
}

/** kvm_regs from gdbstub registers (by name). */
export function kvmRegsOf(gdb: ReadonlyMap<string, bigint>): KvmRegs {
  const r = (name: string) => gdb.get(name) ?? 0n;
  return {
    rax: r("rax"), rbx: r("rbx"), rcx: r("rcx"), rdx: r("rdx"), rsi: r("rsi"), rdi: r("rdi"), rsp: r("rsp"), rbp: r("rbp"),
    r8: r("r8"), r9: r("r9"), r10: r("r10"), r11: r("r11"), r12: r("r12"), r13: r("r13"), r14: r("r14"), r15: r("r15"),
    rip: r("rip"), rflags: r("eflags"),
  } as KvmRegs;
}

/** kvm_sregs from gdbstub registers plus HMP's segment descriptors. */
export function kvmSregsOf(gdb: ReadonlyMap<string, bigint>, hmp: HmpSegments): KvmSregs {
  const r = (name: string) => gdb.get(name) ?? 0n;
  const segment = (name: string) => hmp.segments[name] ?? { ...NULL_SEGMENT, selector: Number(r(name)) };
  const zero = zeroValue(kvmSregs) as unknown as KvmSregs;
  return {
    ...zero,
    cs: segment("cs"), ds: segment("ds"), es: segment("es"),
    // The gdbstub's fs_base/gs_base are current even when HMP printed the selector only.
    fs: { ...segment("fs"), base: r("fs_base") },
    gs: { ...segment("gs"), base: r("gs_base") },
    ss: segment("ss"), tr: segment("tr"), ldt: segment("ldt"),
    gdt: { ...zero.gdt, base: hmp.gdt.base, limit: hmp.gdt.limit },
    idt: { ...zero.idt, base: hmp.idt.base, limit: hmp.idt.limit },
    cr0: r("cr0"), cr2: r("cr2"), cr3: r("cr3"), cr4: r("cr4"), cr8: r("cr8"), efer: r("efer"),
    apic_base: 0xfee00900n,
  };
}

/** KVMI's `mode`: 8 in 64-bit code, 4 in 32-bit, 2 otherwise (kvmi-abi §6). */
export function modeOf(sregs: KvmSregs): number {
  if ((sregs.cr0 & 1n) === 0n) return 2;
  if (sregs.cs.l === 1 && (sregs.efer & 0x400n) !== 0n) return 8;
  return sregs.cs.db === 1 ? 4 : 2;
}
