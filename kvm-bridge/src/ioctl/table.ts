// SPDX-License-Identifier: Apache-2.0
/**
 * The ioctl table (conventions §4, kvm-ioctls `kvm_ioctls.rs` style): every ioctl the bridge knows,
 * as data. Request numbers are derived with `_IOC` from the argument layouts in
 * `wire/layouts/ioctl.ts`, never written by hand; the tests compare them with kvmi-abi §2.4.
 *
 * `kvm.ts` issues the numbers of the dialect the probe identified, for every dialect the codec
 * speaks (v9, v12, kvmi-v7: `bridgeSupported`); v8 and v10/v11 are listed so that the doctor can
 * name them.
 *
 * Warning (kvmi-abi §2.4): the KVMI ioctl numbers **and** the KVM_CAP_INTROSPECTION numbers were
 * taken from the free space of the mainline tree the series was based on, and mainline has since
 * reused both. 0xAEC7 is KVM_RESET_DIRTY_RINGS since Linux 5.11, and CHECK_EXTENSION(184) is
 * KVM_CAP_LAST_CPU, which a stock x86 kernel answers with 1. See `probe.ts` for how the bridge
 * tells a KVMI kernel from a mainline one before issuing anything.
 */
import { KvmiArgumentError } from "../errors.js";
import type { Dialect, DialectIoctls } from "../wire/dialect.js";
import { kvmiV7 } from "../wire/dialects/kvmi-v7.js";
import { v12 } from "../wire/dialects/v12.js";
import { v9 } from "../wire/dialects/v9.js";
import type { Layout } from "../wire/layout.js";
import { kvmIntrospectionFeature, kvmIntrospectionHook } from "../wire/layouts/ioctl.js";
import type { IocDirection } from "./ioc.js";
import { _IOC, _IOC_NONE, _IOC_WRITE } from "./ioc.js";

/** The KVM ioctl type byte (`#define KVMIO 0xAE`, `include/uapi/linux/kvm.h`). */
export const KVMIO = 0xae;

/** What KVM_GET_API_VERSION returns on every kernel since 2.6.22 (`KVM_API_VERSION`). */
export const KVM_API_VERSION = 12;

/** Which file descriptor an ioctl is issued on (Documentation/virt/kvm/api.rst §4 "Type"). */
export type IoctlFd = "system" | "vm" | "system-or-vm";

/** One ioctl, as data. */
export interface IoctlSpec {
  /** Kernel name, e.g. `KVM_INTROSPECTION_HOOK`. */
  readonly name: string;
  /** Command number within `KVMIO` (bits 0-7). */
  readonly nr: number;
  /** `_IOC_NONE` (by-value or no argument) or `_IOC_WRITE` (the kernel reads the struct). */
  readonly dir: IocDirection;
  /** The argument struct passed by pointer; null for `_IO` ioctls. Its size is in `number`. */
  readonly arg: Layout | null;
  /**
   * For `_IO` ioctls that take an integer by value (`KVM_CREATE_VM`, `KVM_CHECK_EXTENSION`), what
   * that integer means; null when the argument is unused (passed as 0).
   */
  readonly valueArg: string | null;
  /** The request number: `_IOC(dir, KVMIO, nr, arg?.size ?? 0)`. */
  readonly number: number;
  /** Which fd it goes to. */
  readonly fd: IoctlFd;
  /** A mainline ioctl with the very same request number, if any (kvmi-abi §2.4 warning). */
  readonly mainlineCollision: string | null;
}

function defineIoctl(
  name: string,
  dir: IocDirection,
  nr: number,
  arg: Layout | null,
  fd: IoctlFd,
  extra: { valueArg?: string; mainlineCollision?: string } = {},
): IoctlSpec {
  if ((dir === _IOC_NONE) !== (arg === null)) {
    throw new KvmiArgumentError("dir", `ioctl table: ${name} has direction ${dir} but ${arg === null ? "no" : "an"} argument struct`);
  }
  return Object.freeze({
    name,
    nr,
    dir,
    arg,
    valueArg: extra.valueArg ?? null,
    number: _IOC(dir, KVMIO, nr, arg?.size ?? 0),
    fd,
    mainlineCollision: extra.mainlineCollision ?? null,
  });
}

