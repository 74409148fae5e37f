// SPDX-License-Identifier: Apache-2.0
/**
 * A profile: the symbols and structure layouts of one guest kernel, so that OS-aware code never
 * hard-codes an offset. The file format is Volatility 3's Intermediate Symbol Format (ISF JSON),
 * which many users already have for their kernels; `buildLinuxProfile` writes the same format from
 * a vmlinuz (its BTF) and kallsyms (docs/profiles.md).
 *
 * ISF writes 64-bit addresses as JSON numbers, which lose precision as JavaScript numbers, so the
 * loader reads every `"address"` as text before JSON.parse and keeps it as a bigint.
 */
import { readFile } from "node:fs/promises";
import { gunzipSync } from "node:zlib";

/** An ISF type reference (`{"kind":"pointer","subtype":{...}}`, `{"kind":"struct","name":"list_head"}`, …). */
export interface IsfTypeRef {
  readonly kind: string;
  readonly name?: string;
  readonly subtype?: IsfTypeRef;
  readonly count?: number;
  readonly bit_position?: number;
  readonly bit_length?: number;
  readonly type?: IsfTypeRef;
}

export interface IsfField {
  readonly offset: number;
  readonly type: IsfTypeRef;
  readonly anonymous?: boolean;
}

export interface IsfUserType {
  readonly kind: string;
  readonly size: number;
  readonly fields: Record<string, IsfField>;
}

export interface IsfDocument {
  readonly metadata: Record<string, unknown>;
  readonly base_types: Record<string, { readonly size: number; readonly signed?: boolean; readonly kind: string; readonly endian?: string }>;
  readonly user_types: Record<string, IsfUserType>;
  readonly enums: Record<string, { readonly size: number; readonly base: string; readonly constants: Record<string, number> }>;
  readonly symbols: Record<string, { readonly address: bigint | string | number; readonly type?: IsfTypeRef; readonly constant_data?: string }>;
}

/** A field's place inside a struct, anonymous members flattened. */
export interface FieldLayout {
  readonly offset: number;
  readonly type: IsfTypeRef;
}

export class ProfileError extends Error {}

/** A loaded profile. */
export class Profile {
  private readonly addresses = new Map<string, bigint>();
  private sortedSymbols: Array<{ address: bigint; name: string }> | undefined;

  constructor(readonly document: IsfDocument) {
    for (const [name, symbol] of Object.entries(document.symbols ?? {})) this.addresses.set(name, BigInt(symbol.address));
  }

  /** Parses ISF JSON text, keeping 64-bit addresses exact. */
  static parse(text: string): Profile {
    const exact = text.replace(/("address"\s*:\s*)(-?\d+)/g, '$1"$2"');
    const document = JSON.parse(exact) as IsfDocument;
    if (typeof document !== "object" || document === null || !("user_types" in document) || !("symbols" in document)) {
      throw new ProfileError("not an ISF profile (no user_types or symbols)");
    }
    return new Profile(document);
  }

  /** Loads `.json` or `.json.gz`. */
  static async load(path: string): Promise<Profile> {
    const raw = await readFile(path);
    const text = raw[0] === 0x1f && raw[1] === 0x8b ? gunzipSync(raw).toString("utf8") : raw.toString("utf8");
    try {
      return Profile.parse(text);
    } catch (error) {
      throw new ProfileError(`${path}: ${(error as Error).message}`);
    }
  }

  /** "linux" for profiles with Linux metadata (ISF `metadata.linux`), else what the metadata says. */
  get os(): string {
    const metadata = this.document.metadata ?? {};
    if ("linux" in metadata) return "linux";
    if ("windows" in metadata) return "windows";
    return String((metadata as { os?: unknown }).os ?? "unknown");
  }

  symbol(name: string): bigint | undefined {
    return this.addresses.get(name);
  }

  requireSymbol(name: string): bigint {
    const address = this.addresses.get(name);
    if (address === undefined) throw new ProfileError(`the profile has no symbol "${name}"`);
    return address;
  }

  /** The symbol at or below `address` and the distance to it (`VA → symbol+offset`). */
  symbolize(address: bigint, maxOffset = 1n << 20n): { name: string; offset: bigint } | undefined {
    const sorted = (this.sortedSymbols ??= [...this.addresses]
      // Kernel addresses only: per-CPU symbols are offsets (kallsyms "A" entries near 0), not VAs.
      .filter(([, a]) => a >= 0xffff800000000000n)
      .map(([name, a]) => ({ address: a, name }))
      .sort((x, y) => (x.address < y.address ? -1 : x.address > y.address ? 1 : x.name < y.name ? -1 : 1)));
    let low = 0;
    let high = sorted.length - 1;
    let best = -1;
    while (low <= high) {
      const mid = (low + high) >> 1;
      if (sorted[mid]!.address <= address) {
        best = mid;
        low = mid + 1;
      } else {
        high = mid - 1;
      }
    }
    if (best < 0) return undefined;
    const hit = sorted[best]!;
    const offset = address - hit.address;
    return offset > maxOffset ? undefined : { name: hit.name, offset };
  }

  hasType(name: string): boolean {
    return name in this.document.user_types;
  }

  sizeOf(name: string): number {
    const type = this.document.user_types[name] ?? this.document.base_types[name];
    if (!type) throw new ProfileError(`the profile has no type "${name}"`);
    return type.size;
  }

  /** Looks a field up through anonymous members (ISF `anonymous: true`), as C name lookup does. */
  field(struct: string, name: string): FieldLayout | undefined {
    const type = this.document.user_types[struct];
    if (!type) return undefined;
    const direct = type.fields[name];
    if (direct) return { offset: direct.offset, type: direct.type };
    for (const member of Object.values(type.fields)) {
      if (!member.anonymous || !member.type.name) continue;
      const inner = this.field(member.type.name, name);
      if (inner) return { offset: member.offset + inner.offset, type: inner.type };
    }
    return undefined;
  }

  /** The byte offset of `struct.field` (dotted paths follow embedded structs: `mm_struct.context.id`). */
  offsetOf(struct: string, path: string): number {
    let offset = 0;
    let current = struct;
    for (const part of path.split(".")) {
      const field = this.field(current, part);
      if (!field) throw new ProfileError(`the profile has no field ${struct}.${path}`);
      offset += field.offset;
      current = field.type.name ?? "";
    }
    return offset;
  }

  hasField(struct: string, name: string): boolean {
    return this.field(struct, name) !== undefined;
  }

  /** Size in bytes of a field's type (base types, pointers, arrays, structs). */
  fieldSize(struct: string, name: string): number {
    const field = this.field(struct, name);
    if (!field) throw new ProfileError(`the profile has no field ${struct}.${name}`);
    return this.typeSize(field.type);
  }

  typeSize(type: IsfTypeRef): number {
    switch (type.kind) {
      case "pointer": return this.document.base_types["pointer"]?.size ?? 8;
      case "array": return (type.count ?? 0) * this.typeSize(type.subtype!);
      case "base": return this.document.base_types[type.name!]?.size ?? 0;
      case "enum": return this.document.enums[type.name!]?.size ?? 4;
      case "bitfield": return this.typeSize(type.type!);
      default: return this.document.user_types[type.name!]?.size ?? 0;
    }
  }
}

/** Serializes an ISF document, writing bigint addresses as exact JSON numbers. */
export function stringifyIsf(document: IsfDocument): string {
  return JSON.stringify(document, (_key, value: unknown) => (typeof value === "bigint" ? `__u64:${value.toString()}` : value)).replace(/"__u64:(\d+)"/g, "$1");
}
