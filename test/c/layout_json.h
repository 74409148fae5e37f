// SPDX-License-Identifier: Apache-2.0
/*
 * Shared by the per-dialect layout listings (kvmi_v9_layout.c, kvmi_v12_layout.c, kvmi_v7_layout.c):
 * the kernel integer types, the structs every KVMI dialect shares (the KVM register structs and the
 * message framing of docs/protocol/: kvmi_msg_hdr, kvmi_error_code, kvmi_vcpu_hdr), written from the
 * ABI fact sheet, and the JSON printer with its completeness check. No kernel header is included.
 */
#ifndef KVMI_LAYOUT_JSON_H
#define KVMI_LAYOUT_JSON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint8_t __u8;
typedef uint16_t __u16;
typedef uint32_t __u32;
typedef uint64_t __u64;
typedef int32_t __s32;
typedef int64_t __s64;

/* ---------------------------------------------------------------------------------------------
 * §6: KVM register structs (arch/x86/include/uapi/asm/kvm.h) */

struct kvm_regs {
	__u64 rax, rbx, rcx, rdx;
	__u64 rsi, rdi, rsp, rbp;
	__u64 r8, r9, r10, r11;
	__u64 r12, r13, r14, r15;
	__u64 rip, rflags;
};

struct kvm_segment {
	__u64 base;
	__u32 limit;
	__u16 selector;
	__u8 type;
	__u8 present, dpl, db, s, l, g, avl;
	__u8 unusable;
	__u8 padding;
};

struct kvm_dtable {
	__u64 base;
	__u16 limit;
	__u16 padding[3];
};

struct kvm_sregs {
	struct kvm_segment cs, ds, es, fs, gs, ss;
	struct kvm_segment tr, ldt;
	struct kvm_dtable gdt, idt;
	__u64 cr0, cr2, cr3, cr4, cr8;
	__u64 efer;
	__u64 apic_base;
	__u64 interrupt_bitmap[(256 + 63) / 64];
};

struct kvm_msr_entry {
	__u32 index;
	__u32 reserved;
	__u64 data;
};

struct kvm_msrs {
	__u32 nmsrs;
	__u32 pad;
	struct kvm_msr_entry entries[0];
};

struct kvm_xsave {
	__u32 region[1024];
};

/* ---------------------------------------------------------------------------------------------
 * §3: framing (include/uapi/linux/kvmi.h) */

struct kvmi_msg_hdr {
	__u16 id;
	__u16 size;
	__u32 seq;
};

struct kvmi_error_code {
	__s32 err;
	__u32 padding;
};

struct kvmi_vcpu_hdr {
	__u16 vcpu;
	__u16 padding1;
	__u32 padding2;
};


/* ---------------------------------------------------------------------------------------------
 * JSON output */

static int first_struct = 1;
static int first_item;

/*
 * Completeness check of this listing: the top-level (undotted) fields printed for a struct must cover
 * each of its bytes exactly once. With explicit padding there are no holes in any of these structs,
 * so a member forgotten in main() below stops the program instead of silently shrinking the proof.
 */
static const char *current_struct;
static size_t current_size;
static unsigned char covered[8192];

static void begin_struct(const char *name, size_t size)
{
	if (size > sizeof(covered)) {
		fprintf(stderr, "%s: size %zu exceeds the coverage map\n", name, size);
		exit(1);
	}
	printf("%s\n  \"%s\": { \"size\": %zu, \"fields\": {", first_struct ? "{" : ",", name, size);
	first_struct = 0;
	first_item = 1;
	current_struct = name;
	current_size = size;
	memset(covered, 0, sizeof(covered));
}

/* Stringizing "P M" with P = `arch.regs.` can leave spaces between tokens: drop them. */
static void print_name(const char *raw)
{
	putchar('"');
	for (; *raw != '\0'; raw++)
		if (*raw != ' ')
			putchar(*raw);
	putchar('"');
}

static void field(const char *name, size_t offset, size_t size, int is_signed)
{
	printf("%s\n    ", first_item ? "" : ",");
	print_name(name);
	printf(": { \"offset\": %zu, \"size\": %zu, \"signed\": %s }", offset, size, is_signed ? "true" : "false");
	first_item = 0;
	if (strchr(name, '.') == NULL) {
		for (size_t i = offset; i < offset + size; i++) {
			if (i >= current_size || covered[i]) {
				fprintf(stderr, "%s.%s: byte %zu is outside the struct or listed twice\n", current_struct,
					name, i);
				exit(1);
			}
			covered[i] = 1;
		}
	}
}

