// SPDX-License-Identifier: Apache-2.0
/*
 * Our own copy of the KVMI v12 uapi structs, written from the ABI fact sheet (kvmi-abi §1.3 for what
 * v12 changed, §4-§6 for what it kept from v9) and docs/protocol/v12.md, with v12's C names
 * (kvmi_vm_*, kvmi_vcpu_*, kvmi_vcpu_event_*). gcc's natural x86_64 alignment decides every offset;
 * test/contract/abi-layout.test.ts compares the listing with V12_LAYOUTS field by field.
 *
 * Build: gcc -std=gnu11 -Wall -Wextra -Werror -o kvmi_v12_layout kvmi_v12_layout.c
 */
#include "layout_json.h"

struct kvmi_vcpu_event_arch {
	__u8 mode;
	__u8 padding[7];
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	struct {
		__u64 sysenter_cs, sysenter_esp, sysenter_eip, efer, star, lstar, cstar, pat, shadow_gs;
	} msrs;
};

/* §1.3 item 3: every event starts with kvmi_event_hdr; vCPU events continue with kvmi_vcpu_event. */
struct kvmi_event_hdr {
	__u16 event;
	__u16 padding[3];
};

struct kvmi_vcpu_event {
	__u16 size;
	__u16 vcpu;
	__u32 padding;
	struct kvmi_vcpu_event_arch arch;
};

struct kvmi_vcpu_event_reply {
	__u8 action;
	__u8 event;
	__u16 padding1;
	__u32 padding2;
};

struct kvmi_features {
	__u8 singlestep;
	__u8 padding[7];
};

/* §1.3 item 6 */
struct kvmi_get_version_reply {
	__u32 version;
	__u32 max_msg_size;
	struct kvmi_features features;
};

struct kvmi_vm_check_command {
	__u16 id;
	__u16 padding1;
	__u32 padding2;
};

struct kvmi_vm_check_event {
	__u16 id;
	__u16 padding1;
	__u32 padding2;
};

struct kvmi_vm_get_info_reply {
	__u32 vcpu_count;
	__u32 padding[3];
};

struct kvmi_vm_control_events {
	__u16 event_id;
	__u8 enable;
	__u8 padding1;
	__u32 padding2;
};

struct kvmi_vm_read_physical {
	__u64 gpa;
	__u16 size;
	__u16 padding1;
	__u32 padding2;
};

struct kvmi_vm_write_physical {
	__u64 gpa;
	__u16 size;
	__u16 padding1;
	__u32 padding2;
	__u8 data[0];
};

/* §1.3 item 5 */
struct kvmi_vm_pause_vcpu {
	__u16 vcpu;
	__u8 wait;
	__u8 padding1;
	__u32 padding2;
};

/* §1.3 item 8 */
struct kvmi_vm_control_cleanup {
	__u8 enable;
	__u8 padding[7];
};

/* §1.3 item 7 */
struct kvmi_page_access_entry {
	__u64 gpa;
	__u8 access;
	__u8 padding[7];
};

struct kvmi_vm_set_page_access {
	__u16 count;
	__u16 padding1;
	__u32 padding2;
	struct kvmi_page_access_entry entries[0];
};

struct kvmi_vcpu_get_info_reply {
	__u64 tsc_speed;
};

struct kvmi_vcpu_control_events {
	__u16 event_id;
	__u8 enable;
	__u8 padding1;
	__u32 padding2;
};

struct kvmi_vcpu_get_registers {
	__u16 nmsrs;
	__u16 padding1;
	__u32 padding2;
	__u32 msrs_idx[0];
};

struct kvmi_vcpu_get_registers_reply {
	__u32 mode;
	__u32 padding;
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	struct kvm_msrs msrs;
};

struct kvmi_vcpu_get_cpuid {
	__u32 function;
	__u32 index;
};

struct kvmi_vcpu_get_cpuid_reply {
	__u32 eax, ebx, ecx, edx;
};

struct kvmi_vcpu_control_cr {
	__u8 cr;
	__u8 enable;
	__u16 padding1;
	__u32 padding2;
};

struct kvmi_vcpu_inject_exception {
	__u8 nr;
	__u8 padding1;
	__u16 padding2;
	__u32 error_code;
	__u64 address;
};

struct kvmi_vcpu_get_xcr {
	__u8 xcr;
	__u8 padding[7];
};

struct kvmi_vcpu_get_xcr_reply {
	__u64 value;
};

struct kvmi_vcpu_get_mtrr_type {
	__u64 gpa;
};

