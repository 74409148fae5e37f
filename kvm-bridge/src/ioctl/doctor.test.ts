// SPDX-License-Identifier: Apache-2.0
/**
 * `doctor`'s verdicts on scripted kernels (a host with KVMI modelled at the ioctl boundary) and
 * without a usable /dev/kvm; no real /dev/kvm I/O (that is doctor.system.test.ts).
 */
import { describe, expect, it } from "vitest";
import { DOCTOR_EXIT_AMBIGUOUS, DOCTOR_EXIT_KVMI, DOCTOR_EXIT_NO_KVMI, formatDoctorReport, NO_KVMI_CONCLUSION, runDoctor } from "./doctor.js";
import { fakeIntrospectionParam, fakeKernel, KERNELS, missingPath } from "./test-support.js";

describe("doctor without a usable /dev/kvm", () => {
  it("explains a missing device node", async () => {
    const report = await runDoctor({ kvmPath: missingPath() });
    expect(report.device).toMatchObject({ present: false, openable: false, errno: 2, errnoName: "ENOENT" });
    expect(report.conclusion).toBe(NO_KVMI_CONCLUSION);
    expect(report.hints[0]).toMatch(/is missing: load kvm_intel or kvm_amd/);
    expect(formatDoctorReport(report)).toMatch(/FAIL: .* does not exist/);
  });

  it("explains EACCES", async () => {
    const kernel = fakeKernel();
    kernel.openErrno = 13;
    const report = await runDoctor({ kvmPath: "/dev/kvm", libc: kernel.libc });
    expect(report.device).toMatchObject({ openable: false, errnoName: "EACCES" });
    expect(report.hints[0]).toMatch(/permission denied on \/dev\/kvm/);
    expect(report.conclusion).toBe(NO_KVMI_CONCLUSION);
  });
});