// ---------------------------------------------------------------------------------------------
// Plain KVM ioctls (Documentation/virt/kvm/api.rst §4.1, §4.2, §4.4)
// ---------------------------------------------------------------------------------------------

/** `KVM_GET_API_VERSION` = `_IO(KVMIO, 0x00)` = 0xAE00. System ioctl; returns {@link KVM_API_VERSION}. */
export const KVM_GET_API_VERSION = defineIoctl("KVM_GET_API_VERSION", _IOC_NONE, 0x00, null, "system");

/** `KVM_CREATE_VM` = `_IO(KVMIO, 0x01)` = 0xAE01. System ioctl; returns a new VM fd. */
export const KVM_CREATE_VM = defineIoctl("KVM_CREATE_VM", _IOC_NONE, 0x01, null, "system", {
  valueArg: "machine type (0 = default x86 VM)",
});

/**
 * `KVM_CHECK_EXTENSION` = `_IO(KVMIO, 0x03)` = 0xAE03. System ioctl, and a VM ioctl when
 * KVM_CAP_CHECK_EXTENSION_VM is present (Linux ≥ 4.0). Returns 0 (unsupported) or a positive
 * capability-specific value. Only ever reads kernel state, so it is safe with any number.
 */
export const KVM_CHECK_EXTENSION = defineIoctl("KVM_CHECK_EXTENSION", _IOC_NONE, 0x03, null, "system-or-vm", {
  valueArg: "capability number (KVM_CAP_*)",
});

/** The plain KVM ioctls the bridge issues. */
export const KVM_IOCTLS: readonly IoctlSpec[] = Object.freeze([KVM_GET_API_VERSION, KVM_CREATE_VM, KVM_CHECK_EXTENSION]);

// ---------------------------------------------------------------------------------------------
// KVMI ioctls, one table per dialect (kvmi-abi §1.2, §2.4)
// ---------------------------------------------------------------------------------------------

/** The five KVMI VM ioctls, by kernel name. */
export type KvmiIoctlName =
  | "KVM_INTROSPECTION_HOOK"
  | "KVM_INTROSPECTION_UNHOOK"
  | "KVM_INTROSPECTION_COMMAND"
  | "KVM_INTROSPECTION_EVENT"
  | "KVM_INTROSPECTION_PREUNHOOK";

/** Dialects whose ioctl numbers are known (kvmi-abi §1.2, §1.5). */
export type KvmiIoctlDialectId = "v9" | "v8" | "v10-v11" | "v12" | "kvmi-v7-2.11.93" | "kvmi-v7";

/** A mainline capability number, with its kernel name. */
export interface MainlineCap {
  readonly cap: number;
  readonly name: string;
}

/** The KVMI ioctls and capability of one dialect. */
export interface KvmiIoctlTable {
  /** Stable id. */
  readonly id: KvmiIoctlDialectId;
  /** For humans: `v9`, `v10/v11`, `kvmi-v7 (cap 999)` (the Bitdefender product dialect, kvmi-abi §1.4). */
  readonly label: string;
  /** `KVM_CAP_INTROSPECTION` in this dialect. */
  readonly capIntrospection: number;
  /** The mainline capability with the same number, which a stock kernel may well report (or null). */
  readonly capMainlineCollision: MainlineCap | null;
  /**
   * Mainline x86 capabilities that did not exist yet when this dialect took its capability number
   * and that every later x86 kernel reports as non-zero. If any of them reports non-zero, the
   * kernel is newer than the dialect's base, so its capability number means something else there.
   * Empty when the base is unknown (the product dialect).
   */
  readonly newerMainlineCaps: readonly MainlineCap[];
  /** The five ioctls. */
  readonly ioctls: Readonly<Record<KvmiIoctlName, IoctlSpec>>;
  /**
   * The codec's table of this dialect (`@kvmi/kvm-bridge/codec`), whose `ioctls` these numbers come
   * from; null for dialects the codec does not speak (v8, v10/v11).
   */
  readonly wire: Dialect | null;
  /** The dialects `kvm.ts` issues ioctls for: those the codec speaks (`wire` set). */
  readonly bridgeSupported: boolean;
  /** False when the numbers come from the sheet's matrix only and were not checked against a header. */
  readonly verified: boolean;
  /** Where the numbers come from. */
  readonly source: string;
}