struct kvmi_vcpu_get_mtrr_type_reply {
	__u8 type;
	__u8 padding[7];
};

struct kvmi_vcpu_control_msr {
	__u8 enable;
	__u8 padding1;
	__u16 padding2;
	__u32 msr;
};

struct kvmi_vcpu_control_singlestep {
	__u8 enable;
	__u8 padding[7];
};

struct kvmi_vcpu_translate_gva {
	__u64 gva;
};

struct kvmi_vcpu_translate_gva_reply {
	__u64 gpa;
};

/* §1.3 item 9: the vCPU event payloads keep v9's bytes under kvmi_vcpu_event_* names. */
struct kvmi_vcpu_event_breakpoint {
	__u64 gpa;
	__u8 insn_len;
	__u8 padding[7];
};

struct kvmi_vcpu_event_cr {
	__u8 cr;
	__u8 padding[7];
	__u64 old_value;
	__u64 new_value;
};

struct kvmi_vcpu_event_cr_reply {
	__u64 new_val;
};

struct kvmi_vcpu_event_trap {
	__u8 nr;
	__u8 padding1;
	__u16 padding2;
	__u32 error_code;
	__u64 address;
};

struct kvmi_vcpu_event_xsetbv {
	__u8 xcr;
	__u8 padding[7];
	__u64 old_value;
	__u64 new_value;
};

struct kvmi_vcpu_event_descriptor {
	__u8 descriptor;
	__u8 write;
	__u8 padding[6];
};

struct kvmi_vcpu_event_msr {
	__u32 msr;
	__u32 padding;
	__u64 old_value;
	__u64 new_value;
};

struct kvmi_vcpu_event_msr_reply {
	__u64 new_val;
};

struct kvmi_vcpu_event_pf {
	__u64 gva;
	__u64 gpa;
	__u8 access;
	__u8 padding1;
	__u16 padding2;
	__u32 padding3;
};

struct kvmi_vcpu_event_singlestep {
	__u8 failed;
	__u8 padding[7];
};

#define SA(cond) _Static_assert(cond, #cond)
SA(sizeof(struct kvmi_event_hdr) == 8);
SA(sizeof(struct kvmi_vcpu_event) == 544);
SA(offsetof(struct kvmi_vcpu_event, arch.regs.rip) == 144);
SA(sizeof(struct kvmi_get_version_reply) == 16);
SA(offsetof(struct kvmi_get_version_reply, max_msg_size) == 4);
SA(sizeof(struct kvmi_vm_pause_vcpu) == 8);
SA(sizeof(struct kvmi_page_access_entry) == 16);
SA(sizeof(struct kvmi_vm_control_cleanup) == 8);

#define V(T, M) F(struct T, , M)
#define S(T, ...) S1(struct T, #T, __VA_ARGS__)

