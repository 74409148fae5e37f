// SPDX-License-Identifier: Apache-2.0
/**
 * Output formatting of kvmictl: `xxd`-style hex dumps, register listings, tables, byte sizes,
 * the dump progress bar, and JSON with u64 values as `0x…` strings.
 */
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { CpuMode, State, VmChangeType } from "@kvmi/clients";
import type { RegistersSnapshot, Segment, Vm } from "@kvmi/clients";

/** `0x`-prefixed lowercase hex of a u64, zero-padded to `width` digits. */
export function hex(value: bigint | number, width = 0): string {
  return `0x${value.toString(16).padStart(width, "0")}`;
}

/**
 * Formats bytes like `xxd`: 16 bytes per line in groups of two, the ASCII column after two
 * spaces; the offset column holds the guest address of the line's first byte (16 hex digits).
 * A line starts at `address` (not rounded down), as `xxd -o address` prints.
 */
export function hexdump(data: Uint8Array, address = 0n): string {
  const lines: string[] = [];
  for (let offset = 0; offset < data.length; offset += 16) {
    const row = data.subarray(offset, Math.min(offset + 16, data.length));
    let groups = "";
    for (let i = 0; i < 16; i++) {
      groups += i < row.length ? row[i]!.toString(16).padStart(2, "0") : "  ";
      if (i % 2 === 1) groups += " ";
    }
    const ascii = Array.from(row, (b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : ".")).join("");
    lines.push(`${(address + BigInt(offset)).toString(16).padStart(16, "0")}: ${groups} ${ascii}`);
  }
  return lines.map((l) => `${l}\n`).join("");
}

/**
 * The one JSON convention of every `--json` output (clients/README.md, "JSON output"):
 * - u64 quantities that are addresses or register/MSR values (`bigint` in the SDK) are `"0x…"`
 *   strings, since JSON numbers lose precision above 2^53 and hex is how they are read;
 * - counts, sizes, lengths, indexes, durations and rates are plain JSON numbers (callers pass
 *   them as `number`; a `bigint` byte count is converted before it gets here);
 * - byte data is a hex string without `0x`; maps become objects, numeric keys as `"0x…"`;
 * - protobuf-es bookkeeping (`$typeName`) never appears.
 */
export function toJson(value: unknown, indent?: number): string {
  return JSON.stringify(
    value,
    (key, v: unknown) => {
      if (key === "$typeName") return undefined;
      if (typeof v === "bigint") return hex(v);
      if (v instanceof Uint8Array) return Buffer.from(v).toString("hex");
      if (v instanceof Map) return Object.fromEntries([...v.entries()].map(([k, x]) => [typeof k === "number" || typeof k === "bigint" ? hex(k) : String(k), x]));
      return v;
    },
    indent,
  );
}

/** A byte count for people: `512 B`, `4.0 KiB`, `64.0 MiB`. */
export function formatBytes(bytes: number | bigint): string {
  const n = Number(bytes);
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${n} B` : `${value.toFixed(1)} ${units[unit]}`;
}

/** A text progress bar: `[#########           ]  45%  28.8 MiB / 64.0 MiB`. */
export function progressBar(done: bigint, total: bigint, width = 30): string {
  const fraction = total === 0n ? 1 : Math.min(1, Number(done) / Number(total));
  const filled = Math.round(fraction * width);
  const pct = `${Math.floor(fraction * 100)}%`.padStart(4);
  return `[${"#".repeat(filled)}${" ".repeat(width - filled)}] ${pct}  ${formatBytes(done)} / ${formatBytes(total)}`;
}

/** Pads columns to the widest cell; the last column is not padded. */
export function table(rows: readonly (readonly string[])[]): string {
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)));
  return rows.map((row) => row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i]!))).join("  ").trimEnd() + "\n").join("");
}

/** The name of a VM state without the prefix: `HOOKED`, `UNHOOK_PENDING`. */
export function stateName(state: State): string {
  return State[state] ?? `STATE_${state}`;
}

/** The name of a VM change type: `EXISTING`, `HOOKED`, … */
export function changeName(type: VmChangeType): string {
  return VmChangeType[type] ?? `CHANGE_${type}`;
}

/** The code size of a CPU mode: `64-bit`. */
export function modeName(mode: CpuMode): string {
  switch (mode) {
    case CpuMode.BITS_16:
      return "16-bit";
    case CpuMode.BITS_32:
      return "32-bit";
    case CpuMode.BITS_64:
      return "64-bit";
    default:
      return "unknown";
  }
}

/** The VM as a JSON-friendly object (what `--json` prints). */
export function vmJson(vm: Vm): Record<string, unknown> {
  return {
    name: vm.name,
    uuid: vm.uuid,
    displayName: vm.displayName,
    state: stateName(vm.state),
    generation: Number(vm.generation),
    vcpuCount: vm.vcpuCount,
    dialect: vm.dialect,
    kvmiVersion: vm.kvmiVersion,
    singlestep: vm.features?.singlestep ?? false,
    controllerAttached: vm.controllerAttached,
    observerCount: vm.observerCount,
    ...(vm.startTime && { startTime: timestampDate(vm.startTime).toISOString() }),
    ...(vm.hookTime && { hookTime: timestampDate(vm.hookTime).toISOString() }),
    ...(vm.maxGpa !== undefined && { maxGpa: vm.maxGpa }),
    ...(vm.unhookDeadline && { unhookDeadline: timestampDate(vm.unhookDeadline).toISOString() }),
  };
}

