// SPDX-License-Identifier: Apache-2.0
/**
 * `kvmi-bridge doctor`: what this host offers, in a structured report and as text. It only opens
 * /dev/kvm, asks KVM_GET_API_VERSION and KVM_CHECK_EXTENSION (on the system fd and on a scratch VM),
 * and reads one sysfs file; it never issues a KVMI ioctl (see `probe.ts` for why those are unsafe to
 * try). The verdict uses the same rules as the ioctl guard in `kvm.ts`, on the VM fd. This file runs
 * the checks; the report's shape is in doctor-report.ts and its text rendering in
 * format-doctor-report.ts (both re-exported here, where the doctor's users import them).
 */
import { statSync } from "node:fs";
import { release } from "node:os";
import { KvmiError, KvmiRemoteError } from "../errors.js";
import type { KvmSystem, KvmVm, Libc } from "./kvm.js";
import { errnoName, openKvm } from "./kvm.js";
import { identifyIntrospection, KVM_INTROSPECTION_PARAM_PATH, probedCapNumbers, readIntrospectionMarker } from "./probe.js";
import { formatIoctlNumber } from "./ioc.js";
import type { KvmiIoctlTable } from "./table.js";
import { KVM_API_VERSION, KVMI_IOCTL_TABLES } from "./table.js";
import { DOCTOR_EXIT_AMBIGUOUS, DOCTOR_EXIT_KVMI, DOCTOR_EXIT_NO_KVMI, NO_KVMI_CONCLUSION } from "./doctor-report.js";
import type { DoctorCapability, DoctorDevice, DoctorIoctl, DoctorReport } from "./doctor-report.js";

export { DOCTOR_EXIT_AMBIGUOUS, DOCTOR_EXIT_KVMI, DOCTOR_EXIT_NO_KVMI, NO_KVMI_CONCLUSION } from "./doctor-report.js";
export type { DoctorCapability, DoctorDevice, DoctorDialect, DoctorIoctl, DoctorKvmi, DoctorReport } from "./doctor-report.js";
export { formatDoctorReport } from "./format-doctor-report.js";

/** Options of {@link runDoctor}. */
export interface DoctorOptions {
  /** @defaultValue `/dev/kvm` */
  readonly kvmPath?: string;
  /** @defaultValue `/sys/module/kvm/parameters/introspection` */
  readonly introspectionParamPath?: string;
  /** @internal */
  readonly libc?: Libc;
}

const HINT_KERNEL =
  "KVMI needs a host kernel built with the KVM introspection patches (KVM-VMI kvmi-v7, or the upstream v9 or v12 " +
  "series, CONFIG_KVM_INTROSPECTION=y); stock distribution kernels do not carry them";
const HINT_PARAM =
  "introspection must also be enabled through the kvm module parameter: boot with kvm.introspection=1 " +
  "or reload the module with `modprobe kvm introspection=1`";

function ioctlsOf(table: KvmiIoctlTable): DoctorIoctl[] {
  return Object.values(table.ioctls).map((spec) => ({ name: spec.name, number: formatIoctlNumber(spec.number) }));
}

function describe(err: unknown): string {
  if (err instanceof KvmiRemoteError) return `${errnoName(err.errno)} (${err.message})`;
  if (err instanceof Error) return err.message;
  return String(err);
}

function deviceDetail(path: string, errno: number): { detail: string; hint: string } {
  switch (errnoName(errno)) {
    case "ENOENT":
      return {
        detail: `${path} does not exist`,
        hint:
          `${path} is missing: load kvm_intel or kvm_amd, enable VT-x/AMD-V in the firmware, ` +
          "or pass the device into the container (--device /dev/kvm)",
      };
    case "EACCES":
      return {
        detail: `permission denied opening ${path}`,
        hint: `permission denied on ${path}: run as a member of the device's group (usually kvm) or as root`,
      };
    case "EPERM":
      return {
        detail: `opening ${path} is not permitted`,
        hint: `opening ${path} is not permitted: the container's device cgroup or seccomp profile must allow it`,
      };
    case "ENXIO":
    case "ENODEV":
      return {
        detail: `${path} exists but KVM is not usable (${errnoName(errno)})`,
        hint: "the kvm module is loaded but hardware virtualization is unavailable or disabled",
      };
    default:
      return { detail: `cannot open ${path}: ${errnoName(errno)}`, hint: `cannot open ${path}: ${errnoName(errno)}` };
  }
}

