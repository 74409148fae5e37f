// SPDX-License-Identifier: Apache-2.0
/**
 * x86_64 structs (kvmi-abi §6): the KVM register structs from `arch/x86/include/uapi/asm/kvm.h` that
 * KVMI embeds, and `kvmi_event_arch` from `arch/x86/include/uapi/asm/kvmi.h`. The padding of the KVM
 * structs is `reserved`: KVM itself never validates it, and KVMI only ever sends these to the tool
 * (or takes `kvm_regs`, which has no padding).
 */
import { array, bytes, defineLayout, pad, reserved, struct, u16, u32, u64, u8 } from "../layout.js";

/** `struct kvm_regs` (144 bytes, kvmi-abi §6): 18 general-purpose registers; also the SET_REGISTERS body. */
export const kvmRegs = defineLayout("kvm_regs", 144, {
  rax: u64(0),
  rbx: u64(8),
  rcx: u64(16),
  rdx: u64(24),
  rsi: u64(32),
  rdi: u64(40),
  rsp: u64(48),
  rbp: u64(56),
  r8: u64(64),
  r9: u64(72),
  r10: u64(80),
  r11: u64(88),
  r12: u64(96),
  r13: u64(104),
  r14: u64(112),
  r15: u64(120),
  rip: u64(128),
  rflags: u64(136),
});

/** `struct kvm_segment` (24 bytes, kvmi-abi §6): one segment register with its hidden part. */
export const kvmSegment = defineLayout("kvm_segment", 24, {
  base: u64(0),
  limit: u32(8),
  selector: u16(12),
  type: u8(14),
  present: u8(15),
  dpl: u8(16),
  db: u8(17),
  s: u8(18),
  l: u8(19),
  g: u8(20),
  avl: u8(21),
  unusable: u8(22),
  padding: reserved(23, 1),
});

/** `struct kvm_dtable` (16 bytes, kvmi-abi §6): GDTR/IDTR. C: `__u16 padding[3]`. */
export const kvmDtable = defineLayout("kvm_dtable", 16, {
  base: u64(0),
  limit: u16(8),
  padding: reserved(10, 6),
});

/** `struct kvm_sregs` (312 bytes, kvmi-abi §6): segments, descriptor tables, control registers. */
export const kvmSregs = defineLayout("kvm_sregs", 312, {
  cs: struct(0, kvmSegment),
  ds: struct(24, kvmSegment),
  es: struct(48, kvmSegment),
  fs: struct(72, kvmSegment),
  gs: struct(96, kvmSegment),
  ss: struct(120, kvmSegment),
  tr: struct(144, kvmSegment),
  ldt: struct(168, kvmSegment),
  gdt: struct(192, kvmDtable),
  idt: struct(208, kvmDtable),
  cr0: u64(224),
  cr2: u64(232),
  cr3: u64(240),
  cr4: u64(248),
  cr8: u64(256),
  efer: u64(264),
  apic_base: u64(272),
  /** 256 bits of pending external interrupts. */
  interrupt_bitmap: array(280, "u64", 4),
});

/** `struct kvm_msr_entry` (16 bytes, kvmi-abi §6, §4 GET_REGISTERS). */
export const kvmMsrEntry = defineLayout("kvm_msr_entry", 16, {
  index: u32(0),
  reserved: reserved(4, 4),
  data: u64(8),
});

/** `struct kvm_msrs` fixed part (8 bytes, kvmi-abi §6): `entries[nmsrs]` follow as a tail. */
export const kvmMsrs = defineLayout("kvm_msrs", 8, {
  nmsrs: u32(0),
  pad: reserved(4, 4),
});

/** `struct kvm_xsave` (4096 bytes, kvmi-abi §6): C `__u32 region[1024]`, kept as raw bytes. */
export const kvmXsave = defineLayout("kvm_xsave", 4096, {
  region: bytes(0, 4096),
});

/**
 * The anonymous `struct { ... } msrs` member of `kvmi_event_arch` (72 bytes, kvmi-abi §6). C has no
 * name for it; ours is `kvmi_event_arch_msrs`. `shadow_gs` is MSR_KERNEL_GS_BASE.
 */
export const kvmiEventArchMsrs = defineLayout("kvmi_event_arch_msrs", 72, {
  sysenter_cs: u64(0),
  sysenter_esp: u64(8),
  sysenter_eip: u64(16),
  efer: u64(24),
  star: u64(32),
  lstar: u64(40),
  cstar: u64(48),
  pat: u64(56),
  shadow_gs: u64(64),
});

/** `struct kvmi_event_arch` (536 bytes, kvmi-abi §6): vCPU state sent with every event. */
export const kvmiEventArch = defineLayout("kvmi_event_arch", 536, {
  /** 2, 4 or 8: 16/32/64-bit code. */
  mode: u8(0),
  padding: pad(1, 7),
  regs: struct(8, kvmRegs),
  sregs: struct(152, kvmSregs),
  msrs: struct(464, kvmiEventArchMsrs),
});
