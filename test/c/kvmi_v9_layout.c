// SPDX-License-Identifier: Apache-2.0
/*
 * Our own copy of the KVMI v9 uapi structs (include/uapi/linux/kvmi.h, arch/x86/include/uapi/asm/kvmi.h,
 * the KVM register structs of arch/x86/include/uapi/asm/kvm.h, the introspection ioctl arguments of
 * include/uapi/linux/kvm.h) and of QEMU's handshake structs (include/sysemu/vmi-handshake.h), written
 * from /work/shared/kvmi-abi.md §2.3, §2.4, §3, §4, §5 and §6. No kernel header is included: the point
 * is an independent second opinion on the TypeScript layout tables (conventions §7 item 3), so
 * gcc's natural x86_64 alignment decides every offset here, not a number copied from our tables.
 *
 * main() prints JSON to stdout:
 *   { "<struct>": { "size": N,
 *                   "fields": { "<field>": {"offset": O, "size": S, "signed": B}, "<member>.<field>": {...}, ... },
 *                   "tails":  { "<flexible member>": {"offset": O, "elementSize": E} } }, ... }
 * Nested members are listed both as a whole ("arch") and flattened with dotted names
 * ("arch.regs.rip"), using offsetof on the nested member designator. Arrays are reported under their
 * base name with the size of the whole array. Zero-length (flexible) array members, which the
 * TypeScript tables model as message tails, are listed under "tails" instead of "fields".
 *
 * Build: gcc -std=gnu11 -Wall -Wextra -Werror -o kvmi_v9_layout kvmi_v9_layout.c
 * (used by test/contract/abi-layout.test.ts).
 */
#include "layout_json.h"

/* §6: arch/x86/include/uapi/asm/kvmi.h. The MSR block is anonymous in C, as in the kernel. */
struct kvmi_event_arch {
	__u8 mode;
	__u8 padding[7];
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	struct {
		__u64 sysenter_cs;
		__u64 sysenter_esp;
		__u64 sysenter_eip;
		__u64 efer;
		__u64 star;
		__u64 lstar;
		__u64 cstar;
		__u64 pat;
		__u64 shadow_gs;
	} msrs;
};
/* Our tables call the anonymous block kvmi_event_arch_msrs; C reaches its type through typeof. */
typedef __typeof__(((struct kvmi_event_arch *)0)->msrs) kvmi_event_arch_msrs_t;

/* §3.3 */
struct kvmi_event {
	__u16 size;
	__u16 vcpu;
	__u8 event;
	__u8 padding[3];
	struct kvmi_event_arch arch;
};

/* §3.4 */
struct kvmi_event_reply {
	__u8 action;
	__u8 event;
	__u16 padding1;
	__u32 padding2;
};

/* ---------------------------------------------------------------------------------------------
 * §4: command request and reply structs, by kernel name */

struct kvmi_features { /* id 1 */
	__u8 singlestep;
	__u8 padding[7];
};

struct kvmi_get_version_reply { /* id 1 */
	__u32 version;
	__u32 padding;
	struct kvmi_features features;
};

struct kvmi_vm_check_command { /* id 2 */
	__u16 id;
	__u16 padding1;
	__u32 padding2;
};

struct kvmi_vm_check_event { /* id 3 */
	__u16 id;
	__u16 padding1;
	__u32 padding2;
};

struct kvmi_vm_get_info_reply { /* id 4 */
	__u32 vcpu_count;
	__u32 padding[3];
};

struct kvmi_vm_control_events { /* id 5 */
	__u16 event_id;
	__u8 enable;
	__u8 padding1;
	__u32 padding2;
};

struct kvmi_vm_read_physical { /* id 6 */
	__u64 gpa;
	__u16 size;
	__u16 padding1;
	__u32 padding2;
};

struct kvmi_vm_write_physical { /* id 7 */
	__u64 gpa;
	__u16 size;
	__u16 padding1;
	__u32 padding2;
	__u8 data[0];
};

struct kvmi_vcpu_get_info_reply { /* id 8 */
	__u64 tsc_speed;
};