int main(void)
{
	S(kvmi_msg_hdr, V(kvmi_msg_hdr, id); V(kvmi_msg_hdr, size); V(kvmi_msg_hdr, seq));
	S(kvmi_error_code, V(kvmi_error_code, err); V(kvmi_error_code, padding));
	S(kvmi_vcpu_hdr, V(kvmi_vcpu_hdr, vcpu); V(kvmi_vcpu_hdr, padding1); V(kvmi_vcpu_hdr, padding2));
	S(kvmi_features, V(kvmi_features, singlestep); V(kvmi_features, padding));
	S(kvmi_get_version_reply, V(kvmi_get_version_reply, version); V(kvmi_get_version_reply, max_msg_size);
	  V(kvmi_get_version_reply, features); F(struct kvmi_get_version_reply, features., singlestep);
	  F(struct kvmi_get_version_reply, features., padding));
	S(kvmi_vm_check_command, V(kvmi_vm_check_command, id); V(kvmi_vm_check_command, padding1);
	  V(kvmi_vm_check_command, padding2));
	S(kvmi_vm_check_event, V(kvmi_vm_check_event, id); V(kvmi_vm_check_event, padding1);
	  V(kvmi_vm_check_event, padding2));
	S(kvmi_vm_get_info_reply, V(kvmi_vm_get_info_reply, vcpu_count); V(kvmi_vm_get_info_reply, padding));
	S(kvmi_vm_control_events, V(kvmi_vm_control_events, event_id); V(kvmi_vm_control_events, enable);
	  V(kvmi_vm_control_events, padding1); V(kvmi_vm_control_events, padding2));
	S(kvmi_vm_read_physical, V(kvmi_vm_read_physical, gpa); V(kvmi_vm_read_physical, size);
	  V(kvmi_vm_read_physical, padding1); V(kvmi_vm_read_physical, padding2));
	begin_struct("kvmi_vm_write_physical", sizeof(struct kvmi_vm_write_physical));
	V(kvmi_vm_write_physical, gpa); V(kvmi_vm_write_physical, size); V(kvmi_vm_write_physical, padding1);
	V(kvmi_vm_write_physical, padding2);
	begin_tails();
	TAIL(struct kvmi_vm_write_physical, , data);
	end_struct();
	S(kvmi_vm_pause_vcpu, V(kvmi_vm_pause_vcpu, vcpu); V(kvmi_vm_pause_vcpu, wait); V(kvmi_vm_pause_vcpu, padding1);
	  V(kvmi_vm_pause_vcpu, padding2));
	S(kvmi_vm_control_cleanup, V(kvmi_vm_control_cleanup, enable); V(kvmi_vm_control_cleanup, padding));
	S(kvmi_page_access_entry, V(kvmi_page_access_entry, gpa); V(kvmi_page_access_entry, access);
	  V(kvmi_page_access_entry, padding));
	begin_struct("kvmi_vm_set_page_access", sizeof(struct kvmi_vm_set_page_access));
	V(kvmi_vm_set_page_access, count); V(kvmi_vm_set_page_access, padding1); V(kvmi_vm_set_page_access, padding2);
	begin_tails();
	TAIL(struct kvmi_vm_set_page_access, , entries);
	end_struct();
	S(kvmi_vcpu_get_info_reply, V(kvmi_vcpu_get_info_reply, tsc_speed));
	S(kvmi_vcpu_control_events, V(kvmi_vcpu_control_events, event_id); V(kvmi_vcpu_control_events, enable);
	  V(kvmi_vcpu_control_events, padding1); V(kvmi_vcpu_control_events, padding2));
	begin_struct("kvmi_vcpu_get_registers", sizeof(struct kvmi_vcpu_get_registers));
	V(kvmi_vcpu_get_registers, nmsrs); V(kvmi_vcpu_get_registers, padding1); V(kvmi_vcpu_get_registers, padding2);
	begin_tails();
	TAIL(struct kvmi_vcpu_get_registers, , msrs_idx);
	end_struct();
	begin_struct("kvmi_vcpu_get_registers_reply", sizeof(struct kvmi_vcpu_get_registers_reply));
	V(kvmi_vcpu_get_registers_reply, mode); V(kvmi_vcpu_get_registers_reply, padding);
	V(kvmi_vcpu_get_registers_reply, regs); KVM_REGS(struct kvmi_vcpu_get_registers_reply, regs.);
	V(kvmi_vcpu_get_registers_reply, sregs); KVM_SREGS(struct kvmi_vcpu_get_registers_reply, sregs.);
	V(kvmi_vcpu_get_registers_reply, msrs); KVM_MSRS(struct kvmi_vcpu_get_registers_reply, msrs.);
	begin_tails();
	TAIL(struct kvmi_vcpu_get_registers_reply, msrs., entries);
	end_struct();
	S(kvmi_vcpu_get_cpuid, V(kvmi_vcpu_get_cpuid, function); V(kvmi_vcpu_get_cpuid, index));
	S(kvmi_vcpu_get_cpuid_reply, V(kvmi_vcpu_get_cpuid_reply, eax); V(kvmi_vcpu_get_cpuid_reply, ebx);
	  V(kvmi_vcpu_get_cpuid_reply, ecx); V(kvmi_vcpu_get_cpuid_reply, edx));
	S(kvmi_vcpu_control_cr, V(kvmi_vcpu_control_cr, cr); V(kvmi_vcpu_control_cr, enable);
	  V(kvmi_vcpu_control_cr, padding1); V(kvmi_vcpu_control_cr, padding2));
	S(kvmi_vcpu_inject_exception, V(kvmi_vcpu_inject_exception, nr); V(kvmi_vcpu_inject_exception, padding1);
	  V(kvmi_vcpu_inject_exception, padding2); V(kvmi_vcpu_inject_exception, error_code);
	  V(kvmi_vcpu_inject_exception, address));
	S(kvmi_vcpu_get_xcr, V(kvmi_vcpu_get_xcr, xcr); V(kvmi_vcpu_get_xcr, padding));
	S(kvmi_vcpu_get_xcr_reply, V(kvmi_vcpu_get_xcr_reply, value));
	S(kvmi_vcpu_get_mtrr_type, V(kvmi_vcpu_get_mtrr_type, gpa));
	S(kvmi_vcpu_get_mtrr_type_reply, V(kvmi_vcpu_get_mtrr_type_reply, type); V(kvmi_vcpu_get_mtrr_type_reply, padding));
	S(kvmi_vcpu_control_msr, V(kvmi_vcpu_control_msr, enable); V(kvmi_vcpu_control_msr, padding1);
	  V(kvmi_vcpu_control_msr, padding2); V(kvmi_vcpu_control_msr, msr));
	S(kvmi_vcpu_control_singlestep, V(kvmi_vcpu_control_singlestep, enable); V(kvmi_vcpu_control_singlestep, padding));
	S(kvmi_vcpu_translate_gva, V(kvmi_vcpu_translate_gva, gva));
	S(kvmi_vcpu_translate_gva_reply, V(kvmi_vcpu_translate_gva_reply, gpa));

	S(kvmi_event_hdr, V(kvmi_event_hdr, event); V(kvmi_event_hdr, padding));
	S(kvmi_vcpu_event, V(kvmi_vcpu_event, size); V(kvmi_vcpu_event, vcpu); V(kvmi_vcpu_event, padding);
	  V(kvmi_vcpu_event, arch); KVMI_EVENT_ARCH(struct kvmi_vcpu_event, arch.));
	S(kvmi_vcpu_event_reply, V(kvmi_vcpu_event_reply, action); V(kvmi_vcpu_event_reply, event);
	  V(kvmi_vcpu_event_reply, padding1); V(kvmi_vcpu_event_reply, padding2));
	S(kvmi_vcpu_event_arch, KVMI_EVENT_ARCH(struct kvmi_vcpu_event_arch, ));
	S(kvmi_vcpu_event_breakpoint, V(kvmi_vcpu_event_breakpoint, gpa); V(kvmi_vcpu_event_breakpoint, insn_len);
	  V(kvmi_vcpu_event_breakpoint, padding));
	S(kvmi_vcpu_event_cr, V(kvmi_vcpu_event_cr, cr); V(kvmi_vcpu_event_cr, padding); V(kvmi_vcpu_event_cr, old_value);
	  V(kvmi_vcpu_event_cr, new_value));
	S(kvmi_vcpu_event_cr_reply, V(kvmi_vcpu_event_cr_reply, new_val));
	S(kvmi_vcpu_event_trap, V(kvmi_vcpu_event_trap, nr); V(kvmi_vcpu_event_trap, padding1);
	  V(kvmi_vcpu_event_trap, padding2); V(kvmi_vcpu_event_trap, error_code); V(kvmi_vcpu_event_trap, address));
	S(kvmi_vcpu_event_xsetbv, V(kvmi_vcpu_event_xsetbv, xcr); V(kvmi_vcpu_event_xsetbv, padding);
	  V(kvmi_vcpu_event_xsetbv, old_value); V(kvmi_vcpu_event_xsetbv, new_value));
	S(kvmi_vcpu_event_descriptor, V(kvmi_vcpu_event_descriptor, descriptor); V(kvmi_vcpu_event_descriptor, write);
	  V(kvmi_vcpu_event_descriptor, padding));
	S(kvmi_vcpu_event_msr, V(kvmi_vcpu_event_msr, msr); V(kvmi_vcpu_event_msr, padding);
	  V(kvmi_vcpu_event_msr, old_value); V(kvmi_vcpu_event_msr, new_value));
	S(kvmi_vcpu_event_msr_reply, V(kvmi_vcpu_event_msr_reply, new_val));
	S(kvmi_vcpu_event_pf, V(kvmi_vcpu_event_pf, gva); V(kvmi_vcpu_event_pf, gpa); V(kvmi_vcpu_event_pf, access);
	  V(kvmi_vcpu_event_pf, padding1); V(kvmi_vcpu_event_pf, padding2); V(kvmi_vcpu_event_pf, padding3));
	S(kvmi_vcpu_event_singlestep, V(kvmi_vcpu_event_singlestep, failed); V(kvmi_vcpu_event_singlestep, padding));

	S(kvm_regs, KVM_REGS(struct kvm_regs, ));
	S(kvm_sregs, KVM_SREGS(struct kvm_sregs, ));
	S(kvm_msr_entry, V(kvm_msr_entry, index); V(kvm_msr_entry, reserved); V(kvm_msr_entry, data));
	begin_struct("kvm_msrs", sizeof(struct kvm_msrs));
	KVM_MSRS(struct kvm_msrs, );
	begin_tails();
	TAIL(struct kvm_msrs, , entries);
	end_struct();
	S(kvm_xsave, V(kvm_xsave, region));

	printf("\n}\n");
	return 0;
}
