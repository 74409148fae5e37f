// SPDX-License-Identifier: Apache-2.0
/**
 * Layout asserts (conventions §7.2): the size and every field of every v9 struct against numbers
 * copied by hand from kvmi-abi §2.3, §2.4, §3, §4, §5 and §6. Nothing here is computed from the
 * tables under test.
 *
 * Notation: `u16@2` scalar, `bytes16@4` byte array, `u64[4]@280` scalar array, `=kvm_regs@8` nested
 * struct, `pad4@4` kernel-checked padding, `reserved4@20` ignored padding.
 */
import { describe, expect, it } from "vitest";
import type { Field, Layout } from "../layout.js";
import { qemuVmiToIntrospectorE820Body, V9_LAYOUTS } from "./index.js";

function describeField(field: Field): string {
  switch (field.kind) {
    case "scalar":
      return `${field.type}@${field.offset}`;
    case "bytes":
      return `bytes${field.length}@${field.offset}`;
    case "array":
      return `${field.type}[${field.count}]@${field.offset}`;
    case "struct":
      return `=${field.layout.name}@${field.offset}`;
    case "pad":
      return `${field.checked ? "pad" : "reserved"}${field.length}@${field.offset}`;
  }
}

function describeLayout(layout: Layout): { size: number; fields: Record<string, string> } {
  const fields: Record<string, string> = {};
  for (const [name, field] of Object.entries(layout.fields)) fields[name] = describeField(field);
  return { size: layout.size, fields };
}

/** Offset of a dotted field path from the start of `layout`, walking nested structs. */
function absoluteOffset(layout: Layout, path: string): number {
  let current: Layout = layout;
  let offset = 0;
  const parts = path.split(".");
  parts.forEach((part, i) => {
    const field = current.fields[part];
    if (field === undefined) throw new Error(`${current.name} has no field ${part}`);
    offset += field.offset;
    if (i < parts.length - 1) {
      if (field.kind !== "struct") throw new Error(`${part} of ${current.name} is not a struct`);
      current = field.layout;
    }
  });
  return offset;
}

type Expected = { size: number; fields: Record<string, string> };

