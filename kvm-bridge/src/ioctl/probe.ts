// SPDX-License-Identifier: Apache-2.0
/**
 * Does this kernel offer KVMI, and in which dialect? Answered only with KVM_CHECK_EXTENSION (which
 * reads kernel state and is safe with any number) and one sysfs file, so that no KVMI ioctl is ever
 * issued on a kernel where its number means something else (kvmi-abi §2.4 warning).
 *
 * Why CHECK_EXTENSION(KVM_CAP_INTROSPECTION) alone is not enough: every dialect took the next free
 * capability number of its base tree, and mainline later assigned the same numbers. A stock x86
 * kernel answers CHECK_EXTENSION(184) — v9's KVM_CAP_INTROSPECTION — with 1, because 184 is
 * KVM_CAP_LAST_CPU there; 206 (v12) is KVM_CAP_VM_MOVE_ENC_CONTEXT_FROM, 193 (v10/v11) is
 * KVM_CAP_X86_BUS_LOCK_EXIT. So the verdict needs two independent signals:
 *
 * 1. The module parameter `kvm.introspection` (`/sys/module/kvm/parameters/introspection`). Every
 *    KVMI series adds it to `virt/kvm/kvm_main.c` (`module_param_named(introspection, ...)`) and
 *    mainline has no such parameter. Without it, the kernel has no KVMI, whatever the capabilities say.
 * 2. Among the dialects whose capability answers non-zero, keep those whose "newer mainline"
 *    capabilities all answer 0 (see `KvmiIoctlTable.newerMainlineCaps`). A KVMI capability number
 *    is the newest capability its kernel knows, so a kernel that reports a capability added to
 *    mainline after that number was taken cannot be using it for KVMI. Exactly one dialect must remain.
 */
import { readFileSync } from "node:fs";
import type { KvmiIoctlTable } from "./table.js";
import { KVMI_IOCTL_TABLES } from "./table.js";

/** The `kvm.introspection` module parameter added by the KVMI patches (v9 `virt/kvm/kvm_main.c`). */
export const KVM_INTROSPECTION_PARAM_PATH = "/sys/module/kvm/parameters/introspection";

/** What the sysfs module parameter says. */
export interface IntrospectionMarker {
  /** The sysfs path that was read. */
  readonly path: string;
  /** The parameter exists: the running kvm module carries the KVMI patches. */
  readonly present: boolean;
  /** `Y` → true, `N` → false; null when absent or unreadable. HOOK fails with EPERM while false. */
  readonly enabled: boolean | null;
}

/**
 * Reads the `kvm.introspection` module parameter. Never throws: a missing or unreadable file is
 * reported as such (an unreadable but existing file still counts as present).
 */
export function readIntrospectionMarker(path: string = KVM_INTROSPECTION_PARAM_PATH): IntrospectionMarker {
  try {
    const text = readFileSync(path, "utf8").trim();
    const enabled = text === "Y" || text === "1" ? true : text === "N" || text === "0" ? false : null;
    return { path, present: true, enabled };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return { path, present: code !== "ENOENT" && code !== "ENOTDIR", enabled: null };
  }
}

/** Every capability number the probe asks about: each dialect's KVM_CAP_INTROSPECTION and its newer-mainline caps. */
export function probedCapNumbers(tables: readonly KvmiIoctlTable[] = KVMI_IOCTL_TABLES): number[] {
  const caps = new Set<number>();
  for (const table of tables) {
    caps.add(table.capIntrospection);
    for (const newer of table.newerMainlineCaps) caps.add(newer.cap);
  }
  return [...caps].sort((a, b) => a - b);
}

/** The verdict on one kernel (or one VM fd of it). */
export interface IntrospectionProbe {
  readonly marker: IntrospectionMarker;
  /** CHECK_EXTENSION answer for every number of {@link probedCapNumbers}. */
  readonly answers: ReadonlyMap<number, number>;
  /** True when the kernel carries KVMI and reports at least one dialect consistently. */
  readonly offered: boolean;
  /** The single dialect identified, or null (not offered, or ambiguous). */
  readonly dialect: KvmiIoctlTable | null;
  /** Dialects consistent with the answers; more than one means the numbers cannot tell them apart. */
  readonly candidates: readonly KvmiIoctlTable[];
  /** CHECK_EXTENSION(KVM_CAP_INTROSPECTION) of the identified dialect: its KVMI version. */
  readonly kvmiVersion: number | null;
  /** One sentence explaining the verdict, for errors and the doctor. */
  readonly reason: string;
}

function describeCap(table: KvmiIoctlTable): string {
  const mainline = table.capMainlineCollision;
  return mainline === null ? `${table.capIntrospection}` : `${table.capIntrospection} (mainline ${mainline.name})`;
}

/**
 * Decides whether KVMI is offered, from the sysfs marker and CHECK_EXTENSION answers. Pure: the
 * caller supplies `checkExtension` (system or VM fd) and the marker. Errors from `checkExtension`
 * propagate.
 */
export function identifyIntrospection(
  marker: IntrospectionMarker,
  checkExtension: (cap: number) => number,
  tables: readonly KvmiIoctlTable[] = KVMI_IOCTL_TABLES,
): IntrospectionProbe {
  const answers = new Map<number, number>();
  for (const cap of probedCapNumbers(tables)) answers.set(cap, checkExtension(cap));
  const answer = (cap: number): number => answers.get(cap) ?? 0;
  const reporting = tables.filter((t) => answer(t.capIntrospection) > 0);
  const base = { marker, answers };

  if (!marker.present) {
    const nonZero = reporting.filter((t, i) => reporting.findIndex((u) => u.capIntrospection === t.capIntrospection) === i);
    const reason =
      nonZero.length === 0
        ? `no known KVM_CAP_INTROSPECTION number is reported and ${marker.path} does not exist`
        : `${marker.path} does not exist, so the non-zero CHECK_EXTENSION answers for ` +
          `${nonZero.map(describeCap).join(", ")} come from mainline capabilities that reuse the KVMI numbers`;
    return { ...base, offered: false, dialect: null, candidates: [], kvmiVersion: null, reason };
  }

  const candidates = reporting.filter((t) => t.newerMainlineCaps.every((newer) => answer(newer.cap) === 0));
  if (candidates.length === 0) {
    const reason =
      marker.enabled === false
        ? "the kernel carries the KVMI patches but kvm.introspection is off, and it reports no KVMI capability"
        : "the kernel carries the KVMI patches but reports none of the known KVM_CAP_INTROSPECTION numbers " +
          "consistently (unknown dialect)";
    return { ...base, offered: false, dialect: null, candidates, kvmiVersion: null, reason };
  }
  if (candidates.length > 1) {
    const reason =
      `the kernel carries the KVMI patches but its capabilities fit several dialects ` +
      `(${candidates.map((t) => `${t.label} cap ${t.capIntrospection}`).join("; ")})`;
    return { ...base, offered: true, dialect: null, candidates, kvmiVersion: null, reason };
  }
  const dialect = candidates[0]!;
  const kvmiVersion = answer(dialect.capIntrospection);
  return {
    ...base,
    offered: true,
    dialect,
    candidates,
    kvmiVersion,
    reason: `KVM_CAP_INTROSPECTION ${dialect.capIntrospection} answers ${kvmiVersion} and ${marker.path} exists`,
  };
}
