// SPDX-License-Identifier: Apache-2.0
/**
 * The ioctl layer at the ioctl boundary, with scripted kernels (no /dev/kvm I/O here; that is
 * kvm.system.test.ts): the probe's decisions on hosts with and without KVMI, and what reaches the
 * kernel in each case.
 */
import { describe, expect, it } from "vitest";
import { KvmiArgumentError, KvmiRemoteError, KvmiTransportError, KvmiUnsupportedError } from "../errors.js";
import { encode } from "../wire/codec.js";
import { kvmIntrospectionFeature, kvmIntrospectionHook } from "../wire/layouts/ioctl.js";
import { openKvm } from "./kvm.js";
import { KVMI_IOCTL_TABLES } from "./table.js";
import { assertDevKvm, fakeIntrospectionParam, fakeKernel, KERNELS, missingPath } from "./test-support.js";

const KVMI_NUMBERS = new Set(KVMI_IOCTL_TABLES.flatMap((t) => Object.values(t.ioctls).map((s) => s.number)));
const hookArg = (): Uint8Array => encode(kvmIntrospectionHook, { fd: 7, uuid: new Uint8Array(16).fill(0xab) });
const featureArg = (): Uint8Array => encode(kvmIntrospectionFeature, { allow: 1, id: -1 });

/** Calls every KVMI ioctl and returns the errors (all five must fail here). */
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

describe("the /dev/kvm requirement", () => {
  it("fails, naming what is missing and the opt-out", () => {
    const path = missingPath();
    expect(() => assertDevKvm(path)).toThrow(`${path} is missing`);
    expect(() => assertDevKvm(path)).toThrow(/KVMI_BRIDGE_NO_KVM=1/);
  });
});