const EXPECTED: Record<string, Expected> = {
  // §3.1, §3.2
  kvmi_msg_hdr: { size: 8, fields: { id: "u16@0", size: "u16@2", seq: "u32@4" } },
  kvmi_error_code: { size: 8, fields: { err: "s32@0", padding: "pad4@4" } },
  kvmi_vcpu_hdr: { size: 8, fields: { vcpu: "u16@0", padding1: "pad2@2", padding2: "pad4@4" } },

  // §6
  kvm_regs: {
    size: 144,
    fields: {
      rax: "u64@0",
      rbx: "u64@8",
      rcx: "u64@16",
      rdx: "u64@24",
      rsi: "u64@32",
      rdi: "u64@40",
      rsp: "u64@48",
      rbp: "u64@56",
      r8: "u64@64",
      r9: "u64@72",
      r10: "u64@80",
      r11: "u64@88",
      r12: "u64@96",
      r13: "u64@104",
      r14: "u64@112",
      r15: "u64@120",
      rip: "u64@128",
      rflags: "u64@136",
    },
  },
  kvm_segment: {
    size: 24,
    fields: {
      base: "u64@0",
      limit: "u32@8",
      selector: "u16@12",
      type: "u8@14",
      present: "u8@15",
      dpl: "u8@16",
      db: "u8@17",
      s: "u8@18",
      l: "u8@19",
      g: "u8@20",
      avl: "u8@21",
      unusable: "u8@22",
      padding: "reserved1@23",
    },
  },
  kvm_dtable: { size: 16, fields: { base: "u64@0", limit: "u16@8", padding: "reserved6@10" } },
  kvm_sregs: {
    size: 312,
    fields: {
      cs: "=kvm_segment@0",
      ds: "=kvm_segment@24",
      es: "=kvm_segment@48",
      fs: "=kvm_segment@72",
      gs: "=kvm_segment@96",
      ss: "=kvm_segment@120",
      tr: "=kvm_segment@144",
      ldt: "=kvm_segment@168",
      gdt: "=kvm_dtable@192",
      idt: "=kvm_dtable@208",
      cr0: "u64@224",
      cr2: "u64@232",
      cr3: "u64@240",
      cr4: "u64@248",
      cr8: "u64@256",
      efer: "u64@264",
      apic_base: "u64@272",
      interrupt_bitmap: "u64[4]@280",
    },
  },
  kvm_msr_entry: { size: 16, fields: { index: "u32@0", reserved: "reserved4@4", data: "u64@8" } },
  kvm_msrs: { size: 8, fields: { nmsrs: "u32@0", pad: "reserved4@4" } },
  kvm_xsave: { size: 4096, fields: { region: "bytes4096@0" } },
  // The msrs block of kvmi_event_arch: sysenter_cs @464 ... shadow_gs @528, minus 464.
  kvmi_event_arch_msrs: {
    size: 72,
    fields: {
      sysenter_cs: "u64@0",
      sysenter_esp: "u64@8",
      sysenter_eip: "u64@16",
      efer: "u64@24",
      star: "u64@32",
      lstar: "u64@40",
      cstar: "u64@48",
      pat: "u64@56",
      shadow_gs: "u64@64",
    },
  },
  kvmi_event_arch: {
    size: 536,
    fields: {
      mode: "u8@0",
      padding: "pad7@1",
      regs: "=kvm_regs@8",
      sregs: "=kvm_sregs@152",
      msrs: "=kvmi_event_arch_msrs@464",
    },
  },

  // §4
  kvmi_features: { size: 8, fields: { singlestep: "u8@0", padding: "pad7@1" } },
  kvmi_get_version_reply: {
    size: 16,
    fields: { version: "u32@0", padding: "pad4@4", features: "=kvmi_features@8" },
  },
  kvmi_vm_check_command: { size: 8, fields: { id: "u16@0", padding1: "pad2@2", padding2: "pad4@4" } },
  kvmi_vm_check_event: { size: 8, fields: { id: "u16@0", padding1: "pad2@2", padding2: "pad4@4" } },
  kvmi_vm_get_info_reply: { size: 16, fields: { vcpu_count: "u32@0", padding: "pad12@4" } },
  kvmi_vm_control_events: {
    size: 8,
    fields: { event_id: "u16@0", enable: "u8@2", padding1: "pad1@3", padding2: "pad4@4" },
  },
  kvmi_vm_read_physical: {
    size: 16,
    fields: { gpa: "u64@0", size: "u16@8", padding1: "pad2@10", padding2: "pad4@12" },
  },
  kvmi_vm_write_physical: {
    size: 16,
    fields: { gpa: "u64@0", size: "u16@8", padding1: "pad2@10", padding2: "pad4@12" },
  },
  kvmi_vcpu_get_info_reply: { size: 8, fields: { tsc_speed: "u64@0" } },
  kvmi_vcpu_pause: {
    size: 8,
    fields: { wait: "u8@0", padding1: "pad1@1", padding2: "pad2@2", padding3: "pad4@4" },
  },
  kvmi_vcpu_control_events: {
    size: 8,
    fields: { event_id: "u16@0", enable: "u8@2", padding1: "pad1@3", padding2: "pad4@4" },
  },
  kvmi_vcpu_get_registers: { size: 8, fields: { nmsrs: "u16@0", padding1: "pad2@2", padding2: "pad4@4" } },
  kvmi_vcpu_get_registers_reply: {
    size: 472,
    fields: {
      mode: "u32@0",
      padding: "pad4@4",
      regs: "=kvm_regs@8",
      sregs: "=kvm_sregs@152",
      msrs: "=kvm_msrs@464",
    },
  },
  kvmi_vcpu_get_cpuid: { size: 8, fields: { function: "u32@0", index: "u32@4" } },
  kvmi_vcpu_get_cpuid_reply: { size: 16, fields: { eax: "u32@0", ebx: "u32@4", ecx: "u32@8", edx: "u32@12" } },
  kvmi_vm_control_cleanup: {
    size: 8,
    fields: { enable: "u8@0", padding1: "pad1@1", padding2: "pad2@2", padding3: "pad4@4" },
  },
  kvmi_vcpu_control_cr: {
    size: 8,
    fields: { cr: "u8@0", enable: "u8@1", padding1: "pad2@2", padding2: "pad4@4" },
  },
  kvmi_vcpu_inject_exception: {
    size: 16,
    fields: { nr: "u8@0", padding1: "pad1@1", padding2: "pad2@2", error_code: "u32@4", address: "u64@8" },
  },
  kvmi_vm_get_max_gfn_reply: { size: 8, fields: { gfn: "u64@0" } },
  kvmi_vcpu_get_xcr: { size: 8, fields: { xcr: "u8@0", padding: "pad7@1" } },
  kvmi_vcpu_get_xcr_reply: { size: 8, fields: { value: "u64@0" } },
  kvmi_vcpu_get_mtrr_type: { size: 8, fields: { gpa: "u64@0" } },
  kvmi_vcpu_get_mtrr_type_reply: { size: 8, fields: { type: "u8@0", padding: "pad7@1" } },
  kvmi_vcpu_control_msr: {
    size: 8,
    fields: { enable: "u8@0", padding1: "pad1@1", padding2: "pad2@2", msr: "u32@4" },
  },
  kvmi_page_access_entry: {
    size: 16,
    fields: { gpa: "u64@0", access: "u8@8", visible: "u8@9", padding1: "pad2@10", padding2: "pad4@12" },
  },
  kvmi_vm_set_page_access: { size: 8, fields: { count: "u16@0", padding1: "pad2@2", padding2: "pad4@4" } },
  kvmi_vcpu_control_singlestep: { size: 8, fields: { enable: "u8@0", padding: "pad7@1" } },
  kvmi_vcpu_translate_gva: { size: 8, fields: { gva: "u64@0" } },
  kvmi_vcpu_translate_gva_reply: { size: 8, fields: { gpa: "u64@0" } },

  // §3.3, §3.4, §5
  kvmi_event: {
    size: 544,
    fields: { size: "u16@0", vcpu: "u16@2", event: "u8@4", padding: "pad3@5", arch: "=kvmi_event_arch@8" },
  },
  kvmi_event_reply: {
    size: 8,
    fields: { action: "u8@0", event: "u8@1", padding1: "pad2@2", padding2: "pad4@4" },
  },
  kvmi_event_breakpoint: { size: 16, fields: { gpa: "u64@0", insn_len: "u8@8", padding: "pad7@9" } },
  kvmi_event_cr: {
    size: 24,
    fields: { cr: "u8@0", padding: "pad7@1", old_value: "u64@8", new_value: "u64@16" },
  },
  kvmi_event_cr_reply: { size: 8, fields: { new_val: "u64@0" } },
  kvmi_event_trap: {
    size: 16,
    fields: { nr: "u8@0", padding1: "pad1@1", padding2: "pad2@2", error_code: "u32@4", address: "u64@8" },
  },
  kvmi_event_xsetbv: {
    size: 24,
    fields: { xcr: "u8@0", padding: "pad7@1", old_value: "u64@8", new_value: "u64@16" },
  },
  kvmi_event_descriptor: { size: 8, fields: { descriptor: "u8@0", write: "u8@1", padding: "pad6@2" } },
  kvmi_event_msr: {
    size: 24,
    fields: { msr: "u32@0", padding: "pad4@4", old_value: "u64@8", new_value: "u64@16" },
  },
  kvmi_event_msr_reply: { size: 8, fields: { new_val: "u64@0" } },
  kvmi_event_pf: {
    size: 24,
    fields: {
      gva: "u64@0",
      gpa: "u64@8",
      access: "u8@16",
      padding1: "pad1@17",
      padding2: "pad2@18",
      padding3: "pad4@20",
    },
  },
  kvmi_event_singlestep: { size: 8, fields: { failed: "u8@0", padding: "pad7@1" } },

  // §2.3
  qemu_vmi_to_introspector: {
    size: 96,
    fields: {
      struct_size: "u32@0",
      uuid: "bytes16@4",
      padding: "reserved4@20",
      start_time: "s64@24",
      name: "bytes64@32",
    },
  },
  qemu_vmi_to_introspector_max_gpa: {
    size: 104,
    fields: {
      struct_size: "u32@0",
      uuid: "bytes16@4",
      padding: "reserved4@20",
      start_time: "s64@24",
      name: "bytes64@32",
      max_gpa: "u64@96",
    },
  },
  qemu_vmi_arch: { size: 8, fields: { e820_count: "u8@0", padding: "reserved7@1" } },
  qemu_vmi_e820_entry: {
    size: 24,
    fields: { address: "u64@0", length: "u64@8", type: "u32@16", padding: "reserved4@20" },
  },
  qemu_vmi_to_introspector_e820: {
    size: 104,
    fields: {
      struct_size: "u32@0",
      uuid: "bytes16@4",
      cpu_type: "u8@20",
      padding: "reserved3@21",
      start_time: "s64@24",
      name: "bytes64@32",
      arch: "=qemu_vmi_arch@96",
    },
  },
  qemu_vmi_from_introspector: { size: 24, fields: { struct_size: "u32@0", cookie_hash: "bytes20@4" } },

  // §2.4
  kvm_introspection_hook: { size: 24, fields: { fd: "s32@0", padding: "pad4@4", uuid: "bytes16@8" } },
  kvm_introspection_feature: { size: 8, fields: { allow: "u32@0", id: "s32@4" } },
};