const KVM_CAP_S390_PROTECTED: MainlineCap = { cap: 180, name: "KVM_CAP_S390_PROTECTED" };
const KVM_CAP_ASYNC_PF_INT: MainlineCap = { cap: 183, name: "KVM_CAP_ASYNC_PF_INT" };
const KVM_CAP_LAST_CPU: MainlineCap = { cap: 184, name: "KVM_CAP_LAST_CPU" };
const KVM_CAP_X86_USER_SPACE_MSR: MainlineCap = { cap: 188, name: "KVM_CAP_X86_USER_SPACE_MSR" };
const KVM_CAP_X86_MSR_FILTER: MainlineCap = { cap: 189, name: "KVM_CAP_X86_MSR_FILTER" };
const KVM_CAP_DIRTY_LOG_RING: MainlineCap = { cap: 192, name: "KVM_CAP_DIRTY_LOG_RING" };
const KVM_CAP_X86_BUS_LOCK_EXIT: MainlineCap = { cap: 193, name: "KVM_CAP_X86_BUS_LOCK_EXIT" };
const KVM_CAP_SET_GUEST_DEBUG2: MainlineCap = { cap: 195, name: "KVM_CAP_SET_GUEST_DEBUG2" };
const KVM_CAP_SREGS2: MainlineCap = { cap: 200, name: "KVM_CAP_SREGS2" };
const KVM_CAP_BINARY_STATS_FD: MainlineCap = { cap: 203, name: "KVM_CAP_BINARY_STATS_FD" };
const KVM_CAP_VM_MOVE_ENC_CONTEXT_FROM: MainlineCap = { cap: 206, name: "KVM_CAP_VM_MOVE_ENC_CONTEXT_FROM" };
const KVM_CAP_XSAVE2: MainlineCap = { cap: 208, name: "KVM_CAP_XSAVE2" };
const KVM_CAP_SYS_ATTRIBUTES: MainlineCap = { cap: 209, name: "KVM_CAP_SYS_ATTRIBUTES" };

/** Command numbers of the five ioctls, in the order of the kvmi-abi §1.2 matrix. */
interface KvmiNrs {
  readonly hook: number;
  readonly unhook: number;
  readonly command: number;
  readonly event: number;
  readonly preunhook: number;
}

function kvmiIoctls(nrs: KvmiNrs, collisions: Partial<Record<KvmiIoctlName, string>> = {}): KvmiIoctlTable["ioctls"] {
  const vm = (name: KvmiIoctlName, dir: IocDirection, nr: number, arg: Layout | null): IoctlSpec => {
    const collision = collisions[name];
    return defineIoctl(name, dir, nr, arg, "vm", collision === undefined ? {} : { mainlineCollision: collision });
  };
  return Object.freeze({
    KVM_INTROSPECTION_HOOK: vm("KVM_INTROSPECTION_HOOK", _IOC_WRITE, nrs.hook, kvmIntrospectionHook),
    KVM_INTROSPECTION_UNHOOK: vm("KVM_INTROSPECTION_UNHOOK", _IOC_NONE, nrs.unhook, null),
    KVM_INTROSPECTION_COMMAND: vm("KVM_INTROSPECTION_COMMAND", _IOC_WRITE, nrs.command, kvmIntrospectionFeature),
    KVM_INTROSPECTION_EVENT: vm("KVM_INTROSPECTION_EVENT", _IOC_WRITE, nrs.event, kvmIntrospectionFeature),
    KVM_INTROSPECTION_PREUNHOOK: vm("KVM_INTROSPECTION_PREUNHOOK", _IOC_NONE, nrs.preunhook, null),
  });
}