struct kvmi_vcpu_pause { /* id 9 */
	__u8 wait;
	__u8 padding1;
	__u16 padding2;
	__u32 padding3;
};

struct kvmi_vcpu_control_events { /* id 10 */
	__u16 event_id;
	__u8 enable;
	__u8 padding1;
	__u32 padding2;
};

struct kvmi_vcpu_get_registers { /* id 11 */
	__u16 nmsrs;
	__u16 padding1;
	__u32 padding2;
	__u32 msrs_idx[0];
};

struct kvmi_vcpu_get_registers_reply { /* id 11 */
	__u32 mode;
	__u32 padding;
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	struct kvm_msrs msrs; /* entries[nmsrs] follow */
};

struct kvmi_vcpu_get_cpuid { /* id 13: no padding */
	__u32 function;
	__u32 index;
};

struct kvmi_vcpu_get_cpuid_reply { /* id 13 */
	__u32 eax;
	__u32 ebx;
	__u32 ecx;
	__u32 edx;
};

struct kvmi_vm_control_cleanup { /* id 14 */
	__u8 enable;
	__u8 padding1;
	__u16 padding2;
	__u32 padding3;
};

struct kvmi_vcpu_control_cr { /* id 15 */
	__u8 cr;
	__u8 enable;
	__u16 padding1;
	__u32 padding2;
};

struct kvmi_vcpu_inject_exception { /* id 16 */
	__u8 nr;
	__u8 padding1;
	__u16 padding2;
	__u32 error_code;
	__u64 address;
};

struct kvmi_vm_get_max_gfn_reply { /* id 17 */
	__u64 gfn;
};

struct kvmi_vcpu_get_xcr { /* id 18 */
	__u8 xcr;
	__u8 padding[7];
};

struct kvmi_vcpu_get_xcr_reply { /* id 18 (v9 writes `u64`) */
	__u64 value;
};

struct kvmi_vcpu_get_mtrr_type { /* id 21: no padding */
	__u64 gpa;
};

struct kvmi_vcpu_get_mtrr_type_reply { /* id 21 */
	__u8 type;
	__u8 padding[7];
};

struct kvmi_vcpu_control_msr { /* id 22 */
	__u8 enable;
	__u8 padding1;
	__u16 padding2;
	__u32 msr;
};

struct kvmi_page_access_entry { /* id 23 */
	__u64 gpa;
	__u8 access;
	__u8 visible;
	__u16 padding1;
	__u32 padding2;
};

struct kvmi_vm_set_page_access { /* id 23 */
	__u16 count;
	__u16 padding1;
	__u32 padding2;
	struct kvmi_page_access_entry entries[0];
};

struct kvmi_vcpu_control_singlestep { /* id 24 */
	__u8 enable;
	__u8 padding[7];
};

struct kvmi_vcpu_translate_gva { /* id 25 */
	__u64 gva;
};

struct kvmi_vcpu_translate_gva_reply { /* id 25 */
	__u64 gpa;
};

/* ---------------------------------------------------------------------------------------------
 * §5: event payloads and event reply data */

struct kvmi_event_breakpoint { /* 3 */
	__u64 gpa;
	__u8 insn_len;
	__u8 padding[7];
};

struct kvmi_event_cr { /* 4 */
	__u8 cr;
	__u8 padding[7];
	__u64 old_value;
	__u64 new_value;
};

struct kvmi_event_cr_reply { /* 4 */
	__u64 new_val;
};

struct kvmi_event_trap { /* 5 */
	__u8 nr;
	__u8 padding1;
	__u16 padding2;
	__u32 error_code;
	__u64 address;
};

struct kvmi_event_xsetbv { /* 6 */
	__u8 xcr;
	__u8 padding[7];
	__u64 old_value;
	__u64 new_value;
};

struct kvmi_event_descriptor { /* 7 */
	__u8 descriptor;
	__u8 write;
	__u8 padding[6];
};

struct kvmi_event_msr { /* 8 */
	__u32 msr;
	__u32 padding;
	__u64 old_value;
	__u64 new_value;
};

struct kvmi_event_msr_reply { /* 8 */
	__u64 new_val;
};