/**
 * Inspects this host. Never throws for host conditions (missing device, no KVMI, no ffi binding):
 * each becomes part of the report.
 */
export async function runDoctor(options: DoctorOptions = {}): Promise<DoctorReport> {
  const kvmPath = options.kvmPath ?? "/dev/kvm";
  const hints: string[] = [];
  const notes: string[] = [];

  let present = false;
  let statErrno: number | null = null;
  try {
    statSync(kvmPath);
    present = true;
  } catch (err) {
    statErrno = (err as NodeJS.ErrnoException).errno !== undefined ? Math.abs((err as NodeJS.ErrnoException).errno!) : null;
  }

  let device: DoctorDevice;
  let system: KvmSystem | undefined;
  let vm: KvmVm | undefined;
  let apiVersion: number | null = null;
  let scratchVm: DoctorReport["scratchVm"] = { created: false, error: "/dev/kvm not open" };
  const systemAnswers = new Map<number, number>();
  const vmAnswers = new Map<number, number>();
  const marker = readIntrospectionMarker(options.introspectionParamPath ?? KVM_INTROSPECTION_PARAM_PATH);

  try {
    try {
      system = openKvm(kvmPath, options.libc === undefined ? {} : { libc: options.libc });
      device = { path: kvmPath, present: true, openable: true, errno: null, errnoName: null, detail: `${kvmPath} opened read-write` };
    } catch (err) {
      if (err instanceof KvmiRemoteError) {
        const { detail, hint } = deviceDetail(kvmPath, err.errno);
        hints.push(hint);
        device = { path: kvmPath, present, openable: false, errno: err.errno, errnoName: errnoName(err.errno), detail };
      } else if (err instanceof KvmiError) {
        hints.push(`the native ioctl binding (ffi-rs) could not be loaded: ${err.message}`);
        device = { path: kvmPath, present, openable: false, errno: statErrno, errnoName: statErrno === null ? null : errnoName(statErrno), detail: err.message };
      } else {
        throw err;
      }
    }

    if (system !== undefined) {
      try {
        apiVersion = system.getApiVersion();
      } catch (err) {
        notes.push(`KVM_GET_API_VERSION failed: ${describe(err)}`);
      }
      for (const cap of probedCapNumbers()) {
        try {
          systemAnswers.set(cap, system.checkExtension(cap));
        } catch (err) {
          notes.push(`KVM_CHECK_EXTENSION(${cap}) on ${kvmPath} failed: ${describe(err)}`);
        }
      }
      try {
        vm = await system.createVm();
        scratchVm = { created: true, error: null };
        for (const cap of probedCapNumbers()) {
          try {
            vmAnswers.set(cap, vm.checkExtension(cap));
          } catch (err) {
            notes.push(`KVM_CHECK_EXTENSION(${cap}) on the VM fd failed: ${describe(err)}`);
          }
        }
      } catch (err) {
        scratchVm = { created: false, error: describe(err) };
      }
    }
  } finally {
    vm?.close();
    system?.close();
  }

  if (apiVersion !== null && apiVersion !== KVM_API_VERSION) {
    hints.push(`KVM_GET_API_VERSION returned ${apiVersion}, expected ${KVM_API_VERSION}: this KVM is not usable`);
  }

  // The verdict: VM-fd answers when a VM could be created (what the ioctl guard uses), else system-fd answers.
  const answers = vmAnswers.size > 0 ? vmAnswers : systemAnswers;
  const probe = identifyIntrospection(marker, (cap) => answers.get(cap) ?? 0);
  const deviceOk = device.openable && apiVersion === KVM_API_VERSION;
  const dialect = deviceOk ? probe.dialect : null;
  const offered = deviceOk && probe.offered;
  // The same rule as `KvmVm.kvmiIoctls()`: one identified dialect that the codec speaks.
  const bridgeSupported = dialect !== null && dialect.bridgeSupported && dialect.wire !== null;

  const capabilities: DoctorCapability[] = probedCapNumbers().map((cap) => {
    const using = KVMI_IOCTL_TABLES.filter((t) => t.capIntrospection === cap);
    const checking = KVMI_IOCTL_TABLES.filter((t) => t.newerMainlineCaps.some((n) => n.cap === cap));
    const role = using.length > 0 ? "introspection" : "newer-mainline";
    const mainlineName =
      KVMI_IOCTL_TABLES.find((t) => t.capMainlineCollision?.cap === cap)?.capMainlineCollision?.name ??
      checking.flatMap((t) => t.newerMainlineCaps).find((n) => n.cap === cap)?.name ??
      null;
    return {
      cap,
      role,
      dialects: (role === "introspection" ? using : checking).map((t) => t.label),
      mainlineName,
      system: systemAnswers.get(cap) ?? null,
      vm: vmAnswers.get(cap) ?? null,
    };
  });

  if (deviceOk && !marker.present) {
    const collided = capabilities.filter((c) => c.role === "introspection" && ((c.vm ?? c.system ?? 0) > 0));
    for (const c of collided) {
      notes.push(
        `CHECK_EXTENSION(${c.cap}) = ${c.vm ?? c.system} here means mainline ${c.mainlineName ?? "capability " + c.cap}, ` +
          `not KVM_CAP_INTROSPECTION of ${c.dialects.join("/")}: the numbers were reused after the KVMI series`,
      );
    }
  }

  let conclusion: string;
  let exitCode = DOCTOR_EXIT_NO_KVMI;
  let backend: DoctorReport["backend"] = "emulator";
  if (offered && dialect !== null) {
    exitCode = DOCTOR_EXIT_KVMI;
    const wire = dialect.wire === null ? "" : ` (codec dialect ${dialect.wire.name})`;
    conclusion = `this kernel offers KVMI ${dialect.label}${wire}`;
    if (bridgeSupported) {
      backend = "kernel";
    } else {
      hints.push(
        `the bridge has no codec for KVMI ${dialect.label} (it speaks v9, v12 and kvmi-v7); it will serve the built-in emulator`,
      );
    }
    if (marker.enabled === false) {
      hints.push(`kvm.introspection is off, so KVM_INTROSPECTION_HOOK will fail with EPERM; ${HINT_PARAM}`);
    }
  } else if (offered) {
    exitCode = DOCTOR_EXIT_AMBIGUOUS;
    conclusion = `this kernel offers KVMI but its dialect is ambiguous; the bridge will serve the built-in emulator`;
    hints.push(`cannot tell the dialect apart (${probe.reason}); the bridge only issues KVMI ioctls once the dialect is certain`);
  } else {
    conclusion = NO_KVMI_CONCLUSION;
    if (deviceOk) {
      if (marker.present) {
        hints.push(marker.enabled === false ? HINT_PARAM : `the kernel carries KVMI patches but: ${probe.reason}`);
      } else {
        hints.push(HINT_KERNEL, HINT_PARAM);
      }
    }
  }

  return {
    kernelRelease: release(),
    device,
    apiVersion: { value: apiVersion, expected: KVM_API_VERSION, ok: apiVersion === KVM_API_VERSION },
    scratchVm,
    capabilities,
    kvmi: {
      offered,
      dialect: dialect?.id ?? null,
      dialectLabel: dialect?.label ?? null,
      version: dialect === null ? null : probe.kvmiVersion,
      codecDialect: dialect?.wire?.name ?? null,
      bridgeSupported,
      ioctls: bridgeSupported && dialect !== null ? ioctlsOf(dialect) : [],
      candidates: deviceOk
        ? probe.candidates.map((t) => ({ dialect: t.id, label: t.label, cap: t.capIntrospection, ioctls: ioctlsOf(t) }))
        : [],
      marker,
      reason: deviceOk ? probe.reason : `KVM itself is not usable: ${device.detail}`,
    },
    backend,
    conclusion,
    hints,
    exitCode,
    notes,
  };
}
