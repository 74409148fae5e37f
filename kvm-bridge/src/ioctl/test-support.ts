// SPDX-License-Identifier: Apache-2.0
/**
 * Test helpers for the ioctl layer (not exported from the package):
 * - the /dev/kvm requirement: tests that need it fail with a message naming what is missing
 *   (conventions §11), unless `KVMI_BRIDGE_NO_KVM=1` opts out;
 * - a recording wrapper around the real libc, to prove what reached the kernel;
 * - a scripted fake kernel, to exercise the KVMI paths a stock kernel cannot reach.
 */
import { accessSync, constants as fsConstants, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Libc, SyscallResult } from "./kvm.js";
import { ffiLibc } from "./kvm.js";
import { KVM_CHECK_EXTENSION, KVM_CREATE_VM, KVM_GET_API_VERSION } from "./table.js";

export const DEV_KVM = "/dev/kvm";

/** `KVMI_BRIDGE_NO_KVM=1`: the documented opt-out for hosts without /dev/kvm. */
export function devKvmOptedOut(): boolean {
  return process.env["KVMI_BRIDGE_NO_KVM"] === "1";
}

/**
 * Throws (failing the calling test) when `path` cannot be opened read-write, saying what is missing.
 */
export function assertDevKvm(path: string = DEV_KVM): void {
  try {
    accessSync(path, fsConstants.R_OK | fsConstants.W_OK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? "unknown error";
    const what = code === "ENOENT" ? `${path} is missing` : `${path} is not accessible read-write (${code})`;
    throw new Error(
      `${what}: these tests need a host with KVM (load kvm_intel/kvm_amd, or pass --device /dev/kvm). ` +
        "Set KVMI_BRIDGE_NO_KVM=1 to skip them on a machine without KVM.",
    );
  }
}

/** The real libc, with every ioctl request number recorded before it is issued. */
export function recordingLibc(): { libc: Libc; requests: number[] } {
  const real = ffiLibc();
  const requests: number[] = [];
  const libc: Libc = {
    open: (path, flags) => real.open(path, flags),
    close: (fd) => real.close(fd),
    ioctl: (fd, request, arg) => {
      requests.push(request);
      return real.ioctl(fd, request, arg);
    },
    ioctlAsync: (fd, request, arg) => {
      requests.push(request);
      return real.ioctlAsync(fd, request, arg);
    },
  };
  return { libc, requests };
}

/** One ioctl as the fake kernel saw it. */
export interface FakeIoctlCall {
  readonly fd: number;
  readonly request: number;
  readonly arg: number | Uint8Array;
  /** A copy of the argument bytes at call time (pointer arguments only). */
  readonly bytes: Uint8Array | null;
}

/** A scripted kernel behind the {@link Libc} seam. */
export interface FakeKernel {
  readonly libc: Libc;
  readonly calls: FakeIoctlCall[];
  readonly closed: number[];
  /** Answers of KVM_CHECK_EXTENSION by cap number (default 0). */
  readonly caps: Map<number, number>;
  /** Result of the next KVMI (non-KVM_*) ioctl; default success. */
  nextResult: SyscallResult;
  /** When set, async ioctls wait for this promise before answering. */
  gate: Promise<void> | null;
  /** `open` fails with this errno when set. */
  openErrno: number | null;
}

export function fakeKernel(caps: Record<number, number> = {}): FakeKernel {
  let nextFd = 100;
  const kernel: FakeKernel = {
    calls: [],
    closed: [],
    caps: new Map(Object.entries(caps).map(([k, v]) => [Number(k), v])),
    nextResult: { value: 0, errno: 0 },
    gate: null,
    openErrno: null,
    libc: {
      open: () => (kernel.openErrno === null ? { value: nextFd++, errno: 0 } : { value: -1, errno: kernel.openErrno }),
      close: (fd) => {
        kernel.closed.push(fd);
        return { value: 0, errno: 0 };
      },
      ioctl: (fd, request, arg) => {
        kernel.calls.push({ fd, request, arg, bytes: null });
        if (request === KVM_GET_API_VERSION.number) return { value: 12, errno: 0 };
        if (request === KVM_CHECK_EXTENSION.number) return { value: kernel.caps.get(arg) ?? 0, errno: 0 };
        return { value: -1, errno: 25 /* ENOTTY */ };
      },
      ioctlAsync: async (fd, request, arg) => {
        kernel.calls.push({ fd, request, arg, bytes: typeof arg === "number" ? null : Uint8Array.from(arg) });
        if (kernel.gate !== null) await kernel.gate;
        if (request === KVM_CREATE_VM.number) return { value: nextFd++, errno: 0 };
        return kernel.nextResult;
      },
    },
  };
  return kernel;
}

/** A temporary file standing in for /sys/module/kvm/parameters/introspection. */
export function fakeIntrospectionParam(value: "Y" | "N"): string {
  const dir = mkdtempSync(join(tmpdir(), "kvmi-param-"));
  const path = join(dir, "introspection");
  writeFileSync(path, `${value}\n`);
  return path;
}

/** A path that certainly does not exist. */
export function missingPath(): string {
  return join(mkdtempSync(join(tmpdir(), "kvmi-missing-")), "absent");
}

/**
 * CHECK_EXTENSION answers of kernels, by cap number (only the numbers the probe asks about).
 * `mainline6x` mirrors this CI host (Linux 6.x, Intel): 184/206 answer 1 for mainline reasons.
 */
export const KERNELS = {
  v9: { 184: 1 },
  mainline6x: { 183: 1, 184: 1, 188: 1, 189: 1, 192: 1048576, 195: 2031619, 200: 1, 203: 1, 206: 1, 208: 4096, 209: 1 },
  v12: { 183: 1, 184: 1, 188: 1, 189: 1, 192: 65536, 195: 1, 200: 1, 203: 1, 206: 1 },
  /** Product dialect with cap 180 on a 5.9 base: fits both v8/kvmi-v7 (180) and v9 (184 = LAST_CPU). */
  kvmiV7On59: { 180: 1, 183: 1, 184: 1 },
  /** Product dialect with cap 180 on a 5.8 base: 183 (KVM_CAP_ASYNC_PF_INT) rules out v8, 184 is not there yet. */
  kvmiV7On58: { 180: 1, 183: 1 },
  /** The kvmi-v7-2.11.93 QEMU generation's kernel (cap 999, an old base without the later caps). */
  kvmiV7Cap999: { 999: 1 },
  /** v10/v11 (cap 193): identified, but a dialect the codec does not speak. */
  v10v11: { 183: 1, 184: 1, 188: 1, 189: 1, 192: 65536, 193: 1 },
  /** Patched (the sysfs marker exists) but no known capability answers: an unknown dialect. */
  unknownDialect: {},
} as const satisfies Record<string, Record<number, number>>;
