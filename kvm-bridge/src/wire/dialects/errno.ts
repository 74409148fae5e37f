// SPDX-License-Identifier: Apache-2.0
/**
 * KVM error numbers of `include/uapi/linux/kvm_para.h` (kvmi-abi §7). The kernel sends them negated
 * in `kvmi_error_code.err`; `KvmiRemoteError.errno` keeps the positive value. Shared by every
 * dialect: v8..v12 and the product dialect use the same numbers.
 */

/** Unknown message id (the hypercall ABI's ENOSYS, not the host's 38). */
export const KVM_ENOSYS = 1000;
/** Disallowed command or event. */
export const KVM_EPERM = 1;
/** Unknown command/event id in CHECK_*, unmapped gpa, missing CPUID leaf. */
export const KVM_ENOENT = 2;
/** Unused by KVMI v9. */
export const KVM_E2BIG = 7;
/** vCPU-scoped message to a vCPU that is not ready yet. */
export const KVM_EAGAIN = 11;
/** Allocation failure in GET_REGISTERS, GET/SET_XSAVE, SET_PAGE_ACCESS. */
export const KVM_ENOMEM = 12;
/** Unused by KVMI v9. */
export const KVM_EFAULT = 14;
/** Too many pending pauses, an injection in flight, #BP held by userspace. */
export const KVM_EBUSY = 16;
/** Non-zero padding, bad vCPU, out-of-range argument. */
export const KVM_EINVAL = 22;
/** SET_REGISTERS outside an event; no hardware support (singlestep, descriptor exits). */
export const KVM_EOPNOTSUPP = 95;

/** Kernel name of each KVM error number, for logs and error metadata. */
export const KVM_ERRNO_NAMES: Readonly<Record<number, string>> = Object.freeze({
  [KVM_EPERM]: "KVM_EPERM",
  [KVM_ENOENT]: "KVM_ENOENT",
  [KVM_E2BIG]: "KVM_E2BIG",
  [KVM_EAGAIN]: "KVM_EAGAIN",
  [KVM_ENOMEM]: "KVM_ENOMEM",
  [KVM_EFAULT]: "KVM_EFAULT",
  [KVM_EBUSY]: "KVM_EBUSY",
  [KVM_EINVAL]: "KVM_EINVAL",
  [KVM_EOPNOTSUPP]: "KVM_EOPNOTSUPP",
  [KVM_ENOSYS]: "KVM_ENOSYS",
});

/** The numbers above as one object: what `@kvmi/kvm-bridge/codec` exports as `errno`. */
export const KVM_ERRNO = Object.freeze({
  KVM_ENOSYS,
  KVM_EPERM,
  KVM_ENOENT,
  KVM_E2BIG,
  KVM_EAGAIN,
  KVM_ENOMEM,
  KVM_EFAULT,
  KVM_EBUSY,
  KVM_EINVAL,
  KVM_EOPNOTSUPP,
  KVM_ERRNO_NAMES,
});
