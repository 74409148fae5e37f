// SPDX-License-Identifier: Apache-2.0
/**
 * GET_XSAVE for a VM behind kvmi-qemu, from the x87 and SSE registers the gdbstub reports
 * (docs/qemu-backend.md "XSAVE"): the 4096-byte `struct kvm_xsave` with the legacy region in its
 * 64-bit FXSAVE layout (Intel SDM vol. 1 §10.5.1, table 10-2) and an XSAVE header whose XSTATE_BV
 * says only x87 and SSE state is present. Fields QEMU's gdbstub does not report (it sends 0 for the
 * tag word, FOP and the last instruction and operand pointers; AVX and later components are not in
 * its target description) stay 0.
 */

const KVM_XSAVE_BYTES = 4096;
/** XSTATE_BV bits of the components written: x87 (bit 0) and SSE (bit 1). */
const XSTATE_X87_SSE = 0b11n;
/** MXCSR_MASK as QEMU's own FXSAVE/XSAVE helpers store it (the stub does not report one). */
const QEMU_MXCSR_MASK = 0x0000ffff;
const LEGACY = { fcw: 0, fsw: 2, mxcsr: 24, mxcsrMask: 28, st: 32, xmm: 160, header: 512 } as const;

function putLe(area: Uint8Array, offset: number, value: bigint, bytes: number): void {
  for (let i = 0; i < bytes; i++) area[offset + i] = Number((value >> BigInt(8 * i)) & 0xffn);
}

/**
 * The XSAVE area of a vCPU from its gdbstub registers (`fctrl`, `fstat`, `st0`–`st7`, `mxcsr`,
 * `xmm0`–`xmm15`), or undefined when the stub reports no SSE state at all.
 */
export function xsaveOf(registers: ReadonlyMap<string, bigint>): Uint8Array | undefined {
  if (!registers.has("mxcsr") || !registers.has("xmm0")) return undefined;
  const area = new Uint8Array(KVM_XSAVE_BYTES);
  putLe(area, LEGACY.fcw, registers.get("fctrl") ?? 0n, 2);
  putLe(area, LEGACY.fsw, registers.get("fstat") ?? 0n, 2);
  putLe(area, LEGACY.mxcsr, registers.get("mxcsr")!, 4);
  putLe(area, LEGACY.mxcsrMask, BigInt(QEMU_MXCSR_MASK), 4);
  for (let i = 0; i < 8; i++) putLe(area, LEGACY.st + 16 * i, registers.get(`st${i}`) ?? 0n, 10);
  for (let i = 0; i < 16; i++) putLe(area, LEGACY.xmm + 16 * i, registers.get(`xmm${i}`) ?? 0n, 16);
  putLe(area, LEGACY.header, XSTATE_X87_SSE, 8);
  return area;
}
