// SPDX-License-Identifier: Apache-2.0
import { describe, expect, it } from "vitest";
import type { IntrospectionMarker } from "./probe.js";
import { identifyIntrospection, probedCapNumbers, readIntrospectionMarker } from "./probe.js";
import { fakeIntrospectionParam, KERNELS, missingPath } from "./test-support.js";

const PRESENT: IntrospectionMarker = { path: "/sys/module/kvm/parameters/introspection", present: true, enabled: true };
const ABSENT: IntrospectionMarker = { path: "/sys/module/kvm/parameters/introspection", present: false, enabled: null };

const answers =
  (caps: Record<number, number>) =>
  (cap: number): number =>
    caps[cap] ?? 0;

describe("identifyIntrospection", () => {
  it("asks about every dialect capability and every newer-mainline capability", () => {
    expect(probedCapNumbers()).toEqual([180, 183, 184, 188, 189, 192, 193, 195, 200, 203, 206, 208, 209, 999]);
  });

  it("identifies a v9 kernel", () => {
    const probe = identifyIntrospection(PRESENT, answers(KERNELS.v9));
    expect(probe.offered).toBe(true);
    expect(probe.dialect?.id).toBe("v9");
    expect(probe.kvmiVersion).toBe(1);
  });

  it("says no on a stock kernel even though CHECK_EXTENSION(184) answers 1 (KVM_CAP_LAST_CPU)", () => {
    const probe = identifyIntrospection(ABSENT, answers(KERNELS.mainline6x));
    expect(probe.offered).toBe(false);
    expect(probe.dialect).toBeNull();
    expect(probe.reason).toMatch(/184 \(mainline KVM_CAP_LAST_CPU\)/);
    expect(probe.reason).toMatch(/206 \(mainline KVM_CAP_VM_MOVE_ENC_CONTEXT_FROM\)/);
  });

  it("does not mistake a v12 kernel for v9 (184 is KVM_CAP_LAST_CPU there too)", () => {
    const probe = identifyIntrospection(PRESENT, answers(KERNELS.v12));
    expect(probe.dialect?.id).toBe("v12");
  });

  it("refuses to choose when the numbers fit several dialects", () => {
    const probe = identifyIntrospection(PRESENT, answers(KERNELS.kvmiV7On59));
    expect(probe.offered).toBe(true);
    expect(probe.dialect).toBeNull();
    expect(probe.candidates.map((t) => t.id).sort()).toEqual(["kvmi-v7", "v9"]);
  });

  it("identifies both kvmi-v7 generations (cap 180 once v8 is ruled out, cap 999)", () => {
    expect(identifyIntrospection(PRESENT, answers(KERNELS.kvmiV7On58)).dialect?.id).toBe("kvmi-v7");
    const probe = identifyIntrospection(PRESENT, answers(KERNELS.kvmiV7Cap999));
    expect(probe.dialect?.id).toBe("kvmi-v7-2.11.93");
    expect(probe.dialect?.wire?.name).toBe("kvmi-v7");
  });

  it("identifies v10/v11, a dialect without a codec table", () => {
    const probe = identifyIntrospection(PRESENT, answers(KERNELS.v10v11));
    expect(probe.dialect?.id).toBe("v10-v11");
    expect(probe.dialect?.wire).toBeNull();
  });

  it("names an unknown dialect when a patched kernel reports no known capability", () => {
    const probe = identifyIntrospection(PRESENT, answers(KERNELS.unknownDialect));
    expect(probe.offered).toBe(false);
    expect(probe.reason).toMatch(/unknown dialect/);
  });

  it("reports a patched kernel with introspection switched off", () => {
    const probe = identifyIntrospection({ ...PRESENT, enabled: false }, answers({}));
    expect(probe.offered).toBe(false);
    expect(probe.reason).toMatch(/kvm.introspection is off/);
  });
});

describe("readIntrospectionMarker", () => {
  it("reads Y and N", () => {
    expect(readIntrospectionMarker(fakeIntrospectionParam("Y"))).toMatchObject({ present: true, enabled: true });
    expect(readIntrospectionMarker(fakeIntrospectionParam("N"))).toMatchObject({ present: true, enabled: false });
  });

  it("reports a missing parameter", () => {
    expect(readIntrospectionMarker(missingPath())).toMatchObject({ present: false, enabled: null });
  });
});
