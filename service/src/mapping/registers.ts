// SPDX-License-Identifier: Apache-2.0
/**
 * x86_64 register state: `kvm_regs`, `kvm_sregs` (`kvm_segment`, `kvm_dtable`), `kvm_msr_entry` and
 * `kvmi_event_arch` (with its MSR block) <-> kvmi.v1 Regs, Sregs, Segment, Dtable, MsrEntry,
 * EventArch and EventMsrs (kvmi-abi §6, registers.proto).
 *
 * Wire values use the C field names of the layout tables; u64 is bigint on both sides. The
 * single-bit `u8` flags of `kvm_segment` are booleans in proto (the kernel only reports 0 or 1).
 * "To wire" functions only shape values: the codec range-checks every field and throws
 * KvmiArgumentError naming it.
 */
import { create } from "@bufbuild/protobuf";
import { KvmiArgumentError } from "@kvmi/kvm-bridge";
import type { layouts, LayoutValue } from "@kvmi/kvm-bridge/wire";
import {
  EventMsrsSchema,
  MsrEntrySchema,
  RegsSchema,
  SegmentSchema,
  SregsSchema,
} from "@kvmi/proto";
import type { Dtable, EventArch, EventMsrs, MsrEntry, Regs, Segment, Sregs } from "@kvmi/proto";
import { cpuModeFromWire } from "./enums.js";
import { mapFields } from "./wire-coverage.js";
import type { WireFieldMapping } from "./wire-coverage.js";

/** `struct kvm_regs` as the codec sees it. */
export type WireRegs = LayoutValue<typeof layouts.kvmRegs>;
/** `struct kvm_segment`. */
export type WireSegment = LayoutValue<typeof layouts.kvmSegment>;
/** `struct kvm_dtable`. */
export type WireDtable = LayoutValue<typeof layouts.kvmDtable>;
/** `struct kvm_sregs`. */
export type WireSregs = LayoutValue<typeof layouts.kvmSregs>;
/** `struct kvm_msr_entry`. */
export type WireMsrEntry = LayoutValue<typeof layouts.kvmMsrEntry>;
/** The `msrs` member of `struct kvmi_event_arch`. */
export type WireEventArchMsrs = LayoutValue<typeof layouts.kvmiEventArchMsrs>;
/** `struct kvmi_event_arch`. */
export type WireEventArch = LayoutValue<typeof layouts.kvmiEventArch>;

/** The 18 `kvm_regs` fields in kernel order; proto Regs uses the same names. */
const REG_NAMES = [
  "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
  "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
  "rip", "rflags",
] as const satisfies ReadonlyArray<keyof WireRegs & keyof Regs>; // prettier-ignore

/** The 8 segment registers of `kvm_sregs`, same names in proto Sregs. */
const SEGMENT_NAMES = ["cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"] as const satisfies ReadonlyArray<keyof WireSregs & keyof Sregs>;

/** Words of `kvm_sregs.interrupt_bitmap` (256 bits). */
const INTERRUPT_BITMAP_WORDS = 4;

// ---------------------------------------------------------------------------------------------
// kvm_regs

/** `kvm_regs` -> Regs. */
export function regsToProto(regs: WireRegs): Regs {
  // Message literals rather than create(): complete by type (tsc checks every field), and several
  // times cheaper on the event path, which maps the whole register block for every event.
  return {
    $typeName: "kvmi.v1.Regs",
    rax: regs.rax, rbx: regs.rbx, rcx: regs.rcx, rdx: regs.rdx,
    rsi: regs.rsi, rdi: regs.rdi, rsp: regs.rsp, rbp: regs.rbp,
    r8: regs.r8, r9: regs.r9, r10: regs.r10, r11: regs.r11,
    r12: regs.r12, r13: regs.r13, r14: regs.r14, r15: regs.r15,
    rip: regs.rip, rflags: regs.rflags,
  }; // prettier-ignore
}

