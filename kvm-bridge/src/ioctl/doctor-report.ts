// SPDX-License-Identifier: Apache-2.0
/**
 * What `kvmi-bridge doctor` reports: the shape of {@link DoctorReport}, its exit codes and the
 * conclusion text for a host without KVMI. The report is public API (`@kvmi/kvm-bridge/ioctl`; the
 * CLI exits with its code), so its definition stands on its own, apart from the checks that fill
 * it in (doctor.ts) and the text rendering (format-doctor-report.ts).
 */
import type { IntrospectionMarker } from "./probe.js";
import type { KvmiIoctlDialectId } from "./table.js";

/** The /dev/kvm check. */
export interface DoctorDevice {
  readonly path: string;
  /** The device node exists. */
  readonly present: boolean;
  /** It could be opened read-write. */
  readonly openable: boolean;
  /** Host errno of the failed stat/open, else null. */
  readonly errno: number | null;
  /** `ENOENT`, `EACCES`, …, else null. */
  readonly errnoName: string | null;
  /** One sentence for humans. */
  readonly detail: string;
}

/** One CHECK_EXTENSION number asked about. */
export interface DoctorCapability {
  readonly cap: number;
  /** `introspection`: some dialect's KVM_CAP_INTROSPECTION; `newer-mainline`: a dialect-age check (probe.ts). */
  readonly role: "introspection" | "newer-mainline";
  /** Dialect labels using this number as KVM_CAP_INTROSPECTION, or checked against it. */
  readonly dialects: readonly string[];
  /** The mainline capability with this number, if known. */
  readonly mainlineName: string | null;
  /** Answer on the /dev/kvm fd (null: not asked or failed). */
  readonly system: number | null;
  /** Answer on the scratch VM fd (null: no VM or failed). */
  readonly vm: number | null;
}

/** One KVMI ioctl of a dialect: its kernel name and request number (`0x4018AEC3`). */
export interface DoctorIoctl {
  readonly name: string;
  readonly number: string;
}

/** A dialect the kernel's answers fit, with the ioctl numbers the bridge would issue for it. */
export interface DoctorDialect {
  readonly dialect: KvmiIoctlDialectId;
  readonly label: string;
  /** Its KVM_CAP_INTROSPECTION number. */
  readonly cap: number;
  readonly ioctls: readonly DoctorIoctl[];
}

/** The KVMI verdict. */
export interface DoctorKvmi {
  readonly offered: boolean;
  readonly dialect: KvmiIoctlDialectId | null;
  readonly dialectLabel: string | null;
  /** KVMI version (the CHECK_EXTENSION answer) of the identified dialect. */
  readonly version: number | null;
  /**
   * The codec dialect of `@kvmi/kvm-bridge/codec` that speaks this kernel's wire protocol
   * (`v9`, `v12`, `kvmi-v7`), or null (no KVMI, an ambiguous answer, or a dialect the codec lacks).
   */
  readonly codecDialect: string | null;
  /** The bridge issues this dialect's ioctls (every dialect the codec speaks: v9, v12, kvmi-v7). */
  readonly bridgeSupported: boolean;
  /**
   * The KVMI ioctls the bridge would issue on this host (the identified dialect's numbers), empty
   * when it would issue none (no KVMI, ambiguous, or a dialect the codec lacks).
   */
  readonly ioctls: readonly DoctorIoctl[];
  /** Every dialect the answers fit (several: ambiguous, and the bridge refuses to choose). */
  readonly candidates: readonly DoctorDialect[];
  /** The `kvm.introspection` module parameter. */
  readonly marker: IntrospectionMarker;
  /** Why, in one sentence. */
  readonly reason: string;
}

/** Everything `kvmi-bridge doctor` found. */
export interface DoctorReport {
  /** `uname -r`. */
  readonly kernelRelease: string;
  readonly device: DoctorDevice;
  /** KVM_GET_API_VERSION (null when /dev/kvm could not be opened). */
  readonly apiVersion: { readonly value: number | null; readonly expected: number; readonly ok: boolean };
  /** Whether the scratch VM used for VM-fd checks could be created. */
  readonly scratchVm: { readonly created: boolean; readonly error: string | null };
  readonly capabilities: readonly DoctorCapability[];
  readonly kvmi: DoctorKvmi;
  /** What the bridge will talk to. */
  readonly backend: "kernel" | "emulator";
  /** `this kernel offers KVMI vN` or `this kernel does not offer KVMI; the bridge will serve the built-in emulator`. */
  readonly conclusion: string;
  /** What to do about it, most important first. */
  readonly hints: readonly string[];
  /**
   * The process exit code of `kvmi-bridge doctor`: {@link DOCTOR_EXIT_KVMI} when the kernel offers
   * KVMI in one identified dialect, {@link DOCTOR_EXIT_NO_KVMI} when it does not (or KVM itself is
   * unusable), {@link DOCTOR_EXIT_AMBIGUOUS} when it offers KVMI but the dialect cannot be told.
   */
  readonly exitCode: number;
  /** Informative remarks (number collisions seen on this kernel). */
  readonly notes: readonly string[];
}

/** `doctor` exit code: KVMI offered in one identified dialect. */
export const DOCTOR_EXIT_KVMI = 0;
/** `doctor` exit code: no KVMI on this host (or no usable KVM at all). */
export const DOCTOR_EXIT_NO_KVMI = 1;
/** `doctor` exit code: KVMI offered, but its dialect cannot be told from the capabilities. */
export const DOCTOR_EXIT_AMBIGUOUS = 2;

/** The conclusion when KVMI is not usable. */
export const NO_KVMI_CONCLUSION = "this kernel does not offer KVMI; the bridge will serve the built-in emulator";