describe("KVMI ioctls against a scripted kernel (no /dev/kvm needed)", () => {
  // Request numbers written out from the ioctl sections of docs/protocol/v9.md, v12.md and kvmi-v7.md
  // (not derived from the tables under test), in the order HOOK, COMMAND, EVENT, PREUNHOOK, UNHOOK.
  const DIALECT_MATRIX = [
    { kernel: "v9", dialect: "v9", numbers: [0x4018aec3, 0x4008aec5, 0x4008aec6, 0xaec7, 0xaec4] },
    { kernel: "v12", dialect: "v12", numbers: [0x4018aec8, 0x4008aeca, 0x4008aecb, 0xaecc, 0xaec9] },
    { kernel: "kvmiV7On58", dialect: "kvmi-v7", numbers: [0x4018aeff, 0x4008aefd, 0x4008aefc, 0xaefe, 0xaefb] },
    { kernel: "kvmiV7Cap999", dialect: "kvmi-v7-2.11.93", numbers: [0x4018aeff, 0x4008aefd, 0x4008aefc, 0xaefe, 0xaefb] },
  ] as const;

  it.each(DIALECT_MATRIX)("issues the $dialect numbers with the caller's bytes (zero-copy) on a $kernel kernel", async ({ kernel: name, dialect, numbers }) => {
    const kernel = fakeKernel(KERNELS[name]);
    const kvm = openKvm("/dev/kvm", { libc: kernel.libc, introspectionParamPath: fakeIntrospectionParam("Y") });
    const vm = await kvm.createVm();
    expect(vm.kvmiIoctls()?.id).toBe(dialect);
    const hook = hookArg();
    const feature = featureArg();
    await vm.introspectionHook(hook);
    await vm.introspectionCommand(feature);
    await vm.introspectionEvent(feature);
    await vm.introspectionPreunhook();
    await vm.introspectionUnhook();
    const kvmi = kernel.calls.filter((c) => KVMI_NUMBERS.has(c.request));
    expect(kvmi.map((c) => c.request)).toEqual(numbers);
    expect(kvmi.every((c) => c.fd === vm.fd)).toBe(true);
    const hookCall = kvmi[0]!;
    expect(hookCall.arg).toBe(hook); // the caller's bytes, not a copy
    expect(hookCall.bytes).toEqual(hook);
    expect(kvmi[1]!.bytes).toEqual(feature);
    expect(kvmi[3]!.arg).toBe(0);
    expect(kvmi[4]!.arg).toBe(0);
    vm.close();
    kvm.close();
    expect(kernel.closed).toEqual([vm.fd, kvm.fd]);
  });

  it("turns -1 into KvmiRemoteError(errno, {command})", async () => {
    const kernel = fakeKernel(KERNELS.v9);
    const kvm = openKvm("/dev/kvm", { libc: kernel.libc, introspectionParamPath: fakeIntrospectionParam("N") });
    const vm = await kvm.createVm();
    kernel.nextResult = { value: -1, errno: 1 };
    const err = await vm.introspectionHook(hookArg()).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(KvmiRemoteError);
    expect(err).toMatchObject({ errno: 1, context: { command: "KVM_INTROSPECTION_HOOK" } });
  });

  it("checks the argument size before anything is issued", async () => {
    const kernel = fakeKernel(KERNELS.v9);
    const kvm = openKvm("/dev/kvm", { libc: kernel.libc, introspectionParamPath: fakeIntrospectionParam("Y") });
    const vm = await kvm.createVm();
    await expect(vm.introspectionHook(new Uint8Array(23))).rejects.toThrow(KvmiArgumentError);
    await expect(vm.introspectionCommand(hookArg())).rejects.toThrow(/needs a 8-byte kvm_introspection_feature, got 24/);
    expect(kernel.calls.filter((c) => KVMI_NUMBERS.has(c.request))).toEqual([]);
  });

  it("refuses on a mainline kernel whose capabilities collide with KVMI numbers", async () => {
    const kernel = fakeKernel(KERNELS.mainline6x);
    const kvm = openKvm("/dev/kvm", { libc: kernel.libc, introspectionParamPath: missingPath() });
    const vm = await kvm.createVm();
    for (const err of await callAllKvmi(vm)) expect(err).toBeInstanceOf(KvmiUnsupportedError);
    expect(kernel.calls.filter((c) => KVMI_NUMBERS.has(c.request))).toEqual([]);
  });

  it("refuses when the kernel offers a dialect the codec does not speak (v10/v11)", async () => {
    const kernel = fakeKernel(KERNELS.v10v11);
    const kvm = openKvm("/dev/kvm", { libc: kernel.libc, introspectionParamPath: fakeIntrospectionParam("Y") });
    const vm = await kvm.createVm();
    expect(vm.probeIntrospection().dialect?.id).toBe("v10-v11");
    expect(vm.kvmiIoctls()).toBeNull();
    for (const err of await callAllKvmi(vm)) {
      expect(err).toBeInstanceOf(KvmiUnsupportedError);
      expect((err as Error).message).toMatch(/offers KVMI v10\/v11, which the bridge does not speak/);
      expect((err as Error).message).toMatch(/\(v9, v12, kvmi-v7\)/);
    }
    expect(kernel.calls.filter((c) => KVMI_NUMBERS.has(c.request))).toEqual([]);
  });

  it("refuses when the dialect is ambiguous, issuing neither candidate's numbers", async () => {
    const kernel = fakeKernel(KERNELS.kvmiV7On59);
    const kvm = openKvm("/dev/kvm", { libc: kernel.libc, introspectionParamPath: fakeIntrospectionParam("Y") });
    const vm = await kvm.createVm();
    expect(vm.probeIntrospection().candidates.length).toBeGreaterThan(1);
    expect(vm.kvmiIoctls()).toBeNull();
    for (const err of await callAllKvmi(vm)) {
      expect(err).toBeInstanceOf(KvmiUnsupportedError);
      expect((err as Error).message).toMatch(/fit several dialects/);
    }
    expect(kernel.calls.filter((c) => KVMI_NUMBERS.has(c.request))).toEqual([]);
  });

  it("refuses on a patched kernel that reports no known capability (unknown dialect)", async () => {
    const kernel = fakeKernel(KERNELS.unknownDialect);
    const kvm = openKvm("/dev/kvm", { libc: kernel.libc, introspectionParamPath: fakeIntrospectionParam("Y") });
    const vm = await kvm.createVm();
    const err = await vm.introspectionHook(hookArg()).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(KvmiUnsupportedError);
    expect((err as KvmiUnsupportedError).context.command).toBe("KVM_INTROSPECTION_HOOK");
    expect((err as Error).message).toMatch(/unknown dialect/);
    expect((err as Error).message).toMatch(/No KVMI ioctl was issued/);
    expect(kernel.calls.filter((c) => KVMI_NUMBERS.has(c.request))).toEqual([]);
  });

  it("defers close(2) until an in-flight ioctl returns, then rejects further calls", async () => {
    const kernel = fakeKernel(KERNELS.v9);
    const kvm = openKvm("/dev/kvm", { libc: kernel.libc, introspectionParamPath: fakeIntrospectionParam("Y") });
    const vm = await kvm.createVm();
    let release!: () => void;
    kernel.gate = new Promise<void>((resolve) => (release = resolve));
    const pending = vm.introspectionUnhook();
    await Promise.resolve();
    vm.close();
    expect(vm.closed).toBe(true);
    expect(kernel.closed).toEqual([]);
    release();
    await pending;
    expect(kernel.closed).toEqual([vm.fd]);
    await expect(vm.introspectionUnhook()).rejects.toThrow(KvmiTransportError);
  });
});
