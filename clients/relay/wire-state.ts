// SPDX-License-Identifier: Apache-2.0
/**
 * kvmi.v1 register and event-state messages -> the KVMI structs a tool reads (`kvm_regs`,
 * `kvm_sregs`, `kvmi_event_arch`, docs/protocol/). Field names are the dialect-neutral ones every
 * dialect table uses, so one conversion serves v9, v12 and kvmi-v7.
 */
import type { Dtable, EventMsrs, Regs, Segment, Sregs } from "@kvmi/clients";
import type { X86Regs } from "@kvmi/clients";

const REG_NAMES = [
  "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
  "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
  "rip", "rflags",
] as const; // prettier-ignore
const SEGMENT_NAMES = ["cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"] as const;

type Wire = Record<string, unknown>;

/** kvmi.v1 Regs -> `kvm_regs`. */
export function regsToWire(regs: Regs | undefined): Wire {
  const out: Wire = {};
  for (const name of REG_NAMES) out[name] = regs?.[name] ?? 0n;
  return out;
}

/** `kvm_regs` as decoded from a tool's SET_REGISTERS -> the SDK's 18 registers. */
export function regsFromWire(wire: Wire): X86Regs {
  const out: Record<string, bigint> = {};
  for (const name of REG_NAMES) out[name] = BigInt(wire[name] as bigint | number);
  return out as unknown as X86Regs;
}

function segmentToWire(s: Segment | undefined): Wire {
  const flag = (v: boolean | undefined) => (v === true ? 1 : 0);
  return {
    base: s?.base ?? 0n,
    limit: s?.limit ?? 0,
    selector: s?.selector ?? 0,
    type: s?.type ?? 0,
    present: flag(s?.present),
    dpl: s?.dpl ?? 0,
    db: flag(s?.db),
    s: flag(s?.s),
    l: flag(s?.l),
    g: flag(s?.g),
    avl: flag(s?.avl),
    unusable: flag(s?.unusable),
  };
}

function dtableToWire(d: Dtable | undefined): Wire {
  return { base: d?.base ?? 0n, limit: d?.limit ?? 0 };
}

/** kvmi.v1 Sregs -> `kvm_sregs`. */
export function sregsToWire(s: Sregs | undefined): Wire {
  const out: Wire = {
    gdt: dtableToWire(s?.gdt),
    idt: dtableToWire(s?.idt),
    cr0: s?.cr0 ?? 0n,
    cr2: s?.cr2 ?? 0n,
    cr3: s?.cr3 ?? 0n,
    cr4: s?.cr4 ?? 0n,
    cr8: s?.cr8 ?? 0n,
    efer: s?.efer ?? 0n,
    apic_base: s?.apicBase ?? 0n,
    interrupt_bitmap: s?.interruptBitmap.length === 4 ? [...s.interruptBitmap] : [0n, 0n, 0n, 0n],
  };
  for (const name of SEGMENT_NAMES) out[name] = segmentToWire(s?.[name]);
  return out;
}

function eventMsrsToWire(m: EventMsrs | undefined): Wire {
  return {
    sysenter_cs: m?.sysenterCs ?? 0n,
    sysenter_esp: m?.sysenterEsp ?? 0n,
    sysenter_eip: m?.sysenterEip ?? 0n,
    efer: m?.efer ?? 0n,
    star: m?.star ?? 0n,
    lstar: m?.lstar ?? 0n,
    cstar: m?.cstar ?? 0n,
    pat: m?.pat ?? 0n,
    shadow_gs: m?.shadowGs ?? 0n,
  };
}

/**
 * The vCPU state of an event -> `kvmi_event_arch`. `view` (kvmi-v7's EPT view) is always the
 * default view 0: the remote side has no EPT views (docs/protocol/kvmi-v7.md); dialects without
 * the field ignore it.
 */
export function eventArchToWire(arch: { mode: number; regs: Regs; sregs: Sregs; msrs: EventMsrs }): Wire {
  return { mode: arch.mode, view: 0, regs: regsToWire(arch.regs), sregs: sregsToWire(arch.sregs), msrs: eventMsrsToWire(arch.msrs) };
}
