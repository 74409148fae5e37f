// SPDX-License-Identifier: Apache-2.0
/*
 * Our own copy of the structs of the libkvmi product dialect kvmi-v7, written from the ABI fact sheet
 * (kvmi-abi §1.4, §11, and §4-§6 for what it shares with v9) and docs/protocol/kvmi-v7.md, with
 * kvmi-v7's C names. gcc's natural x86_64 alignment decides every offset;
 * test/contract/abi-layout.test.ts compares the listing with KVMI_V7_LAYOUTS field by field
 * (mapping the trap event's C names vector/cr2 to our nr/address).
 *
 * Build: gcc -std=gnu11 -Wall -Wextra -Werror -o kvmi_v7_layout kvmi_v7_layout.c
 */
#include "layout_json.h"

/* §1.4: the arch part carries the EPT view. */
struct kvmi_event_arch {
	__u8 mode;
	__u8 padding1;
	__u16 view;
	__u8 padding2[4];
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	struct {
		__u64 sysenter_cs, sysenter_esp, sysenter_eip, efer, star, lstar, cstar, pat, shadow_gs;
	} msrs;
};

struct kvmi_event {
	__u16 size;
	__u16 vcpu;
	__u8 event;
	__u8 padding[3];
	struct kvmi_event_arch arch;
};

struct kvmi_event_reply {
	__u8 action;
	__u8 event;
	__u16 padding1;
	__u32 padding2;
};

struct kvmi_features {
	__u8 spp;
	__u8 vmfunc;
	__u8 eptp;
	__u8 ve;
	__u8 padding[4];
};

struct kvmi_get_version_reply {
	__u32 version;
	__u32 padding;
	struct kvmi_features features;
};

struct kvmi_control_cmd_response {
	__u8 enable;
	__u8 now;
	__u16 padding1;
	__u32 padding2;
};

struct kvmi_check_command {
	__u16 id;
	__u16 padding1;
	__u32 padding2;
};

struct kvmi_check_event {
	__u16 id;
	__u16 padding1;
	__u32 padding2;
};

struct kvmi_get_guest_info_reply {
	__u32 vcpu_count;
	__u32 padding[3];
};

struct kvmi_page_access_entry {
	__u64 gpa;
	__u8 access;
	__u8 padding1;
	__u16 padding2;
	__u32 padding3;
};

struct kvmi_set_page_access {
	__u16 view;
	__u16 count;
	__u32 padding;
	struct kvmi_page_access_entry entries[0];
};

struct kvmi_get_page_access {
	__u16 view;
	__u16 count;
	__u32 padding;
	__u64 gpa[0];
};

struct kvmi_control_spp {
	__u8 enable;
	__u8 padding1;
	__u16 padding2;
	__u32 padding3;
};

struct kvmi_get_page_write_bitmap {
	__u16 view;
	__u16 count;
	__u32 padding;
	__u64 gpa[0];
};

struct kvmi_page_write_bitmap_entry {
	__u64 gpa;
	__u32 bitmap;
	__u32 padding;
};

struct kvmi_set_page_write_bitmap {
	__u16 view;
	__u16 count;
	__u32 padding;
	struct kvmi_page_write_bitmap_entry entries[0];
};

struct kvmi_get_vcpu_info_reply {
	__u64 tsc_speed;
};

struct kvmi_pause_vcpu {
	__u8 wait;
	__u8 padding1;
	__u16 padding2;
	__u32 padding3;
};

struct kvmi_control_events {
	__u16 event_id;
	__u8 enable;
	__u8 padding1;
	__u32 padding2;
};

struct kvmi_control_vm_events {
	__u16 event_id;
	__u8 enable;
	__u8 padding1;
	__u32 padding2;
};

/* §1.4, §11: u64 sizes, no padding. */
struct kvmi_read_physical {
	__u64 gpa;
	__u64 size;
};

struct kvmi_write_physical {
	__u64 gpa;
	__u64 size;
	__u8 data[0];
};

struct kvmi_query_physical {
	__u64 gfn;
};

struct kvmi_query_physical_reply {
	__u64 gfn;
	__u64 size;
};

struct kvmi_inject_exception {
	__u8 nr;
	__u8 padding1;
	__u16 padding2;
	__u32 error_code;
	__u64 address;
};

struct kvmi_event_pf {
	__u64 gva;
	__u64 gpa;
	__u8 access;
	__u8 padding1;
	__u16 view;
	__u32 padding2;
};