/** Regs -> `kvm_regs`; an unset message is all zeros (proto3 defaults). */
export function regsToWire(regs: Regs | undefined): WireRegs {
  const source = regs ?? create(RegsSchema);
  const out = {} as WireRegs;
  for (const name of REG_NAMES) out[name] = source[name];
  return out;
}

// ---------------------------------------------------------------------------------------------
// kvm_segment, kvm_dtable

/** `kvm_segment` -> Segment. */
export function segmentToProto(s: WireSegment): Segment {
  return {
    $typeName: "kvmi.v1.Segment",
    base: s.base,
    limit: s.limit,
    selector: s.selector,
    type: s.type,
    present: s.present !== 0,
    dpl: s.dpl,
    db: s.db !== 0,
    s: s.s !== 0,
    l: s.l !== 0,
    g: s.g !== 0,
    avl: s.avl !== 0,
    unusable: s.unusable !== 0,
  };
}

/** Segment -> `kvm_segment`. */
export function segmentToWire(s: Segment | undefined): WireSegment {
  const v = s ?? create(SegmentSchema);
  return {
    base: v.base,
    limit: v.limit,
    selector: v.selector,
    type: v.type,
    present: v.present ? 1 : 0,
    dpl: v.dpl,
    db: v.db ? 1 : 0,
    s: v.s ? 1 : 0,
    l: v.l ? 1 : 0,
    g: v.g ? 1 : 0,
    avl: v.avl ? 1 : 0,
    unusable: v.unusable ? 1 : 0,
  };
}

/** `kvm_dtable` -> Dtable. */
export function dtableToProto(d: WireDtable): Dtable {
  return { $typeName: "kvmi.v1.Dtable", base: d.base, limit: d.limit };
}

/** Dtable -> `kvm_dtable`. */
export function dtableToWire(d: Dtable | undefined): WireDtable {
  return { base: d?.base ?? 0n, limit: d?.limit ?? 0 };
}

// ---------------------------------------------------------------------------------------------
// kvm_sregs

/** `kvm_sregs` -> Sregs. */
export function sregsToProto(s: WireSregs): Sregs {
  return {
    $typeName: "kvmi.v1.Sregs",
    cs: segmentToProto(s.cs),
    ds: segmentToProto(s.ds),
    es: segmentToProto(s.es),
    fs: segmentToProto(s.fs),
    gs: segmentToProto(s.gs),
    ss: segmentToProto(s.ss),
    tr: segmentToProto(s.tr),
    ldt: segmentToProto(s.ldt),
    gdt: dtableToProto(s.gdt),
    idt: dtableToProto(s.idt),
    cr0: s.cr0,
    cr2: s.cr2,
    cr3: s.cr3,
    cr4: s.cr4,
    cr8: s.cr8,
    efer: s.efer,
    apicBase: s.apic_base,
    interruptBitmap: [...s.interrupt_bitmap],
  };
}

/**
 * Sregs -> `kvm_sregs`.
 * @throws KvmiArgumentError when `interrupt_bitmap` is neither empty (all clear) nor exactly 4 words.
 */
export function sregsToWire(s: Sregs | undefined): WireSregs {
  const v = s ?? create(SregsSchema);
  const bitmap = v.interruptBitmap;
  if (bitmap.length !== 0 && bitmap.length !== INTERRUPT_BITMAP_WORDS) {
    throw new KvmiArgumentError(
      "interrupt_bitmap",
      `interrupt_bitmap must hold exactly ${INTERRUPT_BITMAP_WORDS} words (256 bits), got ${bitmap.length}`,
    );
  }
  const out = {
    gdt: dtableToWire(v.gdt),
    idt: dtableToWire(v.idt),
    cr0: v.cr0,
    cr2: v.cr2,
    cr3: v.cr3,
    cr4: v.cr4,
    cr8: v.cr8,
    efer: v.efer,
    apic_base: v.apicBase,
    interrupt_bitmap: bitmap.length === 0 ? new Array<bigint>(INTERRUPT_BITMAP_WORDS).fill(0n) : [...bitmap],
  } as WireSregs;
  for (const name of SEGMENT_NAMES) out[name] = segmentToWire(v[name]);
  return out;
}