struct kvmi_event_pf { /* 9 */
	__u64 gva;
	__u64 gpa;
	__u8 access;
	__u8 padding1;
	__u16 padding2;
	__u32 padding3;
};

struct kvmi_event_singlestep { /* 10 */
	__u8 failed;
	__u8 padding[7];
};

/* ---------------------------------------------------------------------------------------------
 * §2.4: VM ioctl arguments (include/uapi/linux/kvm.h) */

struct kvm_introspection_hook {
	__s32 fd;
	__u32 padding;
	__u8 uuid[16];
};

struct kvm_introspection_feature {
	__u32 allow;
	__s32 id;
};

/* ---------------------------------------------------------------------------------------------
 * §2.3: QEMU handshake. C names all three "to introspector" variants qemu_vmi_to_introspector; ours
 * carry suffixes so that they fit one table. */

struct qemu_vmi_to_introspector { /* base, 96 */
	__u32 struct_size;
	__u8 uuid[16];
	__u32 padding;
	__s64 start_time;
	char name[64];
};

struct qemu_vmi_to_introspector_max_gpa { /* kvmi-v12, 104 */
	__u32 struct_size;
	__u8 uuid[16];
	__u32 padding;
	__s64 start_time;
	char name[64];
	__u64 max_gpa;
};

struct qemu_vmi_e820_entry {
	__u64 address;
	__u64 length;
	__u32 type;
	__u32 padding;
};

/*
 * QEMU declares `u8 e820_count; u8 padding[3]; struct qemu_vmi_e820_entry e820_entries[0];` and the
 * 8-byte alignment of the entries adds a hidden 4-byte hole (§2.3: "3 explicit bytes plus 4 alignment
 * bytes"). Our tables cover every byte, so this copy spells the hole out as padding[7];
 * qemu_vmi_arch_as_qemu below proves both spellings put the entries at the same offset.
 */
struct qemu_vmi_arch {
	__u8 e820_count;
	__u8 padding[7];
	struct qemu_vmi_e820_entry e820_entries[0];
};

struct qemu_vmi_arch_as_qemu {
	__u8 e820_count;
	__u8 padding[3];
	struct qemu_vmi_e820_entry e820_entries[0];
};

struct qemu_vmi_to_introspector_e820 { /* April 2020 RFC / kvmi-v7-2.11.93, 104 + 24 n */
	__u32 struct_size;
	__u8 uuid[16];
	__u8 cpu_type;
	__u8 padding[3];
	__s64 start_time;
	char name[64];
	struct qemu_vmi_arch arch; /* arch.e820_entries[arch.e820_count] follow */
};

struct qemu_vmi_from_introspector { /* tool -> QEMU, 24 */
	__u32 struct_size;
	__u8 cookie_hash[20];
};

/* ---------------------------------------------------------------------------------------------
 * Headline numbers of the fact sheet: a wrong declaration above fails the build. */

