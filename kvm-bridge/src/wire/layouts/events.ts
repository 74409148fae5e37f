// SPDX-License-Identifier: Apache-2.0
/**
 * Event framing and event payloads of v9 (kvmi-abi §3.3, §3.4, §5). A v9 event is `kvmi_msg_hdr`
 * (id 0) + `kvmi_event` + payload; its reply is `kvmi_msg_hdr` (id 0) + `kvmi_vcpu_hdr` +
 * `kvmi_event_reply` + reply data.
 */
import { defineLayout, pad, struct, u16, u32, u64, u8 } from "../layout.js";
import { kvmiEventArch } from "./x86.js";

/** `struct kvmi_event` (544 bytes, kvmi-abi §3.3): common part of every v9 event. */
export const kvmiEvent = defineLayout("kvmi_event", 544, {
  /** sizeof(kvmi_event) as the kernel sees it: locates the payload. */
  size: u16(0),
  vcpu: u16(2),
  event: u8(4),
  padding: pad(5, 3),
  arch: struct(8, kvmiEventArch),
});

/**
 * `struct kvmi_event_reply` (8 bytes, kvmi-abi §3.4). Non-zero padding makes the v9 kernel close the
 * socket; `event` is echoed but not checked.
 */
export const kvmiEventReply = defineLayout("kvmi_event_reply", 8, {
  action: u8(0),
  event: u8(1),
  padding1: pad(2, 2),
  padding2: pad(4, 4),
});

/** `struct kvmi_event_breakpoint` (16 bytes, kvmi-abi §5 id 3). */
export const kvmiEventBreakpoint = defineLayout("kvmi_event_breakpoint", 16, {
  gpa: u64(0),
  insn_len: u8(8),
  padding: pad(9, 7),
});

/** `struct kvmi_event_cr` (24 bytes, kvmi-abi §5 id 4). */
export const kvmiEventCr = defineLayout("kvmi_event_cr", 24, {
  cr: u8(0),
  padding: pad(1, 7),
  old_value: u64(8),
  new_value: u64(16),
});

/** `struct kvmi_event_cr_reply` (8 bytes, kvmi-abi §5 id 4): the value the CR receives on CONTINUE. */
export const kvmiEventCrReply = defineLayout("kvmi_event_cr_reply", 8, {
  new_val: u64(0),
});

/** `struct kvmi_event_trap` (16 bytes, kvmi-abi §5 id 5): the exception actually injected. */
export const kvmiEventTrap = defineLayout("kvmi_event_trap", 16, {
  nr: u8(0),
  padding1: pad(1, 1),
  padding2: pad(2, 2),
  error_code: u32(4),
  address: u64(8),
});

/** `struct kvmi_event_xsetbv` (24 bytes, kvmi-abi §5 id 6). */
export const kvmiEventXsetbv = defineLayout("kvmi_event_xsetbv", 24, {
  xcr: u8(0),
  padding: pad(1, 7),
  old_value: u64(8),
  new_value: u64(16),
});

/** `struct kvmi_event_descriptor` (8 bytes, kvmi-abi §5 id 7): `descriptor` is a KVMI_DESC_* value. */
export const kvmiEventDescriptor = defineLayout("kvmi_event_descriptor", 8, {
  descriptor: u8(0),
  write: u8(1),
  padding: pad(2, 6),
});

/** `struct kvmi_event_msr` (24 bytes, kvmi-abi §5 id 8). */
export const kvmiEventMsr = defineLayout("kvmi_event_msr", 24, {
  msr: u32(0),
  padding: pad(4, 4),
  old_value: u64(8),
  new_value: u64(16),
});

/** `struct kvmi_event_msr_reply` (8 bytes, kvmi-abi §5 id 8): the value the MSR receives on CONTINUE. */
export const kvmiEventMsrReply = defineLayout("kvmi_event_msr_reply", 8, {
  new_val: u64(0),
});

/** `struct kvmi_event_pf` (24 bytes, kvmi-abi §5 id 9). `gva` is ~0 when unknown. */
export const kvmiEventPf = defineLayout("kvmi_event_pf", 24, {
  gva: u64(0),
  gpa: u64(8),
  /** KVMI_PAGE_ACCESS_R/W/X bit of the faulting access. */
  access: u8(16),
  padding1: pad(17, 1),
  padding2: pad(18, 2),
  padding3: pad(20, 4),
});

/** `struct kvmi_event_singlestep` (8 bytes, kvmi-abi §5 id 10): event payload, not reply data. */
export const kvmiEventSinglestep = defineLayout("kvmi_event_singlestep", 8, {
  failed: u8(0),
  padding: pad(1, 7),
});
