// SPDX-License-Identifier: Apache-2.0
/**
 * The ioctl layer against this host's real /dev/kvm (the `system` test project: real kernel I/O
 * stays out of the unit project). Written for both kinds of host: a stock kernel, where every KVMI
 * number must be refused without reaching the kernel, and a kernel with KVMI, where the probe must
 * name one dialect. The probe's decisions on both kinds are tested at the ioctl boundary in
 * kvm.test.ts and doctor.test.ts with scripted kernels.
 */
import { readlinkSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { KvmiRemoteError, KvmiTransportError, KvmiUnsupportedError } from "../errors.js";
import { encode } from "../wire/codec.js";
import { kvmIntrospectionFeature, kvmIntrospectionHook } from "../wire/layouts/ioctl.js";
import { ffiLibc, openKvm } from "./kvm.js";
import { readIntrospectionMarker } from "./probe.js";
import { KVM_CHECK_EXTENSION, KVM_CREATE_VM, KVM_GET_API_VERSION, KVMI_IOCTL_TABLES, KVMI_V9_IOCTLS } from "./table.js";
import {
  assertDevKvm,
  DEV_KVM,
  devKvmOptedOut,
  missingPath,
  recordingLibc,
} from "./test-support.js";

const KVMI_NUMBERS = new Set(KVMI_IOCTL_TABLES.flatMap((t) => Object.values(t.ioctls).map((s) => s.number)));
const hookArg = (): Uint8Array => encode(kvmIntrospectionHook, { fd: 7, uuid: new Uint8Array(16).fill(0xab) });
const featureArg = (): Uint8Array => encode(kvmIntrospectionFeature, { allow: 1, id: -1 });

/** Calls every v9 KVMI ioctl and returns the errors (all five must fail here). */
async function callAllKvmi(vm: Awaited<ReturnType<ReturnType<typeof openKvm>["createVm"]>>): Promise<unknown[]> {
  const results = await Promise.allSettled([
    vm.introspectionHook(hookArg()),
    vm.introspectionUnhook(),
    vm.introspectionCommand(featureArg()),
    vm.introspectionEvent(featureArg()),
    vm.introspectionPreunhook(),
  ]);
  return results.map((r) => (r.status === "rejected" ? r.reason : new Error("unexpectedly fulfilled")));
}

describe.skipIf(devKvmOptedOut())("real /dev/kvm (set KVMI_BRIDGE_NO_KVM=1 to skip on hosts without KVM)", () => {
  it("reports KVM API version 12", () => {
    assertDevKvm();
    const kvm = openKvm(DEV_KVM);
    try {
      expect(kvm.getApiVersion()).toBe(12);
    } finally {
      kvm.close();
    }
    expect(kvm.closed).toBe(true);
  });

  it("creates a VM and closes its fd", async () => {
    assertDevKvm();
    const kvm = openKvm();
    try {
      const vm = await kvm.createVm();
      let fd: number;
      try {
        fd = vm.fd;
        expect(readlinkSync(`/proc/self/fd/${fd}`)).toBe("anon_inode:kvm-vm");
        // KVM_CAP_CHECK_EXTENSION_VM (105): CHECK_EXTENSION works on the VM fd.
        expect(vm.checkExtension(105)).toBe(1);
      } finally {
        vm.close();
      }
      expect(vm.closed).toBe(true);
      expect(() => readlinkSync(`/proc/self/fd/${fd}`)).toThrow(/ENOENT/);
      expect(() => vm.checkExtension(184)).toThrow(KvmiTransportError);
      vm.close(); // idempotent
    } finally {
      kvm.close();
    }
  });

  it("does not take CHECK_EXTENSION(KVM_CAP_INTROSPECTION) at face value", async () => {
    assertDevKvm();
    const kvmiHost = readIntrospectionMarker().present;
    const kvm = openKvm();
    try {
      const vm = await kvm.createVm();
      try {
        for (const table of KVMI_IOCTL_TABLES) {
          expect(vm.checkExtension(table.capIntrospection)).toBe(kvm.checkExtension(table.capIntrospection));
        }
        const probe = vm.probeIntrospection();
        if (kvmiHost) {
          // The KVMI patches are there: the probe must say so and name at most one dialect.
          expect(probe.offered, probe.reason).toBe(true);
          expect(probe.candidates.length).toBeGreaterThan(0);
          return;
        }
        expect(probe.offered).toBe(false);
        expect(probe.dialect).toBeNull();
        if (vm.checkExtension(KVMI_V9_IOCTLS.capIntrospection) > 0) {
          // 184 is KVM_CAP_LAST_CPU on mainline: the answer is real, but it is not KVMI.
          expect(probe.reason).toMatch(/KVM_CAP_LAST_CPU/);
        }
      } finally {
        vm.close();
      }
    } finally {
      kvm.close();
    }
  });

  it("on a host without a KVMI dialect the bridge speaks, refuses every KVMI ioctl with a clear error, and none reaches the kernel", async () => {
    assertDevKvm();
    const openProbe = openKvm();
    let kvmiHost: boolean;
    try {
      const scratch = await openProbe.createVm();
      kvmiHost = scratch.kvmiIoctls() !== null;
      scratch.close();
    } finally {
      openProbe.close();
    }
    // On a KVMI host these ioctls are real and would be issued; that path is tested with scripted kernels.
    if (kvmiHost) return;
    const { libc, requests } = recordingLibc();
    const kvm = openKvm(DEV_KVM, { libc });
    try {
      const vm = await kvm.createVm();
      try {
        const errors = await callAllKvmi(vm);
        for (const [i, name] of Object.keys(KVMI_V9_IOCTLS.ioctls).entries()) {
          const err = errors[i];
          expect(err).toBeInstanceOf(KvmiUnsupportedError);
          expect((err as KvmiUnsupportedError).context.command).toBe(name);
          expect((err as Error).message).toMatch(new RegExp(`^${name} refused: this kernel offers no KVMI dialect the bridge speaks`));
          expect((err as Error).message).toMatch(/No KVMI ioctl was issued/);
        }
      } finally {
        vm.close();
      }
    } finally {
      kvm.close();
    }
    expect(requests.filter((r) => KVMI_NUMBERS.has(r))).toEqual([]);
    const allowed = new Set([KVM_GET_API_VERSION.number, KVM_CREATE_VM.number, KVM_CHECK_EXTENSION.number]);
    expect(requests.every((r) => allowed.has(r))).toBe(true);
    expect(requests).toContain(KVM_CREATE_VM.number);
  });

  it("passes buffers to the kernel by address, honouring the view's offset (zero-copy)", async () => {
    assertDevKvm();
    const kvm = openKvm();
    try {
      // KVM_GET_MSR_INDEX_LIST = _IOWR(KVMIO, 0x02, struct kvm_msr_list { __u32 nmsrs; }): with
      // nmsrs = 0 the kernel writes the real count back into our struct and fails with E2BIG.
      const backing = new Uint8Array(12).fill(0xee);
      const list = backing.subarray(4, 8);
      list.fill(0);
      const r = await ffiLibc().ioctlAsync(kvm.fd, 0xc004ae02, list);
      expect(r).toEqual({ value: -1, errno: 7 });
      const nmsrs = new DataView(backing.buffer).getUint32(4, true);
      expect(nmsrs).toBeGreaterThan(0);
      expect([...backing.subarray(0, 4), ...backing.subarray(8)]).toEqual(new Array(8).fill(0xee));
    } finally {
      kvm.close();
    }
  });

  it("turns a failed open into a KvmiRemoteError with the errno", () => {
    const path = missingPath();
    let caught: unknown;
    try {
      openKvm(path);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(KvmiRemoteError);
    expect((caught as KvmiRemoteError).errno).toBe(2);
    expect((caught as KvmiRemoteError).context.command).toBe(`open ${path}`);
  });
});

