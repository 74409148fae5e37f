// SPDX-License-Identifier: Apache-2.0
/**
 * Argument structs of the v9 VM ioctls (kvmi-abi §2.4; `include/uapi/linux/kvm.h`). Their sizes go
 * into the `_IOW` numbers: 24 -> 0x4018AEC3, 8 -> 0x4008AEC5/0x4008AEC6. Unchanged through v12.
 */
import { bytes, defineLayout, pad, s32, u32 } from "../layout.js";

/**
 * `struct kvm_introspection_hook` (24 bytes, kvmi-abi §2.4): KVM_INTROSPECTION_HOOK. Non-zero
 * `padding` fails with EINVAL. (v9 api.rst calls it `kvm_introspection`.)
 */
export const kvmIntrospectionHook = defineLayout("kvm_introspection_hook", 24, {
  /** Connected socket fd. */
  fd: s32(0),
  padding: pad(4, 4),
  uuid: bytes(8, 16),
});

/**
 * `struct kvm_introspection_feature` (8 bytes, kvmi-abi §2.4): KVM_INTROSPECTION_COMMAND and
 * KVM_INTROSPECTION_EVENT. `allow` 0/1; `id` -1 means all.
 */
export const kvmIntrospectionFeature = defineLayout("kvm_introspection_feature", 8, {
  allow: u32(0),
  id: s32(4),
});
