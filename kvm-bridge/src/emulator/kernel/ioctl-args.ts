// SPDX-License-Identifier: Apache-2.0
/**
 * What the emulated kernel is given from outside: its options and the arguments of the VM ioctls
 * (kvmi-abi §2.4). Kept apart from kvmi-vm.ts so the callers' input types read in one place, next
 * to the kernel's implementation rather than inside it.
 */
import type { Socket } from "node:net";
import type { Logger } from "../../logger.js";
import type { Dialect } from "../../wire/dialect.js";
import type { HostFeatures } from "./guest-port.js";

/** Options of the emulated kernel. */
export interface KvmiVmOptions {
  /** The dialect this kernel speaks (default v9). */
  readonly dialect?: Dialect;
  readonly features?: Partial<HostFeatures>;
  /** The `kvm.introspection` module parameter: when false every ioctl fails with EPERM. */
  readonly introspectionEnabled?: boolean;
  readonly logger?: Logger;
}

/** `struct kvm_introspection_hook` as the HOOK ioctl receives it (kvmi-abi §2.4). */
export interface HookArgs {
  /** The connected socket QEMU hands over; null models an fd that is not a socket (EINVAL). */
  readonly fd: Socket | null;
  readonly padding: number;
  readonly uuid: Uint8Array;
}

/** `struct kvm_introspection_feature` (kvmi-abi §2.4). */
export interface FeatureArgs {
  readonly allow: number;
  readonly id: number;
}
