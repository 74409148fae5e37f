// SPDX-License-Identifier: Apache-2.0
/**
 * QEMU <-> tool handshake (kvmi-abi §2.3; QEMU `include/sysemu/vmi-handshake.h`). Kernel-independent:
 * the same bytes precede every dialect. All padding here is `reserved` (QEMU and libkvmi ignore it).
 * These structs are size-prefixed (`struct_size`): a receiver accepts a larger size and skips the
 * unknown tail (conventions §4).
 */
import type { BodySchema } from "../dialect.js";
import { bytes, defineLayout, reserved, s64, struct, u32, u64, u8 } from "../layout.js";

/** `name` capacity of the QEMU handshake (QEMU_VMI_NAME_SIZE): NUL-terminated, at most 63 chars. */
export const QEMU_VMI_NAME_SIZE = 64;
/** Length of `cookie_hash` (QEMU_VMI_COOKIE_HASH_SIZE): a SHA-1 digest. */
export const QEMU_VMI_COOKIE_HASH_SIZE = 20;
/** `cpu_type` values of the e820 variant. */
export const QEMU_VMI_CPU_TYPE_I386 = 0;
export const QEMU_VMI_CPU_TYPE_X86_64 = 1;
export const QEMU_VMI_CPU_TYPE_UNKNOWN = 255;
/** QEMU sends at most this many e820 entries (with more, it sends none). */
export const QEMU_VMI_MAX_E820_ENTRIES = 8;

/** `struct qemu_vmi_to_introspector`, base variant (96 bytes, kvmi-abi §2.3): QEMU -> tool. */
export const qemuVmiToIntrospector = defineLayout("qemu_vmi_to_introspector", 96, {
  struct_size: u32(0),
  uuid: bytes(4, 16),
  padding: reserved(20, 4),
  /** Seconds since the epoch (realtime clock). */
  start_time: s64(24),
  name: bytes(32, QEMU_VMI_NAME_SIZE),
});

/**
 * The KVM-VMI/qemu `kvmi-v12` variant (104 bytes, kvmi-abi §2.3): base + `max_gpa`. C names it
 * `qemu_vmi_to_introspector` too; ours carries a suffix so both fit one table.
 */
export const qemuVmiToIntrospectorMaxGpa = defineLayout("qemu_vmi_to_introspector_max_gpa", 104, {
  struct_size: u32(0),
  uuid: bytes(4, 16),
  padding: reserved(20, 4),
  start_time: s64(24),
  name: bytes(32, QEMU_VMI_NAME_SIZE),
  max_gpa: u64(96),
});

/** `struct qemu_vmi_e820_entry` (24 bytes, kvmi-abi §2.3). */
export const qemuVmiE820Entry = defineLayout("qemu_vmi_e820_entry", 24, {
  address: u64(0),
  length: u64(8),
  type: u32(16),
  padding: reserved(20, 4),
});

/**
 * The `arch` member of the e820 variant (8 bytes, kvmi-abi §2.3). QEMU calls this struct
 * `qemu_vmi_to_introspector_x86`: `u8 e820_count; u8 padding[3]; qemu_vmi_e820_entry e820_entries[0]`,
 * and the 8-byte alignment of the entries adds 4 more bytes. `padding` here spans all 7 bytes.
 */
export const qemuVmiArch = defineLayout("qemu_vmi_arch", 8, {
  e820_count: u8(0),
  padding: reserved(1, 7),
});

/**
 * The April 2020 RFC / `kvmi-v7-2.11.93` variant, fixed part (104 bytes, kvmi-abi §2.3):
 * `cpu_type` replaces the first padding byte and `arch` follows `name`. C names it
 * `qemu_vmi_to_introspector`; ours carries a suffix. `struct_size = 104 + 24 * arch.e820_count`.
 */
export const qemuVmiToIntrospectorE820 = defineLayout("qemu_vmi_to_introspector_e820", 104, {
  struct_size: u32(0),
  uuid: bytes(4, 16),
  cpu_type: u8(20),
  padding: reserved(21, 3),
  start_time: s64(24),
  name: bytes(32, QEMU_VMI_NAME_SIZE),
  arch: struct(96, qemuVmiArch),
});

/** The whole e820 variant: fixed part, then `arch.e820_entries[arch.e820_count]` @104. */
export const qemuVmiToIntrospectorE820Body = {
  layout: qemuVmiToIntrospectorE820,
  tail: {
    name: "e820_entries",
    element: qemuVmiE820Entry,
    countField: "arch.e820_count",
    maxCount: QEMU_VMI_MAX_E820_ENTRIES,
  },
} as const satisfies BodySchema;

/**
 * `struct qemu_vmi_from_introspector` (24 bytes, kvmi-abi §2.3; libkvmi `kvmi_introspector2qemu`):
 * tool -> QEMU. QEMU requires `struct_size >= 24`.
 */
export const qemuVmiFromIntrospector = defineLayout("qemu_vmi_from_introspector", 24, {
  struct_size: u32(0),
  cookie_hash: bytes(4, QEMU_VMI_COOKIE_HASH_SIZE),
});