describe("doctor against scripted kernels (a host with KVMI modelled at the ioctl boundary)", () => {
  it("recognises a v9 kernel and exits 0", async () => {
    const kernel = fakeKernel(KERNELS.v9);
    const report = await runDoctor({ libc: kernel.libc, introspectionParamPath: fakeIntrospectionParam("Y") });
    expect(report.conclusion).toBe("this kernel offers KVMI v9 (codec dialect v9)");
    expect(report.exitCode).toBe(DOCTOR_EXIT_KVMI);
    expect(report.kvmi).toMatchObject({ offered: true, dialect: "v9", codecDialect: "v9", version: 1, bridgeSupported: true });
    expect(report.backend).toBe("kernel");
    expect(report.hints).toEqual([]);
    // Only CHECK_EXTENSION / GET_API_VERSION / CREATE_VM: never a KVMI ioctl.
    expect(new Set(kernel.calls.map((c) => c.request))).toEqual(new Set([0xae00, 0xae01, 0xae03]));
  });

  it("warns when kvm.introspection is off on a v9 kernel", async () => {
    const kernel = fakeKernel(KERNELS.v9);
    const report = await runDoctor({ libc: kernel.libc, introspectionParamPath: fakeIntrospectionParam("N") });
    expect(report.conclusion).toBe("this kernel offers KVMI v9 (codec dialect v9)");
    expect(report.hints.join("\n")).toMatch(/EPERM/);
  });

  it("recognises v12, names the v12 ioctl numbers it would use, and serves the kernel", async () => {
    const kernel = fakeKernel(KERNELS.v12);
    const report = await runDoctor({ libc: kernel.libc, introspectionParamPath: fakeIntrospectionParam("Y") });
    expect(report.conclusion).toBe("this kernel offers KVMI v12 (codec dialect v12)");
    expect(report.kvmi).toMatchObject({ dialect: "v12", codecDialect: "v12", bridgeSupported: true });
    expect(report.kvmi.ioctls).toEqual([
      { name: "KVM_INTROSPECTION_HOOK", number: "0x4018AEC8" },
      { name: "KVM_INTROSPECTION_UNHOOK", number: "0xAEC9" },
      { name: "KVM_INTROSPECTION_COMMAND", number: "0x4008AECA" },
      { name: "KVM_INTROSPECTION_EVENT", number: "0x4008AECB" },
      { name: "KVM_INTROSPECTION_PREUNHOOK", number: "0xAECC" },
    ]);
    expect(report.exitCode).toBe(DOCTOR_EXIT_KVMI);
    expect(report.backend).toBe("kernel");
    expect(report.hints).toEqual([]);
    expect(formatDoctorReport(report)).toMatch(/KVMI ioctls +v12: HOOK 0x4018AEC8, UNHOOK 0xAEC9, COMMAND 0x4008AECA, EVENT 0x4008AECB, PREUNHOOK 0xAECC/);
  });

  it("names the v9 numbers on a v9 kernel", async () => {
    const kernel = fakeKernel(KERNELS.v9);
    const report = await runDoctor({ libc: kernel.libc, introspectionParamPath: fakeIntrospectionParam("Y") });
    expect(report.kvmi.ioctls.map((i) => i.number)).toEqual(["0x4018AEC3", "0xAEC4", "0x4008AEC5", "0x4008AEC6", "0xAEC7"]);
  });

  it("recognises v10/v11, names no ioctls, and keeps the emulator", async () => {
    const kernel = fakeKernel(KERNELS.v10v11);
    const report = await runDoctor({ libc: kernel.libc, introspectionParamPath: fakeIntrospectionParam("Y") });
    expect(report.conclusion).toBe("this kernel offers KVMI v10/v11");
    expect(report.kvmi).toMatchObject({ dialect: "v10-v11", codecDialect: null, bridgeSupported: false, ioctls: [] });
    expect(report.backend).toBe("emulator");
    expect(report.hints.join("\n")).toMatch(/no codec for KVMI v10\/v11/);
  });

  it("recognises the libkvmi product dialect of the kvmi-v7-2.11.93 QEMU generation (cap 999)", async () => {
    const kernel = fakeKernel({ 999: 1 });
    const report = await runDoctor({ libc: kernel.libc, introspectionParamPath: fakeIntrospectionParam("Y") });
    expect(report.conclusion).toBe("this kernel offers KVMI kvmi-v7 (cap 999) (codec dialect kvmi-v7)");
    expect(report.kvmi).toMatchObject({ offered: true, dialect: "kvmi-v7-2.11.93", codecDialect: "kvmi-v7", version: 1 });
    expect(report.kvmi.ioctls.map((i) => i.number)).toEqual(["0x4018AEFF", "0xAEFB", "0x4008AEFD", "0x4008AEFC", "0xAEFE"]);
    expect(report.backend).toBe("kernel");
    expect(report.exitCode).toBe(DOCTOR_EXIT_KVMI);
    expect(new Set(kernel.calls.map((c) => c.request))).toEqual(new Set([0xae00, 0xae01, 0xae03]));
  });

  it("says plainly when a KVMI kernel's dialect cannot be told, and exits 2", async () => {
    // cap 180 on a 5.9 base fits kvmi-v7 (2023 QEMU) and v9 (184 = KVM_CAP_LAST_CPU) alike.
    const kernel = fakeKernel(KERNELS.kvmiV7On59);
    const report = await runDoctor({ libc: kernel.libc, introspectionParamPath: fakeIntrospectionParam("Y") });
    expect(report.conclusion).toMatch(/offers KVMI but its dialect is ambiguous/);
    expect(report.kvmi).toMatchObject({ offered: true, dialect: null, codecDialect: null, ioctls: [] });
    expect(report.kvmi.candidates.map((c) => c.dialect).sort()).toEqual(["kvmi-v7", "v9"]);
    expect(report.exitCode).toBe(DOCTOR_EXIT_AMBIGUOUS);
    const text = formatDoctorReport(report);
    expect(text).toMatch(/if it were +v9 \(cap 184\): HOOK 0x4018AEC3.* \(not issued\)/);
    expect(text).toMatch(/if it were +kvmi-v7 \(cap 180\): HOOK 0x4018AEFF.* \(not issued\)/);
  });

  it("says plainly that a stock kernel offers no KVMI, and exits 1", async () => {
    const kernel = fakeKernel(KERNELS.mainline6x);
    const report = await runDoctor({ libc: kernel.libc, introspectionParamPath: missingPath() });
    expect(report.conclusion).toBe("this kernel does not offer KVMI; the bridge will serve the built-in emulator");
    expect(report.kvmi).toMatchObject({ offered: false, dialect: null, codecDialect: null });
    expect(report.exitCode).toBe(DOCTOR_EXIT_NO_KVMI);
  });

  it("notes the capability collisions on a mainline kernel", async () => {
    const kernel = fakeKernel(KERNELS.mainline6x);
    const report = await runDoctor({ libc: kernel.libc, introspectionParamPath: missingPath() });
    expect(report.conclusion).toBe(NO_KVMI_CONCLUSION);
    expect(report.notes.join("\n")).toMatch(/CHECK_EXTENSION\(184\) = 1 here means mainline KVM_CAP_LAST_CPU/);
  });
});
