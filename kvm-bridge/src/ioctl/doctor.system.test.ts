// SPDX-License-Identifier: Apache-2.0
/**
 * `doctor` against this host's real /dev/kvm (the `system` test project), on either kind of host:
 * with the KVMI patches it must name one dialect and exit 0, without them say so and exit 1. The
 * verdicts themselves are tested with scripted kernels in doctor.test.ts.
 */
import { describe, expect, it } from "vitest";
import { DOCTOR_EXIT_AMBIGUOUS, DOCTOR_EXIT_KVMI, DOCTOR_EXIT_NO_KVMI, formatDoctorReport, NO_KVMI_CONCLUSION, runDoctor } from "./doctor.js";
import { readIntrospectionMarker } from "./probe.js";
import { assertDevKvm, devKvmOptedOut } from "./test-support.js";

describe.skipIf(devKvmOptedOut())("doctor on this host (set KVMI_BRIDGE_NO_KVM=1 to skip on hosts without KVM)", () => {
  it("on a host with KVMI, names its dialect and exits 0 (or 2 when the dialect cannot be told)", async () => {
    assertDevKvm();
    if (!readIntrospectionMarker().present) return; // the stock-kernel case is the next test
    const report = await runDoctor();
    expect(report.kvmi.offered, report.kvmi.reason).toBe(true);
    if (report.kvmi.dialect !== null) {
      expect(report.conclusion).toBe(`this kernel offers KVMI ${report.kvmi.dialectLabel}${report.kvmi.codecDialect === null ? "" : ` (codec dialect ${report.kvmi.codecDialect})`}`);
      expect(report.exitCode).toBe(DOCTOR_EXIT_KVMI);
    } else {
      expect(report.exitCode).toBe(DOCTOR_EXIT_AMBIGUOUS);
    }
  });

  it("on a stock kernel, finds KVM but no KVMI, says the emulator will be served and exits 1", async () => {
    assertDevKvm();
    if (readIntrospectionMarker().present) return; // a KVMI host: the previous test
    const report = await runDoctor();
    expect(report.exitCode).toBe(DOCTOR_EXIT_NO_KVMI);
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