/** The dialect table's numbers: the codec's dialects are the one source of them (docs/decisions/0010). */
const nrsOf = ({ hook, unhook, command, event, preunhook }: DialectIoctls): KvmiNrs => ({ hook, unhook, command, event, preunhook });

/** The capability number of `dialect` at `index` of its list (kvmi-v7 has one per QEMU generation). */
function capOf(dialect: Dialect, index = 0): number {
  const cap = dialect.ioctls.capIntrospection[index];
  if (cap === undefined) throw new KvmiArgumentError("capIntrospection", `${dialect.name} has no capability number #${index}`);
  return cap;
}

const V8_V9_NRS: KvmiNrs = nrsOf(v9.ioctls);
/** Exact-number collisions of 0xc3..0xc7 with mainline (kvmi-abi §2.4). */
const V8_V9_COLLISIONS: Partial<Record<KvmiIoctlName, string>> = {
  KVM_INTROSPECTION_UNHOOK: "KVM_S390_CLEAR_RESET (s390 only)",
  KVM_INTROSPECTION_PREUNHOOK: "KVM_RESET_DIRTY_RINGS (Linux >= 5.11, all architectures with a dirty ring)",
};

/** The pinned dialect: upstream series v9 (kvmi-abi §2.4). `KVM_CAP_INTROSPECTION` = 184. */
export const KVMI_V9_IOCTLS: KvmiIoctlTable = Object.freeze({
  id: "v9",
  label: "v9",
  capIntrospection: capOf(v9),
  capMainlineCollision: KVM_CAP_LAST_CPU,
  newerMainlineCaps: [KVM_CAP_X86_USER_SPACE_MSR, KVM_CAP_X86_MSR_FILTER, KVM_CAP_DIRTY_LOG_RING],
  ioctls: kvmiIoctls(V8_V9_NRS, V8_V9_COLLISIONS),
  wire: v9,
  bridgeSupported: true,
  verified: true,
  source: "kvmi-abi §2.4; v9 series patches 02/37/38/39/44 (include/uapi/linux/kvm.h)",
});

/**
 * `KVM_CAP_INTROSPECTION` of the pinned dialect (v9). Other dialects use other numbers; see
 * {@link KVMI_IOCTL_TABLES}. Mainline reuses 184 as KVM_CAP_LAST_CPU: never treat a non-zero answer
 * as proof of KVMI on its own (see `probe.ts`).
 */
export const KVM_CAP_INTROSPECTION = KVMI_V9_IOCTLS.capIntrospection;

/**
 * Every dialect whose ioctl numbers are known, v9 first (docs/protocol/). v9, v12 and kvmi-v7 are
 * `bridgeSupported`. Capability numbers are unique except 180 (v8 and the 2023 product QEMU).
 */