#define SA(cond) _Static_assert(cond, #cond)
SA(sizeof(struct kvmi_msg_hdr) == 8);
SA(sizeof(struct kvmi_error_code) == 8);
SA(sizeof(struct kvmi_vcpu_hdr) == 8);
SA(sizeof(struct kvm_regs) == 144);
SA(sizeof(struct kvm_segment) == 24);
SA(sizeof(struct kvm_dtable) == 16);
SA(sizeof(struct kvm_sregs) == 312);
SA(offsetof(struct kvm_sregs, gdt) == 192);
SA(offsetof(struct kvm_sregs, cr0) == 224);
SA(offsetof(struct kvm_sregs, interrupt_bitmap) == 280);
SA(sizeof(struct kvm_msr_entry) == 16);
SA(sizeof(struct kvm_msrs) == 8);
SA(sizeof(struct kvm_xsave) == 4096);
SA(sizeof(kvmi_event_arch_msrs_t) == 72);
SA(sizeof(struct kvmi_event_arch) == 536);
SA(offsetof(struct kvmi_event_arch, msrs) == 464);
SA(sizeof(struct kvmi_event) == 544);
SA(offsetof(struct kvmi_event, arch.regs.rip) == 144);
SA(offsetof(struct kvmi_event, arch.sregs.cr3) == 400);
SA(offsetof(struct kvmi_event, arch.sregs.interrupt_bitmap) == 440);
SA(offsetof(struct kvmi_event, arch.msrs.shadow_gs) == 536);
SA(sizeof(struct kvmi_event_reply) == 8);
SA(sizeof(struct kvmi_get_version_reply) == 16);
SA(sizeof(struct kvmi_vm_get_info_reply) == 16);
SA(sizeof(struct kvmi_vm_read_physical) == 16);
SA(sizeof(struct kvmi_vm_write_physical) == 16);
SA(offsetof(struct kvmi_vm_write_physical, data) == 16);
SA(sizeof(struct kvmi_vcpu_get_registers) == 8);
SA(offsetof(struct kvmi_vcpu_get_registers, msrs_idx) == 8);
SA(sizeof(struct kvmi_vcpu_get_registers_reply) == 472);
SA(offsetof(struct kvmi_vcpu_get_registers_reply, sregs) == 152);
SA(offsetof(struct kvmi_vcpu_get_registers_reply, msrs) == 464);
SA(offsetof(struct kvmi_vcpu_get_registers_reply, msrs.entries) == 472);
SA(sizeof(struct kvmi_vcpu_inject_exception) == 16);
SA(sizeof(struct kvmi_page_access_entry) == 16);
SA(sizeof(struct kvmi_vm_set_page_access) == 8);
SA(sizeof(struct kvmi_event_cr) == 24);
SA(sizeof(struct kvmi_event_msr) == 24);
SA(sizeof(struct kvmi_event_xsetbv) == 24);
SA(sizeof(struct kvmi_event_pf) == 24);
SA(sizeof(struct kvmi_event_trap) == 16);
SA(sizeof(struct kvmi_event_breakpoint) == 16);
SA(sizeof(struct kvmi_event_descriptor) == 8);
SA(sizeof(struct kvmi_event_singlestep) == 8);
SA(sizeof(struct kvm_introspection_hook) == 24);
SA(sizeof(struct kvm_introspection_feature) == 8);
SA(sizeof(struct qemu_vmi_to_introspector) == 96);
SA(offsetof(struct qemu_vmi_to_introspector, name) == 32);
SA(sizeof(struct qemu_vmi_to_introspector_max_gpa) == 104);
SA(sizeof(struct qemu_vmi_e820_entry) == 24);
SA(sizeof(struct qemu_vmi_arch) == 8);
SA(offsetof(struct qemu_vmi_arch, e820_entries) == offsetof(struct qemu_vmi_arch_as_qemu, e820_entries));
SA(sizeof(struct qemu_vmi_arch) == sizeof(struct qemu_vmi_arch_as_qemu));
SA(sizeof(struct qemu_vmi_to_introspector_e820) == 104);
SA(offsetof(struct qemu_vmi_to_introspector_e820, cpu_type) == 20);
SA(offsetof(struct qemu_vmi_to_introspector_e820, arch.e820_entries) == 104);
SA(sizeof(struct qemu_vmi_from_introspector) == 24);