/** The `vms list` table. */
export function vmTable(vms: readonly Vm[]): string {
  const rows = [["UUID", "NAME", "STATE", "GEN", "VCPUS", "CONTROLLER", "OBSERVERS"]];
  for (const vm of vms) {
    rows.push([
      vm.uuid,
      vm.displayName || "-",
      stateName(vm.state),
      String(vm.generation),
      String(vm.vcpuCount),
      vm.controllerAttached ? "yes" : "no",
      String(vm.observerCount),
    ]);
  }
  return table(rows);
}

/** `key: value` lines of one VM. */
export function vmDetails(vm: Vm): string {
  const j = vmJson(vm);
  const rows = Object.entries(j).map(([k, v]) => [`${k}:`, typeof v === "bigint" ? hex(v) : String(v)]);
  return table(rows);
}

const EFER_BITS: ReadonlyArray<readonly [bigint, string]> = [
  [1n << 0n, "SCE"],
  [1n << 8n, "LME"],
  [1n << 10n, "LMA"],
  [1n << 11n, "NXE"],
  [1n << 12n, "SVME"],
  [1n << 14n, "FFXSR"],
];
const RFLAGS_BITS: ReadonlyArray<readonly [bigint, string]> = [
  [1n << 0n, "CF"],
  [1n << 2n, "PF"],
  [1n << 4n, "AF"],
  [1n << 6n, "ZF"],
  [1n << 7n, "SF"],
  [1n << 8n, "TF"],
  [1n << 9n, "IF"],
  [1n << 10n, "DF"],
  [1n << 11n, "OF"],
];
const CR0_BITS: ReadonlyArray<readonly [bigint, string]> = [
  [1n << 0n, "PE"],
  [1n << 1n, "MP"],
  [1n << 4n, "ET"],
  [1n << 5n, "NE"],
  [1n << 16n, "WP"],
  [1n << 18n, "AM"],
  [1n << 31n, "PG"],
];
const CR4_BITS: ReadonlyArray<readonly [bigint, string]> = [
  [1n << 5n, "PAE"],
  [1n << 7n, "PGE"],
  [1n << 9n, "OSFXSR"],
  [1n << 10n, "OSXMMEXCPT"],
  [1n << 18n, "OSXSAVE"],
  [1n << 20n, "SMEP"],
  [1n << 21n, "SMAP"],
];

function flags(value: bigint, bits: ReadonlyArray<readonly [bigint, string]>): string {
  return bits.filter(([bit]) => (value & bit) !== 0n).map(([, name]) => name).join(" ");
}

function segment(name: string, s: Segment | undefined): string {
  if (s === undefined) return `${name.padEnd(4)} -`;
  const attrs = [s.present ? "P" : "", s.l ? "L" : "", s.db ? "DB" : "", s.g ? "G" : "", s.s ? "S" : "", s.unusable ? "unusable" : ""].filter(Boolean);
  return `${name.padEnd(4)} sel ${hex(s.selector, 4)}  base ${hex(s.base, 16)}  limit ${hex(s.limit, 8)}  type ${hex(s.type, 1)}  dpl ${s.dpl}  ${attrs.join(" ")}`.trimEnd();
}

/** The `regs` listing: general registers, RIP/RFLAGS, segments, descriptor tables, CRs, EFER, mode, MSRs. */
export function formatRegisters(vmName: string, vcpu: number, r: RegistersSnapshot): string {
  const g = r.regs;
  const s = r.sregs;
  const reg = (name: string, value: bigint): string => `${name.padEnd(3)} ${hex(value, 16)}`;
  const lines = [
    `${vmName}/vcpus/${vcpu}  mode ${modeName(r.mode)}`,
    "",
    [reg("rax", g.rax), reg("rbx", g.rbx), reg("rcx", g.rcx), reg("rdx", g.rdx)].join("  "),
    [reg("rsi", g.rsi), reg("rdi", g.rdi), reg("rsp", g.rsp), reg("rbp", g.rbp)].join("  "),
    [reg("r8", g.r8), reg("r9", g.r9), reg("r10", g.r10), reg("r11", g.r11)].join("  "),
    [reg("r12", g.r12), reg("r13", g.r13), reg("r14", g.r14), reg("r15", g.r15)].join("  "),
    `${reg("rip", g.rip)}  rflags ${hex(g.rflags, 8)} [${flags(g.rflags, RFLAGS_BITS)}]`,
    "",
    segment("cs", s.cs),
    segment("ds", s.ds),
    segment("es", s.es),
    segment("fs", s.fs),
    segment("gs", s.gs),
    segment("ss", s.ss),
    segment("tr", s.tr),
    segment("ldt", s.ldt),
    `gdt  base ${hex(s.gdt?.base ?? 0n, 16)}  limit ${hex(s.gdt?.limit ?? 0, 4)}`,
    `idt  base ${hex(s.idt?.base ?? 0n, 16)}  limit ${hex(s.idt?.limit ?? 0, 4)}`,
    "",
    `cr0  ${hex(s.cr0, 16)} [${flags(s.cr0, CR0_BITS)}]`,
    `cr2  ${hex(s.cr2, 16)}`,
    `cr3  ${hex(s.cr3, 16)}`,
    `cr4  ${hex(s.cr4, 16)} [${flags(s.cr4, CR4_BITS)}]`,
    `cr8  ${hex(s.cr8, 16)}`,
    `efer ${hex(s.efer, 16)} [${flags(s.efer, EFER_BITS)}]`,
    `apic_base ${hex(s.apicBase, 16)}`,
  ];
  if (r.msrs.size > 0) {
    lines.push("");
    for (const [index, value] of r.msrs) lines.push(`msr ${hex(index, 8)} = ${hex(value, 16)}`);
  }
  return `${lines.join("\n")}\n`;
}