export const KVMI_IOCTL_TABLES: readonly KvmiIoctlTable[] = Object.freeze([
  KVMI_V9_IOCTLS,
  Object.freeze<KvmiIoctlTable>({
    id: "v8",
    label: "v8",
    capIntrospection: 180,
    capMainlineCollision: KVM_CAP_S390_PROTECTED,
    newerMainlineCaps: [KVM_CAP_ASYNC_PF_INT, KVM_CAP_X86_USER_SPACE_MSR, KVM_CAP_X86_MSR_FILTER, KVM_CAP_DIRTY_LOG_RING],
    ioctls: kvmiIoctls(V8_V9_NRS, V8_V9_COLLISIONS),
    wire: null,
    bridgeSupported: false,
    verified: true,
    source: "kvmi-abi §1.1, §1.2 (same ioctl numbers as v9)",
  }),
  Object.freeze<KvmiIoctlTable>({
    id: "v10-v11",
    label: "v10/v11",
    capIntrospection: 193,
    capMainlineCollision: KVM_CAP_X86_BUS_LOCK_EXIT,
    newerMainlineCaps: [KVM_CAP_SET_GUEST_DEBUG2, KVM_CAP_SREGS2, KVM_CAP_BINARY_STATS_FD],
    ioctls: kvmiIoctls({ hook: 0xc8, unhook: 0xc9, command: 0xca, event: 0xcb, preunhook: 0xcc }),
    wire: null,
    bridgeSupported: false,
    verified: true,
    source: "kvmi-abi §1.2, §1.3 item 11",
  }),
  Object.freeze<KvmiIoctlTable>({
    id: "v12",
    label: "v12",
    capIntrospection: capOf(v12),
    capMainlineCollision: KVM_CAP_VM_MOVE_ENC_CONTEXT_FROM,
    newerMainlineCaps: [KVM_CAP_XSAVE2, KVM_CAP_SYS_ATTRIBUTES],
    ioctls: kvmiIoctls(nrsOf(v12.ioctls)),
    wire: v12,
    bridgeSupported: true,
    verified: true,
    source: "kvmi-abi §1.2 (KVM-VMI/qemu kvmi-v12 linux-headers)",
  }),
  Object.freeze<KvmiIoctlTable>({
    id: "kvmi-v7-2.11.93",
    label: "kvmi-v7 (cap 999)",
    capIntrospection: capOf(kvmiV7, 1),
    capMainlineCollision: null,
    newerMainlineCaps: [],
    ioctls: kvmiIoctls(nrsOf(kvmiV7.ioctls)),
    wire: kvmiV7,
    bridgeSupported: true,
    verified: false,
    source:
      "kvmi-abi §1.2 matrix only; UNHOOK/PREUNHOOK order unverified (RFC v6 headers have UNHOOK = 0xfe); " +
      "argument structs assumed unchanged",
  }),
  Object.freeze<KvmiIoctlTable>({
    id: "kvmi-v7",
    label: "kvmi-v7 (cap 180)",
    capIntrospection: capOf(kvmiV7, 0),
    capMainlineCollision: KVM_CAP_S390_PROTECTED,
    newerMainlineCaps: [],
    ioctls: kvmiIoctls(nrsOf(kvmiV7.ioctls)),
    wire: kvmiV7,
    bridgeSupported: true,
    verified: false,
    source:
      "kvmi-abi §1.2, §1.5 matrix only; UNHOOK/PREUNHOOK order unverified; argument structs assumed unchanged",
  }),
]);

/** The table of dialect `id`. */
export function kvmiIoctlTable(id: KvmiIoctlDialectId): KvmiIoctlTable {
  const table = KVMI_IOCTL_TABLES.find((t) => t.id === id);
  if (table === undefined) throw new KvmiArgumentError("id", `unknown KVMI ioctl dialect ${id}`);
  return table;
}

/**
 * Every distinct KVM_CAP_INTROSPECTION number across dialects, ascending (180, 184, 193, 206, 999),
 * with the dialects that use it. This is what the doctor asks CHECK_EXTENSION about.
 */
export function introspectionCapNumbers(): ReadonlyArray<{ readonly cap: number; readonly dialects: readonly KvmiIoctlTable[] }> {
  const byCap = new Map<number, KvmiIoctlTable[]>();
  for (const table of KVMI_IOCTL_TABLES) {
    const list = byCap.get(table.capIntrospection) ?? [];
    list.push(table);
    byCap.set(table.capIntrospection, list);
  }
  return [...byCap.entries()].sort((a, b) => a[0] - b[0]).map(([cap, dialects]) => ({ cap, dialects }));
}
