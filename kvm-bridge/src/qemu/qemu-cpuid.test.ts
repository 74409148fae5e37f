// SPDX-License-Identifier: Apache-2.0
import { describe, expect, it } from "vitest";
import { cpuidLeaf, cpuidTable, cpuidVersion, type QemuCpuModel } from "./qemu-cpuid.js";

/** QEMU's default `qemu64` model on TCG, as QOM reports it (QEMU 7.2, -smp 2). */
const QEMU64: QemuCpuModel = {
  vendor: "AuthenticAMD", family: 15, model: 107, stepping: 1, modelId: "QEMU Virtual CPU version 2.5+",
  level: 13, xlevel: 0x8000000a, apicId: 1, logicalPerPackage: 2,
  features: new Map([["1:0:EDX", 0x078bfbfd], ["1:0:ECX", 0x80a02001], ["2147483649:0:ECX", 5], ["2147483649:0:EDX", 0x2193fbfd]]),
};

const ascii = (...words: number[]) => Buffer.from(Uint32Array.from(words).buffer).toString("latin1").replace(/\0+$/, "");

describe("CPUID from QEMU's CPU model", () => {
  it("encodes family, model and stepping as leaf 1's EAX, extended fields included", () => {
    expect(cpuidVersion(15, 107, 1)).toBe(0x00060fb1); // qemu64
    expect(cpuidVersion(6, 0x55, 7)).toBe(0x00050657); // family 6: model's high nibble in bits 16-19
    expect(cpuidVersion(0x19, 1, 1)).toBe(0x00a00f11); // family 0x19: 0xf plus 0x0a in the extended family
  });

  it("answers the vendor, the levels, the feature words and the brand string; other leaves are absent", () => {
    const table = cpuidTable(QEMU64);
    const leaf0 = cpuidLeaf(table, 0, 0n)!;
    expect(leaf0.eax).toBe(13);
    expect(ascii(leaf0.ebx, leaf0.edx, leaf0.ecx)).toBe("AuthenticAMD");
    const leaf1 = cpuidLeaf(table, 1, 0n)!;
    expect(leaf1).toEqual({ eax: 0x00060fb1, ebx: (1 << 24) | (2 << 16) | (8 << 8), ecx: 0x80a02001, edx: 0x078bfbfd | (1 << 28) });
    expect(cpuidLeaf(table, 0x80000000, 0n)!.eax).toBe(0x8000000a);
    expect(cpuidLeaf(table, 0x80000001, 0n)).toEqual({ eax: 0x00060fb1, ebx: 0, ecx: 5, edx: 0x2193fbfd });
    const brand = [0x80000002, 0x80000003, 0x80000004].flatMap((fn) => Object.values(cpuidLeaf(table, fn, 0n)!) as number[]);
    expect(ascii(...brand)).toBe("QEMU Virtual CPU version 2.5+");
    for (const fn of [2, 4, 7, 0xb, 0xd, 0x80000005, 0x8000000b]) expect(cpuidLeaf(table, fn, 0n), `leaf 0x${fn.toString(16)}`).toBeUndefined();
  });

  it("sets OSXSAVE while the vCPU's CR4.OSXSAVE is set, and HTT only for more than one logical CPU per package", () => {
    const table = cpuidTable(QEMU64);
    expect(cpuidLeaf(table, 1, 1n << 18n)!.ecx >>> 27 & 1).toBe(1);
    expect(cpuidLeaf(table, 1, 0n)!.ecx >>> 27 & 1).toBe(0);
    const single = cpuidLeaf(cpuidTable({ ...QEMU64, logicalPerPackage: 1 }), 1, 0n)!;
    expect(single.edx & (1 << 28)).toBe(0);
    expect((single.ebx >>> 16) & 0xff).toBe(0);
  });
});
