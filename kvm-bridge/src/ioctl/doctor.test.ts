// SPDX-License-Identifier: Apache-2.0
import { describe, expect, it } from "vitest";
import { formatDoctorReport, NO_KVMI_CONCLUSION, runDoctor } from "./doctor.js";
import { readIntrospectionMarker } from "./probe.js";
import { assertDevKvm, devKvmOptedOut, fakeIntrospectionParam, fakeKernel, KERNELS, missingPath } from "./test-support.js";

describe.skipIf(devKvmOptedOut())("doctor on this host (set KVMI_BRIDGE_NO_KVM=1 to skip on hosts without KVM)", () => {
  it("finds KVM but no KVMI, and says the emulator will be served", async () => {
    assertDevKvm();
    expect(readIntrospectionMarker().present, "expected a kernel without the KVMI patches").toBe(false);
    const report = await runDoctor();
    expect(report.device).toMatchObject({ path: "/dev/kvm", present: true, openable: true, errno: null });
    expect(report.apiVersion).toEqual({ value: 12, expected: 12, ok: true });
    expect(report.scratchVm).toEqual({ created: true, error: null });
    expect(report.kvmi).toMatchObject({ offered: false, dialect: null, bridgeSupported: false });
    expect(report.backend).toBe("emulator");
    expect(report.conclusion).toBe(NO_KVMI_CONCLUSION);
    expect(report.conclusion).toBe("this kernel does not offer KVMI; the bridge will serve the built-in emulator");
    expect(report.hints.join("\n")).toMatch(/introspection patches/);
    expect(report.hints.join("\n")).toMatch(/kvm\.introspection=1/);
    const caps = report.capabilities.filter((c) => c.role === "introspection");
    expect(caps.map((c) => c.cap)).toEqual([180, 184, 193, 206, 999]);
    for (const c of caps) {
      expect(c.system).not.toBeNull();
      expect(c.vm).toBe(c.system);
    }
    const text = formatDoctorReport(report);
    expect(text).toContain(`conclusion: ${NO_KVMI_CONCLUSION}`);
    expect(text).toMatch(/KVM API version\s+12 \(ok\)/);
    expect(text).toMatch(/cap 184 .*KVM_CAP_INTROSPECTION of v9 {2}\[mainline KVM_CAP_LAST_CPU\]/);
  });
});

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

describe("doctor against scripted kernels", () => {
  it("recognises a v9 kernel", async () => {
    const kernel = fakeKernel(KERNELS.v9);
    const report = await runDoctor({ libc: kernel.libc, introspectionParamPath: fakeIntrospectionParam("Y") });
    expect(report.conclusion).toBe("this kernel offers KVMI v9");
    expect(report.kvmi).toMatchObject({ offered: true, dialect: "v9", version: 1, bridgeSupported: true });
    expect(report.backend).toBe("kernel");
    expect(report.hints).toEqual([]);
    // Only CHECK_EXTENSION / GET_API_VERSION / CREATE_VM: never a KVMI ioctl.
    expect(new Set(kernel.calls.map((c) => c.request))).toEqual(new Set([0xae00, 0xae01, 0xae03]));
  });

  it("warns when kvm.introspection is off on a v9 kernel", async () => {
    const kernel = fakeKernel(KERNELS.v9);
    const report = await runDoctor({ libc: kernel.libc, introspectionParamPath: fakeIntrospectionParam("N") });
    expect(report.conclusion).toBe("this kernel offers KVMI v9");
    expect(report.hints.join("\n")).toMatch(/EPERM/);
  });

  it("recognises v12 but keeps the emulator", async () => {
    const kernel = fakeKernel(KERNELS.v12);
    const report = await runDoctor({ libc: kernel.libc, introspectionParamPath: fakeIntrospectionParam("Y") });
    expect(report.conclusion).toBe("this kernel offers KVMI v12");
    expect(report.backend).toBe("emulator");
    expect(report.hints.join("\n")).toMatch(/only the v9 ioctls/);
  });

  it("notes the capability collisions on a mainline kernel", async () => {
    const kernel = fakeKernel(KERNELS.mainline6x);
    const report = await runDoctor({ libc: kernel.libc, introspectionParamPath: missingPath() });
    expect(report.conclusion).toBe(NO_KVMI_CONCLUSION);
    expect(report.notes.join("\n")).toMatch(/CHECK_EXTENSION\(184\) = 1 here means mainline KVM_CAP_LAST_CPU/);
  });
});
