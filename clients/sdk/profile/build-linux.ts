// SPDX-License-Identifier: Apache-2.0
/**
 * Builds a Linux profile (ISF JSON, see profile.ts) offline from what a distribution ships:
 * - the kernel image: a bzImage's payload is found by its compression magic (what the kernel's own
 *   scripts/extract-vmlinux does) and decompressed (xz via the `xz` command, gzip via node:zlib);
 *   its ELF `.BTF` section gives every struct layout (btf.ts);
 * - the symbol table: `/proc/kallsyms` copied out of the running guest, or a real System.map
 *   (same "address type name" lines; Debian's /boot/System.map is a stub and is refused).
 */
import { spawnSync } from "node:child_process";
import { gunzipSync, constants as zlibConstants } from "node:zlib";
import { BtfKind, parseBtf, type Btf, type BtfType } from "./btf.js";
import { ProfileError, type IsfDocument, type IsfField, type IsfTypeRef, type IsfUserType } from "./profile.js";

const ELF_MAGIC = [0x7f, 0x45, 0x4c, 0x46];
const XZ_MAGIC = [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00];
const GZIP_MAGIC = [0x1f, 0x8b, 0x08];

function indexOfBytes(haystack: Uint8Array, needle: readonly number[], from = 0): number {
  outer: for (let i = haystack.indexOf(needle[0]!, from); i >= 0 && i <= haystack.length - needle.length; i = haystack.indexOf(needle[0]!, i + 1)) {
    for (let j = 1; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

function isElf(bytes: Uint8Array): boolean {
  return ELF_MAGIC.every((byte, i) => bytes[i] === byte);
}

/** The uncompressed ELF vmlinux inside a bzImage (or the input itself when it is ELF already). */
export function extractVmlinux(image: Uint8Array): Uint8Array {
  if (isElf(image)) return image;
  const attempts: string[] = [];
  for (let at = indexOfBytes(image, XZ_MAGIC); at >= 0; at = indexOfBytes(image, XZ_MAGIC, at + 1)) {
    const run = spawnSync("xz", ["-dc", "--single-stream"], { input: image.subarray(at), maxBuffer: 1 << 30 });
    if (run.error) throw new ProfileError("decompressing an xz kernel needs the `xz` command (Debian's xz-utils)");
    if (run.stdout && run.stdout.length > 0 && isElf(run.stdout)) return new Uint8Array(run.stdout);
    attempts.push(`xz@${at}`);
  }
  for (let at = indexOfBytes(image, GZIP_MAGIC); at >= 0; at = indexOfBytes(image, GZIP_MAGIC, at + 1)) {
    try {
      const out = gunzipSync(image.subarray(at), { finishFlush: zlibConstants.Z_SYNC_FLUSH });
      if (isElf(out)) return new Uint8Array(out);
    } catch {
      attempts.push(`gzip@${at}`);
    }
  }
  throw new ProfileError(`no xz or gzip payload with an ELF kernel inside (tried ${attempts.join(", ") || "nothing"})`);
}

/** The bytes of one section of a little-endian ELF64 file. */
export function elfSection(elf: Uint8Array, name: string): Uint8Array | undefined {
  const view = new DataView(elf.buffer, elf.byteOffset, elf.byteLength);
  if (!isElf(elf) || elf[4] !== 2 || elf[5] !== 1) throw new ProfileError("not a little-endian ELF64 file");
  const shoff = Number(view.getBigUint64(0x28, true));
  const shentsize = view.getUint16(0x3a, true);
  const shnum = view.getUint16(0x3c, true);
  const shstrndx = view.getUint16(0x3e, true);
  const header = (index: number) => {
    const at = shoff + index * shentsize;
    return { name: view.getUint32(at, true), offset: Number(view.getBigUint64(at + 0x18, true)), size: Number(view.getBigUint64(at + 0x20, true)) };
  };
  const strings = header(shstrndx);
  const decoder = new TextDecoder();
  for (let i = 0; i < shnum; i++) {
    const section = header(i);
    const start = strings.offset + section.name;
    const end = elf.indexOf(0, start);
    if (decoder.decode(elf.subarray(start, end)) === name) return elf.subarray(section.offset, section.offset + section.size);
  }
  return undefined;
}

/** One kallsyms / System.map line. */
export interface KernelSymbol {
  readonly address: bigint;
  readonly type: string;
  readonly name: string;
}

export function parseKallsyms(text: string): KernelSymbol[] {
  const symbols: KernelSymbol[] = [];
  for (const line of text.split(/\r?\n/)) {
    const match = /^([0-9a-fA-F]{8,16})\s+(\S)\s+(\S+)(?:\s+\[(\S+)\])?$/.exec(line.trim());
    if (match && match[4] === undefined) symbols.push({ address: BigInt(`0x${match[1]}`), type: match[2]!, name: match[3]! });
  }
  if (symbols.length < 100) {
    throw new ProfileError(`only ${symbols.length} symbols: not a kallsyms or System.map (Debian's /boot/System.map is a stub; copy /proc/kallsyms out of the guest)`);
  }
  if (symbols.every((symbol) => symbol.address === 0n)) throw new ProfileError("every address is 0: kallsyms was read without CAP_SYSLOG or with kptr_restrict");
  return symbols;
}

/** Turns BTF into ISF base types, user types and enums. */
function convertBtf(btf: Btf): Pick<IsfDocument, "base_types" | "user_types" | "enums"> {
  const baseTypes: IsfDocument["base_types"] = {
    pointer: { size: 8, signed: false, kind: "int", endian: "little" },
    void: { size: 0, signed: false, kind: "void", endian: "little" },
  };
  const userTypes: Record<string, IsfUserType> = {};
  const enums: Record<string, IsfDocument["enums"][string]> = {};
  const typeName = (type: BtfType) => type.name || `__anon_${type.id}`;

  const ref = (id: number, depth = 0): IsfTypeRef => {
    const type = btf.types[id];
    if (!type || depth > 32) return { kind: "base", name: "void" };
    switch (type.kind) {
      case BtfKind.Typedef: case BtfKind.Const: case BtfKind.Volatile: case BtfKind.Restrict: case BtfKind.TypeTag:
        return ref(type.sizeOrType, depth + 1);
      case BtfKind.Int:
        baseTypes[type.name] ??= { size: type.sizeOrType, signed: type.int!.signed, kind: type.int!.bool ? "bool" : type.name.includes("char") ? "char" : "int", endian: "little" };
        return { kind: "base", name: type.name };
      case BtfKind.Float:
        baseTypes[type.name] ??= { size: type.sizeOrType, signed: true, kind: "float", endian: "little" };
        return { kind: "base", name: type.name };
      case BtfKind.Ptr:
        return { kind: "pointer", subtype: ref(type.sizeOrType, depth + 1) };
      case BtfKind.Array:
        return { kind: "array", count: type.array!.count, subtype: ref(type.array!.type, depth + 1) };
      case BtfKind.Struct: case BtfKind.Fwd:
        return { kind: "struct", name: typeName(type) };
      case BtfKind.Union:
        return { kind: "union", name: typeName(type) };
      case BtfKind.Enum: case BtfKind.Enum64:
        return { kind: "enum", name: typeName(type) };
      case BtfKind.FuncProto: case BtfKind.Func:
        return { kind: "function" };
      default:
        return { kind: "base", name: "void" };
    }
  };

  for (const type of btf.types) {
    if (!type) continue;
    if (type.kind === BtfKind.Struct || type.kind === BtfKind.Union) {
      const name = typeName(type);
      const existing = userTypes[name];
      if (existing && Object.keys(existing.fields).length >= type.members!.length) continue;
      const fields: Record<string, IsfField> = {};
      type.members!.forEach((member, index) => {
        const memberRef = ref(member.type);
        const offset = Math.floor(member.bitOffset / 8);
        const fieldType: IsfTypeRef = member.bitSize > 0 ? { kind: "bitfield", bit_position: member.bitOffset % 8, bit_length: member.bitSize, type: memberRef } : memberRef;
        if (member.name) fields[member.name] = { offset, type: fieldType };
        else fields[`unnamed_field_${index}`] = { offset, type: fieldType, anonymous: true };
      });
      userTypes[name] = { kind: type.kind === BtfKind.Struct ? "struct" : "union", size: type.sizeOrType, fields };
    } else if ((type.kind === BtfKind.Enum || type.kind === BtfKind.Enum64) && type.enumerators!.length > 0) {
      const constants: Record<string, number> = {};
      for (const e of type.enumerators!) constants[e.name] = Number(BigInt.asIntN(64, e.value));
      enums[typeName(type)] = { size: type.sizeOrType, base: "int", constants };
    }
  }
  return { base_types: baseTypes, user_types: userTypes, enums };
}

export interface LinuxProfileInput {
  /** The kernel image (bzImage or ELF vmlinux). */
  readonly kernelImage: Uint8Array;
  /** kallsyms or System.map text. */
  readonly symbols: string;
  /** e.g. `6.1.0-57-amd64`, recorded in the metadata. */
  readonly kernelRelease?: string;
}

/** The ISF document of one Linux kernel. */
export function buildLinuxProfile(input: LinuxProfileInput): IsfDocument {
  const vmlinux = extractVmlinux(input.kernelImage);
  const btfBytes = elfSection(vmlinux, ".BTF");
  if (!btfBytes) throw new ProfileError("the kernel has no .BTF section (built without CONFIG_DEBUG_INFO_BTF)");
  const types = convertBtf(parseBtf(btfBytes));
  const symbols: Record<string, { address: bigint }> = {};
  for (const symbol of parseKallsyms(input.symbols)) symbols[symbol.name] ??= { address: symbol.address };
  return {
    metadata: {
      format: "6.2.0",
      producer: { name: "kvmi-bridge", version: "0.1.0" },
      linux: { symbols: [{ kind: "symtab", name: "kallsyms" }], types: [{ kind: "btf", name: ".BTF" }] },
      ...(input.kernelRelease && { kvmi: { kernelRelease: input.kernelRelease } }),
    },
    ...types,
    symbols,
  };
}
