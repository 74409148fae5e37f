// SPDX-License-Identifier: Apache-2.0
/**
 * Argument parsing of kvmictl: addresses, lengths, vCPU indexes, hex bytes, page access and event
 * types. Each parser throws {@link UsageError} (exit code 2) with a message naming the argument.
 */
import { EVENT_NAMES } from "@kvmi/clients";
import type { VcpuEventName } from "@kvmi/clients";

/** A command-line mistake: kvmictl prints the message and exits with code 2. */
export class UsageError extends Error {
  override readonly name = "UsageError";
}

const U64_MAX = (1n << 64n) - 1n;

/** Parses a u64: `0x1000`, `4096`, `0b1…`, `0o…`, with optional `_` separators. */
export function parseU64(text: string, what: string): bigint {
  const clean = text.trim().replace(/_/g, "");
  if (!/^(0x[0-9a-f]+|0b[01]+|0o[0-7]+|\d+)$/i.test(clean)) throw new UsageError(`${what}: "${text}" is not a number (use decimal or 0x hex)`);
  const value = BigInt(clean.toLowerCase());
  if (value > U64_MAX) throw new UsageError(`${what}: ${text} does not fit in 64 bits`);
  return value;
}

const SIZE_SUFFIXES: Readonly<Record<string, bigint>> = { "": 1n, k: 1024n, m: 1024n ** 2n, g: 1024n ** 3n, t: 1024n ** 4n };

/** Parses a byte count: `4096`, `0x1000`, `4k`, `64M`, `1GiB`. */
export function parseSize(text: string, what: string): bigint {
  const m = /^(0x[0-9a-f_]+|[\d_]+)\s*([kmgt]?)(?:i?b)?$/i.exec(text.trim());
  if (m === null) throw new UsageError(`${what}: "${text}" is not a size (e.g. 4096, 0x1000, 4k, 64M)`);
  const value = parseU64(m[1]!, what) * SIZE_SUFFIXES[m[2]!.toLowerCase()]!;
  if (value > U64_MAX) throw new UsageError(`${what}: ${text} is too large`);
  return value;
}

/** Parses a length that must fit a JavaScript number and be at least `min`. */
export function parseLength(text: string, what: string, min = 1): number {
  const value = parseSize(text, what);
  if (value < BigInt(min) || value > BigInt(Number.MAX_SAFE_INTEGER)) throw new UsageError(`${what}: ${text} is out of range`);
  return Number(value);
}

/** Parses a non-negative integer such as a vCPU index or a count. */
export function parseIndex(text: string, what: string): number {
  if (!/^\d+$/.test(text.trim())) throw new UsageError(`${what}: "${text}" is not a non-negative integer`);
  const value = Number(text.trim());
  if (!Number.isSafeInteger(value) || value > 0xffffffff) throw new UsageError(`${what}: ${text} is too large`);
  return value;
}

/** Parses bytes written as hex: `cc`, `0xcc90`, `de ad be ef`, `de:ad:be:ef`. */
export function parseHexBytes(text: string, what: string): Uint8Array {
  const clean = text.trim().replace(/^0x/i, "").replace(/[\s:_-]/g, "");
  if (clean.length === 0 || clean.length % 2 !== 0 || !/^[0-9a-f]+$/i.test(clean)) {
    throw new UsageError(`${what}: "${text}" is not an even number of hex digits (e.g. cc or 90 90 cc)`);
  }
  return Uint8Array.from(Buffer.from(clean, "hex"));
}

/**
 * Parses page access: `rwx`, `r-x`, `rx`, `---`, `none`, or the bits as a number 0..7 (R = 1, W = 2, X = 4).
 */
export function parseAccess(text: string): number {
  const t = text.trim().toLowerCase();
  if (/^[0-7]$/.test(t)) return Number(t);
  if (t === "none") return 0;
  if (!/^[rwx-]{1,3}$/.test(t) || new Set(t.replace(/-/g, "")).size !== t.replace(/-/g, "").length) {
    throw new UsageError(`access: "${text}" is not a permission like rwx, r-x, r-- or ---`);
  }
  if (t.length === 3 && !/^[r-][w-][x-]$/.test(t)) throw new UsageError(`access: "${text}" must be in rwx order, e.g. r-x`);
  return (t.includes("r") ? 1 : 0) | (t.includes("w") ? 2 : 0) | (t.includes("x") ? 4 : 0);
}

/** `7` → `rwx`, `5` → `r-x`. */
export function accessString(bits: number): string {
  return `${bits & 1 ? "r" : "-"}${bits & 2 ? "w" : "-"}${bits & 4 ? "x" : "-"}`;
}

const EVENT_ALIASES: Readonly<Record<string, VcpuEventName>> = {
  pause: "pauseVcpu",
  pausevcpu: "pauseVcpu",
  pause_vcpu: "pauseVcpu",
  hypercall: "hypercall",
  breakpoint: "breakpoint",
  bp: "breakpoint",
  int3: "breakpoint",
  cr: "cr",
  trap: "trap",
  xsetbv: "xsetbv",
  descriptor: "descriptor",
  msr: "msr",
  pf: "pageFault",
  pagefault: "pageFault",
  page_fault: "pageFault",
  singlestep: "singleStep",
  single_step: "singleStep",
  step: "singleStep",
};

/** Parses `cr,breakpoint,pf` into event names; accepts several spellings (`pf`, `page_fault`, `pageFault`). */
export function parseEventTypes(text: string): VcpuEventName[] {
  const names = text.split(",").map((s) => s.trim()).filter(Boolean);
  if (names.length === 0) throw new UsageError("--type: give at least one event type");
  return [
    ...new Set(
      names.map((name) => {
        const key = name.toLowerCase().replace(/-/g, "_");
        const found = EVENT_ALIASES[key] ?? EVENT_ALIASES[key.replace(/_/g, "")];
        if (found === undefined) {
          const valid = EVENT_NAMES.filter((n) => n !== "unhook").join(", ");
          throw new UsageError(`--type: unknown event "${name}" (valid: ${valid})`);
        }
        return found;
      }),
    ),
  ];
}

/** Parses a comma-separated list of numbers (`0,3,4`, `0xc0000080`). */
export function parseNumberList(text: string, what: string): number[] {
  return text
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean)
    .map((s) => {
      const v = parseU64(s, what);
      if (v > 0xffffffffn) throw new UsageError(`${what}: ${s} does not fit in 32 bits`);
      return Number(v);
    });
}
