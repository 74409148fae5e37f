// SPDX-License-Identifier: Apache-2.0
/**
 * A deliberately tiny x86-64 length decoder. The guest model does not interpret code; it only needs to
 * know how far RIP moves when `executeAt` "executes" the instruction at RIP, so that RIP values seen in
 * events (and single-step traces) look like a real instruction stream. It covers what the built-in
 * workload places in memory plus the usual kernel prologue/epilogue opcodes; anything else counts as
 * {@link UNKNOWN_INSN_LEN} bytes.
 *
 * @see Intel SDM vol. 2 §2.1 (instruction format), appendix A (opcode map)
 */

/** Maximum x86 instruction length. */
export const MAX_INSN_LEN = 15;
/** The INT3 opcode; fetching it takes the BREAKPOINT path (insn_len 1). */
export const INT3_OPCODE = 0xcc;
/** Length assumed for opcodes outside the table. */
export const UNKNOWN_INSN_LEN = 1;

const ONE_BYTE = new Set([0x90, 0xc3, 0xc9, 0xcc, 0xf4, 0xfa, 0xfb, 0x9c, 0x9d, 0xa4, 0xa5, 0xaa, 0xab, 0xfc, 0xfd]);
const MODRM = new Set([0x01, 0x03, 0x09, 0x0b, 0x21, 0x23, 0x29, 0x2b, 0x31, 0x33, 0x39, 0x3b, 0x85, 0x87, 0x89, 0x8b, 0x8d, 0xff]);
const TWO_BYTE_PLAIN = new Set([0x05, 0x07, 0x0b, 0x30, 0x31, 0x32, 0xa2]); // syscall sysret ud2 wrmsr rdtsc rdmsr cpuid
const TWO_BYTE_MODRM = new Set([0x00, 0x01, 0x1f, 0x20, 0x22, 0xaf, 0xb6, 0xb7, 0xbe, 0xbf]);

/** Bytes taken by a ModRM byte and what it implies (SIB, displacement). */
function modrmLength(bytes: Uint8Array, at: number): number {
  const modrm = bytes[at] ?? 0;
  const mod = modrm >> 6;
  const rm = modrm & 7;
  if (mod === 3) return 1;
  let len = 1;
  if (rm === 4) {
    len += 1;
    if (mod === 0 && ((bytes[at + 1] ?? 0) & 7) === 5) len += 4;
  } else if (mod === 0 && rm === 5) {
    len += 4; // RIP-relative disp32
  }
  if (mod === 1) len += 1;
  if (mod === 2) len += 4;
  return len;
}

/** Length of the instruction at the start of `bytes`. */
export function instructionLength(bytes: Uint8Array): number {
  let i = 0;
  let rexW = false;
  // Legacy prefixes, then at most one REX prefix.
  while (i < MAX_INSN_LEN && [0x66, 0x67, 0xf0, 0xf2, 0xf3, 0x2e, 0x36, 0x3e, 0x26, 0x64, 0x65].includes(bytes[i] ?? -1)) i++;
  const maybeRex = bytes[i] ?? 0;
  if (maybeRex >= 0x40 && maybeRex <= 0x4f) {
    rexW = (maybeRex & 8) !== 0;
    i++;
  }
  const op = bytes[i];
  if (op === undefined) return UNKNOWN_INSN_LEN;
  const prefixes = i;
  let len: number;
  if (ONE_BYTE.has(op) || (op >= 0x50 && op <= 0x5f)) len = 1;
  else if (op === 0xe8 || op === 0xe9 || op === 0x68) len = 5;
  else if (op === 0xeb || op === 0x6a || op === 0xcd || (op >= 0x70 && op <= 0x7f)) len = 2;
  else if (op >= 0xb8 && op <= 0xbf) len = rexW ? 9 : 5;
  else if (MODRM.has(op)) len = 1 + modrmLength(bytes, i + 1);
  else if (op === 0x83 || op === 0xc6) len = 2 + modrmLength(bytes, i + 1);
  else if (op === 0x81 || op === 0xc7) len = 5 + modrmLength(bytes, i + 1);
  else if (op === 0x0f) {
    const op2 = bytes[i + 1];
    if (op2 === undefined) return UNKNOWN_INSN_LEN;
    if (TWO_BYTE_PLAIN.has(op2)) len = 2;
    else if (TWO_BYTE_MODRM.has(op2)) len = 2 + modrmLength(bytes, i + 2);
    else if (op2 >= 0x80 && op2 <= 0x8f) len = 6;
    else return UNKNOWN_INSN_LEN + prefixes;
  } else {
    return UNKNOWN_INSN_LEN + prefixes;
  }
  return Math.min(prefixes + len, MAX_INSN_LEN);
}
