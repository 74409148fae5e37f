// SPDX-License-Identifier: Apache-2.0
/**
 * SDK errors -> the `-KVM_E*` value a kernel would have put in `kvmi_error_code.err`
 * (docs/protocol/, errno table). The bridge forwards the kernel's errno in ErrorInfo metadata
 * (`errno`), so a failure the remote kernel produced comes back to the tool unchanged; errors the
 * bridge raised itself (argument checks, permissions, a lost VM) get the errno a kernel gives for
 * the same condition.
 */
import { isKvmiBridgeError, StatusCode } from "@kvmi/clients";
import { errno } from "@kvmi/kvm-bridge/codec";

/** The negative KVM errno for `error` (always < 0). */
export function kernelErrorOf(error: unknown): number {
  if (!isKvmiBridgeError(error)) return -errno.KVM_EFAULT;
  if (error.errno !== undefined && error.errno > 0) return -error.errno;
  if (error.reason === "NOT_IN_DIALECT") return -errno.KVM_EOPNOTSUPP;
  switch (error.code) {
    case StatusCode.INVALID_ARGUMENT:
    case StatusCode.OUT_OF_RANGE:
      return -errno.KVM_EINVAL;
    case StatusCode.NOT_FOUND:
      return -errno.KVM_ENOENT;
    case StatusCode.PERMISSION_DENIED:
    case StatusCode.UNAUTHENTICATED:
      return -errno.KVM_EPERM;
    case StatusCode.UNIMPLEMENTED:
      return -errno.KVM_EOPNOTSUPP;
    case StatusCode.RESOURCE_EXHAUSTED:
      return -errno.KVM_EBUSY;
    case StatusCode.UNAVAILABLE:
    case StatusCode.DEADLINE_EXCEEDED:
    case StatusCode.ABORTED:
      return -errno.KVM_EAGAIN;
    default:
      return -errno.KVM_EFAULT;
  }
}