describe("v9 layouts match kvmi-abi", () => {
  it("V9_LAYOUTS holds exactly the structs of the sheet", () => {
    expect(Object.keys(V9_LAYOUTS).sort()).toEqual(Object.keys(EXPECTED).sort());
  });

  it.each(Object.entries(EXPECTED))("%s: size and every field", (name, expected) => {
    const layout = V9_LAYOUTS[name];
    expect(layout, `missing ${name}`).toBeDefined();
    expect(layout!.name).toBe(name);
    expect(describeLayout(layout!)).toEqual(expected);
  });

  // kvmi-abi §6 "Absolute offsets inside kvmi_event".
  it.each([
    ["arch.mode", 8],
    ["arch.regs", 16],
    ["arch.regs.rax", 16],
    ["arch.regs.rip", 144],
    ["arch.regs.rflags", 152],
    ["arch.sregs", 160],
    ["arch.sregs.cs", 160],
    ["arch.sregs.ds", 184],
    ["arch.sregs.es", 208],
    ["arch.sregs.fs", 232],
    ["arch.sregs.gs", 256],
    ["arch.sregs.ss", 280],
    ["arch.sregs.tr", 304],
    ["arch.sregs.ldt", 328],
    ["arch.sregs.gdt", 352],
    ["arch.sregs.idt", 368],
    ["arch.sregs.cr0", 384],
    ["arch.sregs.cr2", 392],
    ["arch.sregs.cr3", 400],
    ["arch.sregs.cr4", 408],
    ["arch.sregs.cr8", 416],
    ["arch.sregs.efer", 424],
    ["arch.sregs.apic_base", 432],
    ["arch.sregs.interrupt_bitmap", 440],
    ["arch.msrs", 472],
    ["arch.msrs.sysenter_cs", 472],
    ["arch.msrs.sysenter_esp", 480],
    ["arch.msrs.sysenter_eip", 488],
    ["arch.msrs.efer", 496],
    ["arch.msrs.star", 504],
    ["arch.msrs.lstar", 512],
    ["arch.msrs.cstar", 520],
    ["arch.msrs.pat", 528],
    ["arch.msrs.shadow_gs", 536],
  ])("kvmi_event.%s @%i", (path, offset) => {
    expect(absoluteOffset(V9_LAYOUTS.kvmi_event!, path)).toBe(offset);
  });

  // kvmi-abi §6 table of kvmi_event_arch: msrs are listed at offsets inside the arch struct.
  it.each([
    ["msrs.sysenter_cs", 464],
    ["msrs.sysenter_esp", 472],
    ["msrs.sysenter_eip", 480],
    ["msrs.efer", 488],
    ["msrs.star", 496],
    ["msrs.lstar", 504],
    ["msrs.cstar", 512],
    ["msrs.pat", 520],
    ["msrs.shadow_gs", 528],
  ])("kvmi_event_arch.%s @%i", (path, offset) => {
    expect(absoluteOffset(V9_LAYOUTS.kvmi_event_arch!, path)).toBe(offset);
  });

  // kvmi-abi §4 id 11: the reply's kvm_msrs header is @464 and the entries start @472.
  it("kvmi_vcpu_get_registers_reply: msrs.nmsrs @464, entries right after the fixed 472 bytes", () => {
    const reply = V9_LAYOUTS.kvmi_vcpu_get_registers_reply!;
    expect(absoluteOffset(reply, "msrs.nmsrs")).toBe(464);
    expect(absoluteOffset(reply, "regs.rip")).toBe(136);
    expect(absoluteOffset(reply, "sregs.cr3")).toBe(392);
    expect(reply.size).toBe(472);
  });

  // kvmi-abi §2.3: `arch.e820_count` @96 and the entries from @104.
  it("qemu_vmi_to_introspector_e820: arch.e820_count @96, fixed part 104", () => {
    const e820 = V9_LAYOUTS.qemu_vmi_to_introspector_e820!;
    expect(absoluteOffset(e820, "arch.e820_count")).toBe(96);
    expect(e820.size).toBe(104);
  });

  // kvmi-abi §2.3: `struct_size = 104 + 24 * n`, at most 8 entries.
  it("qemu_vmi_to_introspector_e820 body: e820 entries counted by arch.e820_count, at most 8", () => {
    const { layout, tail } = qemuVmiToIntrospectorE820Body;
    expect(tail.countField).toBe("arch.e820_count");
    expect(tail.maxCount).toBe(8);
    expect(tail.element.name).toBe("qemu_vmi_e820_entry");
    expect(layout.size + tail.element.size * 3).toBe(104 + 24 * 3);
  });
});