int main(void)
{
	/* §3 framing */
	S1(struct kvmi_msg_hdr, "kvmi_msg_hdr",
	   F(struct kvmi_msg_hdr, , id); F(struct kvmi_msg_hdr, , size); F(struct kvmi_msg_hdr, , seq));
	S1(struct kvmi_error_code, "kvmi_error_code",
	   F(struct kvmi_error_code, , err); F(struct kvmi_error_code, , padding));
	S1(struct kvmi_vcpu_hdr, "kvmi_vcpu_hdr",
	   F(struct kvmi_vcpu_hdr, , vcpu); F(struct kvmi_vcpu_hdr, , padding1); F(struct kvmi_vcpu_hdr, , padding2));

	/* §6 x86 */
	S1(struct kvm_regs, "kvm_regs", KVM_REGS(struct kvm_regs, ));
	S1(struct kvm_segment, "kvm_segment", KVM_SEGMENT(struct kvm_segment, ));
	S1(struct kvm_dtable, "kvm_dtable", KVM_DTABLE(struct kvm_dtable, ));
	S1(struct kvm_sregs, "kvm_sregs", KVM_SREGS(struct kvm_sregs, ));
	S1(struct kvm_msr_entry, "kvm_msr_entry",
	   F(struct kvm_msr_entry, , index); F(struct kvm_msr_entry, , reserved); F(struct kvm_msr_entry, , data));
	begin_struct("kvm_msrs", sizeof(struct kvm_msrs));
	KVM_MSRS(struct kvm_msrs, );
	begin_tails();
	TAIL(struct kvm_msrs, , entries);
	end_struct();
	S1(struct kvm_xsave, "kvm_xsave", F(struct kvm_xsave, , region));
	S1(kvmi_event_arch_msrs_t, "kvmi_event_arch_msrs", KVMI_EVENT_ARCH_MSRS(kvmi_event_arch_msrs_t, ));
	S1(struct kvmi_event_arch, "kvmi_event_arch", KVMI_EVENT_ARCH(struct kvmi_event_arch, ));

	/* §3.3, §3.4 */
	S1(struct kvmi_event, "kvmi_event",
	   F(struct kvmi_event, , size); F(struct kvmi_event, , vcpu); F(struct kvmi_event, , event);
	   F(struct kvmi_event, , padding); F(struct kvmi_event, , arch);
	   KVMI_EVENT_ARCH(struct kvmi_event, arch.));
	S1(struct kvmi_event_reply, "kvmi_event_reply",
	   F(struct kvmi_event_reply, , action); F(struct kvmi_event_reply, , event);
	   F(struct kvmi_event_reply, , padding1); F(struct kvmi_event_reply, , padding2));

	/* §4 commands */
	S1(struct kvmi_features, "kvmi_features",
	   F(struct kvmi_features, , singlestep); F(struct kvmi_features, , padding));
	S1(struct kvmi_get_version_reply, "kvmi_get_version_reply",
	   F(struct kvmi_get_version_reply, , version); F(struct kvmi_get_version_reply, , padding);
	   F(struct kvmi_get_version_reply, , features);
	   F(struct kvmi_get_version_reply, features., singlestep);
	   F(struct kvmi_get_version_reply, features., padding));
	S1(struct kvmi_vm_check_command, "kvmi_vm_check_command",
	   F(struct kvmi_vm_check_command, , id); F(struct kvmi_vm_check_command, , padding1);
	   F(struct kvmi_vm_check_command, , padding2));
	S1(struct kvmi_vm_check_event, "kvmi_vm_check_event",
	   F(struct kvmi_vm_check_event, , id); F(struct kvmi_vm_check_event, , padding1);
	   F(struct kvmi_vm_check_event, , padding2));
	S1(struct kvmi_vm_get_info_reply, "kvmi_vm_get_info_reply",
	   F(struct kvmi_vm_get_info_reply, , vcpu_count); F(struct kvmi_vm_get_info_reply, , padding));
	S1(struct kvmi_vm_control_events, "kvmi_vm_control_events",
	   F(struct kvmi_vm_control_events, , event_id); F(struct kvmi_vm_control_events, , enable);
	   F(struct kvmi_vm_control_events, , padding1); F(struct kvmi_vm_control_events, , padding2));
	S1(struct kvmi_vm_read_physical, "kvmi_vm_read_physical",
	   F(struct kvmi_vm_read_physical, , gpa); F(struct kvmi_vm_read_physical, , size);
	   F(struct kvmi_vm_read_physical, , padding1); F(struct kvmi_vm_read_physical, , padding2));
	begin_struct("kvmi_vm_write_physical", sizeof(struct kvmi_vm_write_physical));
	F(struct kvmi_vm_write_physical, , gpa); F(struct kvmi_vm_write_physical, , size);
	F(struct kvmi_vm_write_physical, , padding1); F(struct kvmi_vm_write_physical, , padding2);
	begin_tails();
	TAIL(struct kvmi_vm_write_physical, , data);
	end_struct();
	S1(struct kvmi_vcpu_get_info_reply, "kvmi_vcpu_get_info_reply", F(struct kvmi_vcpu_get_info_reply, , tsc_speed));
	S1(struct kvmi_vcpu_pause, "kvmi_vcpu_pause",
	   F(struct kvmi_vcpu_pause, , wait); F(struct kvmi_vcpu_pause, , padding1);
	   F(struct kvmi_vcpu_pause, , padding2); F(struct kvmi_vcpu_pause, , padding3));
	S1(struct kvmi_vcpu_control_events, "kvmi_vcpu_control_events",
	   F(struct kvmi_vcpu_control_events, , event_id); F(struct kvmi_vcpu_control_events, , enable);
	   F(struct kvmi_vcpu_control_events, , padding1); F(struct kvmi_vcpu_control_events, , padding2));
	begin_struct("kvmi_vcpu_get_registers", sizeof(struct kvmi_vcpu_get_registers));
	F(struct kvmi_vcpu_get_registers, , nmsrs); F(struct kvmi_vcpu_get_registers, , padding1);
	F(struct kvmi_vcpu_get_registers, , padding2);
	begin_tails();
	TAIL(struct kvmi_vcpu_get_registers, , msrs_idx);
	end_struct();
	begin_struct("kvmi_vcpu_get_registers_reply", sizeof(struct kvmi_vcpu_get_registers_reply));
	F(struct kvmi_vcpu_get_registers_reply, , mode); F(struct kvmi_vcpu_get_registers_reply, , padding);
	F(struct kvmi_vcpu_get_registers_reply, , regs); KVM_REGS(struct kvmi_vcpu_get_registers_reply, regs.);
	F(struct kvmi_vcpu_get_registers_reply, , sregs); KVM_SREGS(struct kvmi_vcpu_get_registers_reply, sregs.);
	F(struct kvmi_vcpu_get_registers_reply, , msrs); KVM_MSRS(struct kvmi_vcpu_get_registers_reply, msrs.);
	begin_tails();
	TAIL(struct kvmi_vcpu_get_registers_reply, msrs., entries);
	end_struct();
	S1(struct kvmi_vcpu_get_cpuid, "kvmi_vcpu_get_cpuid",
	   F(struct kvmi_vcpu_get_cpuid, , function); F(struct kvmi_vcpu_get_cpuid, , index));
	S1(struct kvmi_vcpu_get_cpuid_reply, "kvmi_vcpu_get_cpuid_reply",
	   F(struct kvmi_vcpu_get_cpuid_reply, , eax); F(struct kvmi_vcpu_get_cpuid_reply, , ebx);
	   F(struct kvmi_vcpu_get_cpuid_reply, , ecx); F(struct kvmi_vcpu_get_cpuid_reply, , edx));
	S1(struct kvmi_vm_control_cleanup, "kvmi_vm_control_cleanup",
	   F(struct kvmi_vm_control_cleanup, , enable); F(struct kvmi_vm_control_cleanup, , padding1);
	   F(struct kvmi_vm_control_cleanup, , padding2); F(struct kvmi_vm_control_cleanup, , padding3));
	S1(struct kvmi_vcpu_control_cr, "kvmi_vcpu_control_cr",
	   F(struct kvmi_vcpu_control_cr, , cr); F(struct kvmi_vcpu_control_cr, , enable);
	   F(struct kvmi_vcpu_control_cr, , padding1); F(struct kvmi_vcpu_control_cr, , padding2));
	S1(struct kvmi_vcpu_inject_exception, "kvmi_vcpu_inject_exception",
	   F(struct kvmi_vcpu_inject_exception, , nr); F(struct kvmi_vcpu_inject_exception, , padding1);
	   F(struct kvmi_vcpu_inject_exception, , padding2); F(struct kvmi_vcpu_inject_exception, , error_code);
	   F(struct kvmi_vcpu_inject_exception, , address));
	S1(struct kvmi_vm_get_max_gfn_reply, "kvmi_vm_get_max_gfn_reply", F(struct kvmi_vm_get_max_gfn_reply, , gfn));
	S1(struct kvmi_vcpu_get_xcr, "kvmi_vcpu_get_xcr",
	   F(struct kvmi_vcpu_get_xcr, , xcr); F(struct kvmi_vcpu_get_xcr, , padding));
	S1(struct kvmi_vcpu_get_xcr_reply, "kvmi_vcpu_get_xcr_reply", F(struct kvmi_vcpu_get_xcr_reply, , value));
	S1(struct kvmi_vcpu_get_mtrr_type, "kvmi_vcpu_get_mtrr_type", F(struct kvmi_vcpu_get_mtrr_type, , gpa));
	S1(struct kvmi_vcpu_get_mtrr_type_reply, "kvmi_vcpu_get_mtrr_type_reply",
	   F(struct kvmi_vcpu_get_mtrr_type_reply, , type); F(struct kvmi_vcpu_get_mtrr_type_reply, , padding));
	S1(struct kvmi_vcpu_control_msr, "kvmi_vcpu_control_msr",
	   F(struct kvmi_vcpu_control_msr, , enable); F(struct kvmi_vcpu_control_msr, , padding1);
	   F(struct kvmi_vcpu_control_msr, , padding2); F(struct kvmi_vcpu_control_msr, , msr));
	S1(struct kvmi_page_access_entry, "kvmi_page_access_entry",
	   F(struct kvmi_page_access_entry, , gpa); F(struct kvmi_page_access_entry, , access);
	   F(struct kvmi_page_access_entry, , visible); F(struct kvmi_page_access_entry, , padding1);
	   F(struct kvmi_page_access_entry, , padding2));
	begin_struct("kvmi_vm_set_page_access", sizeof(struct kvmi_vm_set_page_access));
	F(struct kvmi_vm_set_page_access, , count); F(struct kvmi_vm_set_page_access, , padding1);
	F(struct kvmi_vm_set_page_access, , padding2);
	begin_tails();
	TAIL(struct kvmi_vm_set_page_access, , entries);
	end_struct();
	S1(struct kvmi_vcpu_control_singlestep, "kvmi_vcpu_control_singlestep",
	   F(struct kvmi_vcpu_control_singlestep, , enable); F(struct kvmi_vcpu_control_singlestep, , padding));
	S1(struct kvmi_vcpu_translate_gva, "kvmi_vcpu_translate_gva", F(struct kvmi_vcpu_translate_gva, , gva));
	S1(struct kvmi_vcpu_translate_gva_reply, "kvmi_vcpu_translate_gva_reply",
	   F(struct kvmi_vcpu_translate_gva_reply, , gpa));

	/* §5 events */
	S1(struct kvmi_event_breakpoint, "kvmi_event_breakpoint",
	   F(struct kvmi_event_breakpoint, , gpa); F(struct kvmi_event_breakpoint, , insn_len);
	   F(struct kvmi_event_breakpoint, , padding));
	S1(struct kvmi_event_cr, "kvmi_event_cr",
	   F(struct kvmi_event_cr, , cr); F(struct kvmi_event_cr, , padding);
	   F(struct kvmi_event_cr, , old_value); F(struct kvmi_event_cr, , new_value));
	S1(struct kvmi_event_cr_reply, "kvmi_event_cr_reply", F(struct kvmi_event_cr_reply, , new_val));
	S1(struct kvmi_event_trap, "kvmi_event_trap",
	   F(struct kvmi_event_trap, , nr); F(struct kvmi_event_trap, , padding1); F(struct kvmi_event_trap, , padding2);
	   F(struct kvmi_event_trap, , error_code); F(struct kvmi_event_trap, , address));
	S1(struct kvmi_event_xsetbv, "kvmi_event_xsetbv",
	   F(struct kvmi_event_xsetbv, , xcr); F(struct kvmi_event_xsetbv, , padding);
	   F(struct kvmi_event_xsetbv, , old_value); F(struct kvmi_event_xsetbv, , new_value));
	S1(struct kvmi_event_descriptor, "kvmi_event_descriptor",
	   F(struct kvmi_event_descriptor, , descriptor); F(struct kvmi_event_descriptor, , write);
	   F(struct kvmi_event_descriptor, , padding));
	S1(struct kvmi_event_msr, "kvmi_event_msr",
	   F(struct kvmi_event_msr, , msr); F(struct kvmi_event_msr, , padding);
	   F(struct kvmi_event_msr, , old_value); F(struct kvmi_event_msr, , new_value));
	S1(struct kvmi_event_msr_reply, "kvmi_event_msr_reply", F(struct kvmi_event_msr_reply, , new_val));
	S1(struct kvmi_event_pf, "kvmi_event_pf",
	   F(struct kvmi_event_pf, , gva); F(struct kvmi_event_pf, , gpa); F(struct kvmi_event_pf, , access);
	   F(struct kvmi_event_pf, , padding1); F(struct kvmi_event_pf, , padding2); F(struct kvmi_event_pf, , padding3));
	S1(struct kvmi_event_singlestep, "kvmi_event_singlestep",
	   F(struct kvmi_event_singlestep, , failed); F(struct kvmi_event_singlestep, , padding));

	/* §2.4 ioctls */
	S1(struct kvm_introspection_hook, "kvm_introspection_hook",
	   F(struct kvm_introspection_hook, , fd); F(struct kvm_introspection_hook, , padding);
	   F(struct kvm_introspection_hook, , uuid));
	S1(struct kvm_introspection_feature, "kvm_introspection_feature",
	   F(struct kvm_introspection_feature, , allow); F(struct kvm_introspection_feature, , id));

	/* §2.3 handshake */
	S1(struct qemu_vmi_to_introspector, "qemu_vmi_to_introspector",
	   F(struct qemu_vmi_to_introspector, , struct_size); F(struct qemu_vmi_to_introspector, , uuid);
	   F(struct qemu_vmi_to_introspector, , padding); F(struct qemu_vmi_to_introspector, , start_time);
	   F(struct qemu_vmi_to_introspector, , name));
	S1(struct qemu_vmi_to_introspector_max_gpa, "qemu_vmi_to_introspector_max_gpa",
	   F(struct qemu_vmi_to_introspector_max_gpa, , struct_size); F(struct qemu_vmi_to_introspector_max_gpa, , uuid);
	   F(struct qemu_vmi_to_introspector_max_gpa, , padding);
	   F(struct qemu_vmi_to_introspector_max_gpa, , start_time);
	   F(struct qemu_vmi_to_introspector_max_gpa, , name); F(struct qemu_vmi_to_introspector_max_gpa, , max_gpa));
	S1(struct qemu_vmi_e820_entry, "qemu_vmi_e820_entry",
	   F(struct qemu_vmi_e820_entry, , address); F(struct qemu_vmi_e820_entry, , length);
	   F(struct qemu_vmi_e820_entry, , type); F(struct qemu_vmi_e820_entry, , padding));
	begin_struct("qemu_vmi_arch", sizeof(struct qemu_vmi_arch));
	F(struct qemu_vmi_arch, , e820_count); F(struct qemu_vmi_arch, , padding);
	begin_tails();
	TAIL(struct qemu_vmi_arch, , e820_entries);
	end_struct();
	begin_struct("qemu_vmi_to_introspector_e820", sizeof(struct qemu_vmi_to_introspector_e820));
	F(struct qemu_vmi_to_introspector_e820, , struct_size); F(struct qemu_vmi_to_introspector_e820, , uuid);
	F(struct qemu_vmi_to_introspector_e820, , cpu_type); F(struct qemu_vmi_to_introspector_e820, , padding);
	F(struct qemu_vmi_to_introspector_e820, , start_time); F(struct qemu_vmi_to_introspector_e820, , name);
	F(struct qemu_vmi_to_introspector_e820, , arch);
	F(struct qemu_vmi_to_introspector_e820, arch., e820_count);
	F(struct qemu_vmi_to_introspector_e820, arch., padding);
	begin_tails();
	TAIL(struct qemu_vmi_to_introspector_e820, arch., e820_entries);
	end_struct();
	S1(struct qemu_vmi_from_introspector, "qemu_vmi_from_introspector",
	   F(struct qemu_vmi_from_introspector, , struct_size); F(struct qemu_vmi_from_introspector, , cookie_hash));

	printf("\n}\n");
	return 0;
}