/* §1.4: the 272-byte PF reply. */
struct kvmi_event_pf_reply {
	__u64 ctx_addr;
	__u32 ctx_size;
	__u8 singlestep;
	__u8 rep_complete;
	__u16 padding;
	__u8 ctx_data[256];
};

struct kvmi_event_breakpoint {
	__u64 gpa;
	__u8 insn_len;
	__u8 padding[7];
};

struct kvmi_mem_token {
	__u64 token[4];
};

struct kvmi_get_max_gfn_reply {
	__u64 gfn;
};

struct kvmi_get_next_available_gfn_reply {
	__u64 gfn;
};

struct kvmi_set_ve_info_page {
	__u64 gpa;
	__u8 trigger_vmexit;
	__u8 padding[7];
};

struct kvmi_switch_ept_view_req {
	__u16 view;
	__u16 padding[3];
};

struct kvmi_get_ept_view_reply {
	__u16 view;
	__u8 padding[6];
};

struct kvmi_control_ept_view_req {
	__u16 view;
	__u8 visible;
	__u8 padding1;
	__u32 padding2;
};

struct kvmi_vcpu_get_xcr {
	__u8 xcr;
	__u8 padding[7];
};

struct kvmi_vcpu_get_xcr_reply {
	__u64 value;
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

struct kvmi_vcpu_change_gfn {
	__u16 view;
	__u16 padding1;
	__u32 padding2;
	__u64 old_gfn;
	__u64 new_gfn;
};

struct kvmi_vcpu_alloc_gfn {
	__u64 gfn;
};

struct kvmi_vcpu_free_gfn {
	__u64 gfn;
};

struct kvmi_create_ept_view_reply {
	__u16 view;
	__u16 pad[3];
};

struct kvmi_destroy_ept_view {
	__u16 view;
	__u16 pad[3];
};

/* x86_64/asm/kvmi.h */
struct kvmi_event_trap {
	__u8 vector;
	__u8 padding1;
	__u16 padding2;
	__u32 error_code;
	__u64 cr2;
};

struct kvmi_get_registers {
	__u16 nmsrs;
	__u16 padding1;
	__u32 padding2;
	__u32 msrs_idx[0];
};

struct kvmi_get_registers_reply {
	__u32 mode;
	__u32 padding;
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	struct kvm_msrs msrs;
};

struct kvmi_get_cpuid {
	__u32 function;
	__u32 index;
};

struct kvmi_get_cpuid_reply {
	__u32 eax, ebx, ecx, edx;
};

/* §1.4: enable first, u32 cr. */
struct kvmi_control_cr {
	__u8 enable;
	__u8 padding1;
	__u16 padding2;
	__u32 cr;
};

/* §1.4: u16 cr. */
struct kvmi_event_cr {
	__u16 cr;
	__u16 padding[3];
	__u64 old_value;
	__u64 new_value;
};

struct kvmi_event_cr_reply {
	__u64 new_val;
};

struct kvmi_control_msr {
	__u8 enable;
	__u8 padding1;
	__u16 padding2;
	__u32 msr;
};

struct kvmi_event_msr {
	__u32 msr;
	__u32 padding;
	__u64 old_value;
	__u64 new_value;
};

struct kvmi_event_msr_reply {
	__u64 new_val;
};

struct kvmi_get_mtrr_type {
	__u64 gpa;
};

struct kvmi_get_mtrr_type_reply {
	__u8 type;
	__u8 padding[7];
};

struct kvmi_event_descriptor {
	__u8 descriptor;
	__u8 write;
	__u8 padding[6];
};

struct kvmi_event_cpuid {
	__u32 function;
	__u32 index;
	__u8 insn_length;
	__u8 padding1[3];
	__u32 padding2;
};

struct kvmi_event_singlestep {
	__u8 failed;
	__u8 padding[7];
};

#define SA(cond) _Static_assert(cond, #cond)
SA(sizeof(struct kvmi_event) == 544);
SA(offsetof(struct kvmi_event, arch.view) == 10);
SA(sizeof(struct kvmi_event_pf_reply) == 272);
SA(sizeof(struct kvmi_read_physical) == 16);
SA(sizeof(struct kvmi_event_cpuid) == 16);
SA(sizeof(struct kvmi_event_cr) == 24);

#define V(T, M) F(struct T, , M)
#define S(T, ...) S1(struct T, #T, __VA_ARGS__)
#define WITH_TAIL(T, TAILNAME, ...) \
	do { begin_struct(#T, sizeof(struct T)); __VA_ARGS__; begin_tails(); TAIL(struct T, , TAILNAME); end_struct(); } while (0)
#define VIEW_COUNT(T) V(T, view); V(T, count); V(T, padding)

#define KVMI_V7_EVENT_ARCH(T, P)                                                                          \
	F(T, P, mode); F(T, P, padding1); F(T, P, view); F(T, P, padding2);                               \
	F(T, P, regs); KVM_REGS(T, P regs.);                                                              \
	F(T, P, sregs); KVM_SREGS(T, P sregs.);                                                           \
	F(T, P, msrs); KVMI_EVENT_ARCH_MSRS(T, P msrs.)

int main(void)
{
	S(kvmi_msg_hdr, V(kvmi_msg_hdr, id); V(kvmi_msg_hdr, size); V(kvmi_msg_hdr, seq));
	S(kvmi_error_code, V(kvmi_error_code, err); V(kvmi_error_code, padding));
	S(kvmi_vcpu_hdr, V(kvmi_vcpu_hdr, vcpu); V(kvmi_vcpu_hdr, padding1); V(kvmi_vcpu_hdr, padding2));
	S(kvmi_features, V(kvmi_features, spp); V(kvmi_features, vmfunc); V(kvmi_features, eptp); V(kvmi_features, ve);
	  V(kvmi_features, padding));
	S(kvmi_get_version_reply, V(kvmi_get_version_reply, version); V(kvmi_get_version_reply, padding);
	  V(kvmi_get_version_reply, features); F(struct kvmi_get_version_reply, features., spp);
	  F(struct kvmi_get_version_reply, features., vmfunc); F(struct kvmi_get_version_reply, features., eptp);
	  F(struct kvmi_get_version_reply, features., ve); F(struct kvmi_get_version_reply, features., padding));
	S(kvmi_control_cmd_response, V(kvmi_control_cmd_response, enable); V(kvmi_control_cmd_response, now);
	  V(kvmi_control_cmd_response, padding1); V(kvmi_control_cmd_response, padding2));
	S(kvmi_check_command, V(kvmi_check_command, id); V(kvmi_check_command, padding1); V(kvmi_check_command, padding2));
	S(kvmi_check_event, V(kvmi_check_event, id); V(kvmi_check_event, padding1); V(kvmi_check_event, padding2));
	S(kvmi_get_guest_info_reply, V(kvmi_get_guest_info_reply, vcpu_count); V(kvmi_get_guest_info_reply, padding));
	S(kvmi_page_access_entry, V(kvmi_page_access_entry, gpa); V(kvmi_page_access_entry, access);
	  V(kvmi_page_access_entry, padding1); V(kvmi_page_access_entry, padding2); V(kvmi_page_access_entry, padding3));
	WITH_TAIL(kvmi_set_page_access, entries, VIEW_COUNT(kvmi_set_page_access));
	WITH_TAIL(kvmi_get_page_access, gpa, VIEW_COUNT(kvmi_get_page_access));
	S(kvmi_control_spp, V(kvmi_control_spp, enable); V(kvmi_control_spp, padding1); V(kvmi_control_spp, padding2);
	  V(kvmi_control_spp, padding3));
	WITH_TAIL(kvmi_get_page_write_bitmap, gpa, VIEW_COUNT(kvmi_get_page_write_bitmap));
	S(kvmi_page_write_bitmap_entry, V(kvmi_page_write_bitmap_entry, gpa); V(kvmi_page_write_bitmap_entry, bitmap);
	  V(kvmi_page_write_bitmap_entry, padding));
	WITH_TAIL(kvmi_set_page_write_bitmap, entries, VIEW_COUNT(kvmi_set_page_write_bitmap));
	S(kvmi_get_vcpu_info_reply, V(kvmi_get_vcpu_info_reply, tsc_speed));
	S(kvmi_pause_vcpu, V(kvmi_pause_vcpu, wait); V(kvmi_pause_vcpu, padding1); V(kvmi_pause_vcpu, padding2);
	  V(kvmi_pause_vcpu, padding3));
	S(kvmi_control_events, V(kvmi_control_events, event_id); V(kvmi_control_events, enable);
	  V(kvmi_control_events, padding1); V(kvmi_control_events, padding2));
	S(kvmi_control_vm_events, V(kvmi_control_vm_events, event_id); V(kvmi_control_vm_events, enable);
	  V(kvmi_control_vm_events, padding1); V(kvmi_control_vm_events, padding2));
	S(kvmi_read_physical, V(kvmi_read_physical, gpa); V(kvmi_read_physical, size));
	WITH_TAIL(kvmi_write_physical, data, V(kvmi_write_physical, gpa); V(kvmi_write_physical, size));
	S(kvmi_query_physical, V(kvmi_query_physical, gfn));
	S(kvmi_query_physical_reply, V(kvmi_query_physical_reply, gfn); V(kvmi_query_physical_reply, size));
	S(kvmi_inject_exception, V(kvmi_inject_exception, nr); V(kvmi_inject_exception, padding1);
	  V(kvmi_inject_exception, padding2); V(kvmi_inject_exception, error_code); V(kvmi_inject_exception, address));
	S(kvmi_event, V(kvmi_event, size); V(kvmi_event, vcpu); V(kvmi_event, event); V(kvmi_event, padding);
	  V(kvmi_event, arch); KVMI_V7_EVENT_ARCH(struct kvmi_event, arch.));
	S(kvmi_event_reply, V(kvmi_event_reply, action); V(kvmi_event_reply, event); V(kvmi_event_reply, padding1);
	  V(kvmi_event_reply, padding2));
	S(kvmi_event_pf, V(kvmi_event_pf, gva); V(kvmi_event_pf, gpa); V(kvmi_event_pf, access); V(kvmi_event_pf, padding1);
	  V(kvmi_event_pf, view); V(kvmi_event_pf, padding2));
	S(kvmi_event_pf_reply, V(kvmi_event_pf_reply, ctx_addr); V(kvmi_event_pf_reply, ctx_size);
	  V(kvmi_event_pf_reply, singlestep); V(kvmi_event_pf_reply, rep_complete); V(kvmi_event_pf_reply, padding);
	  V(kvmi_event_pf_reply, ctx_data));
	S(kvmi_event_breakpoint, V(kvmi_event_breakpoint, gpa); V(kvmi_event_breakpoint, insn_len);
	  V(kvmi_event_breakpoint, padding));
	S(kvmi_mem_token, V(kvmi_mem_token, token));
	S(kvmi_get_max_gfn_reply, V(kvmi_get_max_gfn_reply, gfn));
	S(kvmi_get_next_available_gfn_reply, V(kvmi_get_next_available_gfn_reply, gfn));
	S(kvmi_set_ve_info_page, V(kvmi_set_ve_info_page, gpa); V(kvmi_set_ve_info_page, trigger_vmexit);
	  V(kvmi_set_ve_info_page, padding));
	S(kvmi_switch_ept_view_req, V(kvmi_switch_ept_view_req, view); V(kvmi_switch_ept_view_req, padding));
	S(kvmi_get_ept_view_reply, V(kvmi_get_ept_view_reply, view); V(kvmi_get_ept_view_reply, padding));
	S(kvmi_control_ept_view_req, V(kvmi_control_ept_view_req, view); V(kvmi_control_ept_view_req, visible);
	  V(kvmi_control_ept_view_req, padding1); V(kvmi_control_ept_view_req, padding2));
	S(kvmi_vcpu_get_xcr, V(kvmi_vcpu_get_xcr, xcr); V(kvmi_vcpu_get_xcr, padding));
	S(kvmi_vcpu_get_xcr_reply, V(kvmi_vcpu_get_xcr_reply, value));
	S(kvmi_vcpu_control_singlestep, V(kvmi_vcpu_control_singlestep, enable); V(kvmi_vcpu_control_singlestep, padding));
	S(kvmi_vcpu_translate_gva, V(kvmi_vcpu_translate_gva, gva));
	S(kvmi_vcpu_translate_gva_reply, V(kvmi_vcpu_translate_gva_reply, gpa));
	S(kvmi_vcpu_change_gfn, V(kvmi_vcpu_change_gfn, view); V(kvmi_vcpu_change_gfn, padding1);
	  V(kvmi_vcpu_change_gfn, padding2); V(kvmi_vcpu_change_gfn, old_gfn); V(kvmi_vcpu_change_gfn, new_gfn));
	S(kvmi_vcpu_alloc_gfn, V(kvmi_vcpu_alloc_gfn, gfn));
	S(kvmi_vcpu_free_gfn, V(kvmi_vcpu_free_gfn, gfn));
	S(kvmi_create_ept_view_reply, V(kvmi_create_ept_view_reply, view); V(kvmi_create_ept_view_reply, pad));
	S(kvmi_destroy_ept_view, V(kvmi_destroy_ept_view, view); V(kvmi_destroy_ept_view, pad));

	S(kvmi_event_arch, KVMI_V7_EVENT_ARCH(struct kvmi_event_arch, ));
	S(kvmi_event_trap, V(kvmi_event_trap, vector); V(kvmi_event_trap, padding1); V(kvmi_event_trap, padding2);
	  V(kvmi_event_trap, error_code); V(kvmi_event_trap, cr2));
	WITH_TAIL(kvmi_get_registers, msrs_idx,
		  V(kvmi_get_registers, nmsrs); V(kvmi_get_registers, padding1); V(kvmi_get_registers, padding2));
	begin_struct("kvmi_get_registers_reply", sizeof(struct kvmi_get_registers_reply));
	V(kvmi_get_registers_reply, mode); V(kvmi_get_registers_reply, padding);
	V(kvmi_get_registers_reply, regs); KVM_REGS(struct kvmi_get_registers_reply, regs.);
	V(kvmi_get_registers_reply, sregs); KVM_SREGS(struct kvmi_get_registers_reply, sregs.);
	V(kvmi_get_registers_reply, msrs); KVM_MSRS(struct kvmi_get_registers_reply, msrs.);
	begin_tails();
	TAIL(struct kvmi_get_registers_reply, msrs., entries);
	end_struct();
	S(kvmi_get_cpuid, V(kvmi_get_cpuid, function); V(kvmi_get_cpuid, index));
	S(kvmi_get_cpuid_reply, V(kvmi_get_cpuid_reply, eax); V(kvmi_get_cpuid_reply, ebx); V(kvmi_get_cpuid_reply, ecx);
	  V(kvmi_get_cpuid_reply, edx));
	S(kvmi_control_cr, V(kvmi_control_cr, enable); V(kvmi_control_cr, padding1); V(kvmi_control_cr, padding2);
	  V(kvmi_control_cr, cr));
	S(kvmi_event_cr, V(kvmi_event_cr, cr); V(kvmi_event_cr, padding); V(kvmi_event_cr, old_value);
	  V(kvmi_event_cr, new_value));
	S(kvmi_event_cr_reply, V(kvmi_event_cr_reply, new_val));
	S(kvmi_control_msr, V(kvmi_control_msr, enable); V(kvmi_control_msr, padding1); V(kvmi_control_msr, padding2);
	  V(kvmi_control_msr, msr));
	S(kvmi_event_msr, V(kvmi_event_msr, msr); V(kvmi_event_msr, padding); V(kvmi_event_msr, old_value);
	  V(kvmi_event_msr, new_value));
	S(kvmi_event_msr_reply, V(kvmi_event_msr_reply, new_val));
	S(kvmi_get_mtrr_type, V(kvmi_get_mtrr_type, gpa));
	S(kvmi_get_mtrr_type_reply, V(kvmi_get_mtrr_type_reply, type); V(kvmi_get_mtrr_type_reply, padding));
	S(kvmi_event_descriptor, V(kvmi_event_descriptor, descriptor); V(kvmi_event_descriptor, write);
	  V(kvmi_event_descriptor, padding));
	S(kvmi_event_cpuid, V(kvmi_event_cpuid, function); V(kvmi_event_cpuid, index); V(kvmi_event_cpuid, insn_length);
	  V(kvmi_event_cpuid, padding1); V(kvmi_event_cpuid, padding2));
	S(kvmi_event_singlestep, V(kvmi_event_singlestep, failed); V(kvmi_event_singlestep, padding));

	S(kvm_regs, KVM_REGS(struct kvm_regs, ));
	S(kvm_sregs, KVM_SREGS(struct kvm_sregs, ));
	begin_struct("kvm_msrs", sizeof(struct kvm_msrs));
	KVM_MSRS(struct kvm_msrs, );
	begin_tails();
	TAIL(struct kvm_msrs, , entries);
	end_struct();
	S(kvm_msr_entry, V(kvm_msr_entry, index); V(kvm_msr_entry, reserved); V(kvm_msr_entry, data));

	printf("\n}\n");
	return 0;
}
