// SPDX-License-Identifier: Apache-2.0
/**
 * The KVM ioctl layer: `/dev/kvm`, VM fds, the KVMI VM ioctls of the dialect the probe finds (v9, v12,
 * kvmi-v7; docs/protocol/) and the `kvmi-bridge doctor` checks. All ffi-rs use of kvm-bridge lives below this folder.
 */

// Doctor (what the `kvmi-bridge doctor` CLI prints).
export {
  DOCTOR_EXIT_AMBIGUOUS,
  DOCTOR_EXIT_KVMI,
  DOCTOR_EXIT_NO_KVMI,
  formatDoctorReport,
  NO_KVMI_CONCLUSION,
  runDoctor,
} from "./doctor.js";
export type {
  DoctorCapability,
  DoctorDialect,
  DoctorDevice,
  DoctorIoctl,
  DoctorKvmi,
  DoctorOptions,
  DoctorReport,
} from "./doctor.js";

// Real KVM.
export { errnoName, openKvm } from "./kvm.js";
export type { KvmSystem, KvmVm, OpenKvmOptions } from "./kvm.js";

// Does this kernel offer KVMI?
export { identifyIntrospection, KVM_INTROSPECTION_PARAM_PATH, probedCapNumbers, readIntrospectionMarker } from "./probe.js";
export type { IntrospectionMarker, IntrospectionProbe } from "./probe.js";

// The ioctl table.
export {
  introspectionCapNumbers,
  KVM_API_VERSION,
  KVM_CAP_INTROSPECTION,
  KVM_CHECK_EXTENSION,
  KVM_CREATE_VM,
  KVM_GET_API_VERSION,
  KVM_IOCTLS,
  KVMI_IOCTL_TABLES,
  KVMI_V9_IOCTLS,
  KVMIO,
  kvmiIoctlTable,
} from "./table.js";
export type { IoctlFd, IoctlSpec, KvmiIoctlDialectId, KvmiIoctlName, KvmiIoctlTable, MainlineCap } from "./table.js";

// ioctl number arithmetic.
export {
  _IO,
  _IOC,
  _IOC_DIR,
  _IOC_NONE,
  _IOC_NR,
  _IOC_READ,
  _IOC_SIZE,
  _IOC_TYPE,
  _IOC_WRITE,
  _IOR,
  _IOW,
  _IOWR,
  formatIoctlNumber,
} from "./ioc.js";
export type { IocDirection } from "./ioc.js";

// ---------------------------------------------------------------------------------------------
// Not semver-stable.
// ---------------------------------------------------------------------------------------------

/** @internal */
export { ffiLibc } from "./kvm.js";
/** @internal */
export type { Libc, SyscallResult } from "./kvm.js";