// ---------------------------------------------------------------------------------------------
// kvm_msr_entry, kvmi_event_arch

/** `kvm_msr_entry` -> MsrEntry (`reserved` is padding and not carried). */
export function msrEntryToProto(e: WireMsrEntry): MsrEntry {
  return create(MsrEntrySchema, { index: e.index, data: e.data });
}

/** MsrEntry -> `kvm_msr_entry`. */
export function msrEntryToWire(e: MsrEntry): WireMsrEntry {
  return { index: e.index, data: e.data };
}

/** The MSR block of `kvmi_event_arch` -> EventMsrs. */
export function eventMsrsToProto(m: WireEventArchMsrs): EventMsrs {
  return {
    $typeName: "kvmi.v1.EventMsrs",
    sysenterCs: m.sysenter_cs,
    sysenterEsp: m.sysenter_esp,
    sysenterEip: m.sysenter_eip,
    efer: m.efer,
    star: m.star,
    lstar: m.lstar,
    cstar: m.cstar,
    pat: m.pat,
    shadowGs: m.shadow_gs,
  };
}

/** EventMsrs -> the MSR block of `kvmi_event_arch`. */
export function eventMsrsToWire(m: EventMsrs | undefined): WireEventArchMsrs {
  const v = m ?? create(EventMsrsSchema);
  return {
    sysenter_cs: v.sysenterCs,
    sysenter_esp: v.sysenterEsp,
    sysenter_eip: v.sysenterEip,
    efer: v.efer,
    star: v.star,
    lstar: v.lstar,
    cstar: v.cstar,
    pat: v.pat,
    shadow_gs: v.shadowGs,
  };
}

/** `kvmi_event_arch` -> EventArch (a `mode` other than 2/4/8 becomes CPU_MODE_UNSPECIFIED). */
export function eventArchToProto(a: WireEventArch): EventArch {
  return {
    $typeName: "kvmi.v1.EventArch",
    mode: cpuModeFromWire(a.mode),
    regs: regsToProto(a.regs),
    sregs: sregsToProto(a.sregs),
    msrs: eventMsrsToProto(a.msrs),
  };
}

/** EventArch -> `kvmi_event_arch` (CPU_MODE_UNSPECIFIED is written as 0). Used by tests and tools. */
export function eventArchToWire(a: EventArch | undefined): WireEventArch {
  return {
    mode: a?.mode ?? 0,
    regs: regsToWire(a?.regs),
    sregs: sregsToWire(a?.sregs),
    msrs: eventMsrsToWire(a?.msrs),
  };
}

// ---------------------------------------------------------------------------------------------
// Coverage (see wire-coverage.ts)

const identity = (names: readonly string[]): Record<string, string> => Object.fromEntries(names.map((n) => [n, n]));

/** The wire fields the register mappings carry. */
export const REGISTER_WIRE_FIELDS: readonly WireFieldMapping[] = [
  ...mapFields("kvm_regs", "Regs", identity(REG_NAMES)),
  ...mapFields(
    "kvm_segment",
    "Segment",
    identity(["base", "limit", "selector", "type", "present", "dpl", "db", "s", "l", "g", "avl", "unusable"]),
  ),
  ...mapFields("kvm_dtable", "Dtable", identity(["base", "limit"])),
  ...mapFields("kvm_sregs", "Sregs", {
    ...identity(SEGMENT_NAMES),
    ...identity(["gdt", "idt", "cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base", "interrupt_bitmap"]),
  }),
  ...mapFields("kvm_msr_entry", "MsrEntry", identity(["index", "data"])),
  ...mapFields("kvmi_event_arch", "EventArch", identity(["mode", "regs", "sregs", "msrs"])),
  ...mapFields(
    "kvmi_event_arch_msrs",
    "EventMsrs",
    identity(["sysenter_cs", "sysenter_esp", "sysenter_eip", "efer", "star", "lstar", "cstar", "pat", "shadow_gs"]),
  ),
];
