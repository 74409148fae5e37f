// SPDX-License-Identifier: Apache-2.0
/**
 * Framing structs shared by every KVMI message (kvmi-abi §3.1, §3.2; `include/uapi/linux/kvmi.h`).
 * All three are identical in v8..v12 and in the product dialect.
 */
import { defineLayout, pad, s32, u16, u32 } from "../layout.js";

/** `struct kvmi_msg_hdr` (8 bytes, kvmi-abi §3.1): id, body size, sequence number. */
export const kvmiMsgHdr = defineLayout("kvmi_msg_hdr", 8, {
  id: u16(0),
  size: u16(2),
  seq: u32(4),
});

/** `struct kvmi_error_code` (8 bytes, kvmi-abi §3.2): first part of every command reply; `err` is 0 or -KVM_E*. */
export const kvmiErrorCode = defineLayout("kvmi_error_code", 8, {
  err: s32(0),
  padding: pad(4, 4),
});

/**
 * `struct kvmi_vcpu_hdr` (8 bytes, kvmi-abi §3.2, §2.9): starts every vCPU-scoped request and every
 * event reply. Non-zero padding is answered with -KVM_EINVAL by the receive thread.
 */
export const kvmiVcpuHdr = defineLayout("kvmi_vcpu_hdr", 8, {
  vcpu: u16(0),
  padding1: pad(2, 2),
  padding2: pad(4, 4),
});