static void begin_tails(void)
{
	printf(" }, \"tails\": {");
	first_item = 1;
}

static void tail(const char *name, size_t offset, size_t element_size)
{
	printf("%s\n    ", first_item ? "" : ",");
	print_name(name);
	printf(": { \"offset\": %zu, \"elementSize\": %zu }", offset, element_size);
	first_item = 0;
}

static void end_struct(void)
{
	printf(" } }");
	for (size_t i = 0; i < current_size; i++) {
		if (!covered[i]) {
			fprintf(stderr, "%s: byte %zu is covered by no listed member\n", current_struct, i);
			exit(1);
		}
	}
}

/*
 * F(T, P, M): member M of the (possibly nested, P = "a.b.") member path P of struct type T.
 * "signed" is true for the signed integer members (__s32, __s64); structs and arrays are not scalars.
 */
#define IS_SIGNED(X) _Generic((X), __s32: 1, __s64: 1, default: 0)
#define F(T, P, M) field(#P #M, offsetof(T, P M), sizeof(((T *)0)->P M), IS_SIGNED(((T *)0)->P M))
#define TAIL(T, P, M) tail(#P #M, offsetof(T, P M), sizeof(((T *)0)->P M[0]))

#define KVM_REGS(T, P)                                                                                    \
	F(T, P, rax); F(T, P, rbx); F(T, P, rcx); F(T, P, rdx); F(T, P, rsi); F(T, P, rdi);               \
	F(T, P, rsp); F(T, P, rbp); F(T, P, r8); F(T, P, r9); F(T, P, r10); F(T, P, r11);                 \
	F(T, P, r12); F(T, P, r13); F(T, P, r14); F(T, P, r15); F(T, P, rip); F(T, P, rflags)

#define KVM_SEGMENT(T, P)                                                                                 \
	F(T, P, base); F(T, P, limit); F(T, P, selector); F(T, P, type); F(T, P, present); F(T, P, dpl);  \
	F(T, P, db); F(T, P, s); F(T, P, l); F(T, P, g); F(T, P, avl); F(T, P, unusable);                 \
	F(T, P, padding)

#define KVM_DTABLE(T, P) F(T, P, base); F(T, P, limit); F(T, P, padding)

#define SEG(T, P, M) F(T, P, M); KVM_SEGMENT(T, P M.)
#define DT(T, P, M) F(T, P, M); KVM_DTABLE(T, P M.)

#define KVM_SREGS(T, P)                                                                                   \
	SEG(T, P, cs); SEG(T, P, ds); SEG(T, P, es); SEG(T, P, fs); SEG(T, P, gs); SEG(T, P, ss);         \
	SEG(T, P, tr); SEG(T, P, ldt); DT(T, P, gdt); DT(T, P, idt);                                      \
	F(T, P, cr0); F(T, P, cr2); F(T, P, cr3); F(T, P, cr4); F(T, P, cr8); F(T, P, efer);              \
	F(T, P, apic_base); F(T, P, interrupt_bitmap)

#define KVM_MSRS(T, P) F(T, P, nmsrs); F(T, P, pad)

#define KVMI_EVENT_ARCH_MSRS(T, P)                                                                        \
	F(T, P, sysenter_cs); F(T, P, sysenter_esp); F(T, P, sysenter_eip); F(T, P, efer);                \
	F(T, P, star); F(T, P, lstar); F(T, P, cstar); F(T, P, pat); F(T, P, shadow_gs)

#define KVMI_EVENT_ARCH(T, P)                                                                             \
	F(T, P, mode); F(T, P, padding);                                                                  \
	F(T, P, regs); KVM_REGS(T, P regs.);                                                              \
	F(T, P, sregs); KVM_SREGS(T, P sregs.);                                                           \
	F(T, P, msrs); KVMI_EVENT_ARCH_MSRS(T, P msrs.)

/* The header of every struct with only scalar/array members: list them in declaration order. */
#define S1(T, NAME, ...) do { begin_struct(NAME, sizeof(T)); __VA_ARGS__; end_struct(); } while (0)

#endif /* KVMI_LAYOUT_JSON_H */
