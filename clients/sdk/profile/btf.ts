// SPDX-License-Identifier: Apache-2.0
/**
 * A reader for BTF, the compact type information the kernel carries in its `.BTF` section
 * (Documentation/bpf/btf.rst): a header, a type section of variable-length records and a string
 * section. We need struct/union layouts, base types, enums and per-CPU variables (DATASEC), which is
 * what a Volatility-style profile holds; function prototypes are skipped.
 */

export const BTF_MAGIC = 0xeb9f;

export const enum BtfKind {
  Int = 1, Ptr = 2, Array = 3, Struct = 4, Union = 5, Enum = 6, Fwd = 7, Typedef = 8, Volatile = 9,
  Const = 10, Restrict = 11, Func = 12, FuncProto = 13, Var = 14, Datasec = 15, Float = 16,
  DeclTag = 17, TypeTag = 18, Enum64 = 19,
}

export interface BtfMember {
  readonly name: string;
  readonly type: number;
  readonly bitOffset: number;
  /** Non-zero for a bitfield (kind_flag structs). */
  readonly bitSize: number;
}

export interface BtfType {
  readonly id: number;
  readonly kind: BtfKind;
  readonly name: string;
  /** size for INT/STRUCT/UNION/ENUM/DATASEC/FLOAT; the referenced type for PTR/TYPEDEF/qualifiers/VAR/FUNC. */
  readonly sizeOrType: number;
  readonly members?: readonly BtfMember[];
  readonly array?: { readonly type: number; readonly count: number };
  readonly int?: { readonly signed: boolean; readonly bool: boolean; readonly bits: number };
  readonly enumerators?: ReadonlyArray<{ readonly name: string; readonly value: bigint }>;
  /** DATASEC entries: variables (VAR type ids) at offsets inside the section. */
  readonly vars?: ReadonlyArray<{ readonly type: number; readonly offset: number; readonly size: number }>;
}

/** Parsed BTF: `types[id]` (id 0 is void and left undefined). */
export interface Btf {
  readonly types: ReadonlyArray<BtfType | undefined>;
}

export class BtfFormatError extends Error {}

export function parseBtf(bytes: Uint8Array): Btf {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length < 24 || view.getUint16(0, true) !== BTF_MAGIC) throw new BtfFormatError("not BTF (magic 0xeb9f missing)");
  const headerBytes = view.getUint32(4, true);
  const typeOff = headerBytes + view.getUint32(8, true);
  const typeEnd = typeOff + view.getUint32(12, true);
  const strOff = headerBytes + view.getUint32(16, true);
  const strEnd = strOff + view.getUint32(20, true);
  if (typeEnd > bytes.length || strEnd > bytes.length) throw new BtfFormatError("BTF sections run past the data");
  const decoder = new TextDecoder();
  const stringAt = (offset: number): string => {
    if (offset === 0) return "";
    const start = strOff + offset;
    let end = start;
    while (end < strEnd && bytes[end] !== 0) end++;
    return decoder.decode(bytes.subarray(start, end));
  };
  const types: Array<BtfType | undefined> = [undefined];
  let at = typeOff;
  const u32 = () => {
    if (at + 4 > typeEnd) throw new BtfFormatError("truncated BTF type record");
    const value = view.getUint32(at, true);
    at += 4;
    return value;
  };
  while (at < typeEnd) {
    const id = types.length;
    const name = stringAt(u32());
    const info = u32();
    const sizeOrType = u32();
    const vlen = info & 0xffff;
    const kind = ((info >>> 24) & 0x1f) as BtfKind;
    const kindFlag = info >>> 31 === 1;
    const base = { id, kind, name, sizeOrType };
    switch (kind) {
      case BtfKind.Int: {
        const encoding = u32();
        types.push({ ...base, int: { signed: ((encoding >>> 24) & 1) === 1, bool: ((encoding >>> 24) & 4) === 4, bits: encoding & 0xff } });
        break;
      }
      case BtfKind.Array: {
        const type = u32();
        u32(); // index type
        types.push({ ...base, array: { type, count: u32() } });
        break;
      }
      case BtfKind.Struct:
      case BtfKind.Union: {
        const members: BtfMember[] = [];
        for (let i = 0; i < vlen; i++) {
          const memberName = stringAt(u32());
          const type = u32();
          const offset = u32();
          members.push({ name: memberName, type, bitOffset: kindFlag ? offset & 0xffffff : offset, bitSize: kindFlag ? offset >>> 24 : 0 });
        }
        types.push({ ...base, members });
        break;
      }
      case BtfKind.Enum: {
        const enumerators = [];
        for (let i = 0; i < vlen; i++) {
          const enumName = stringAt(u32());
          enumerators.push({ name: enumName, value: BigInt(view.getInt32((at += 4) - 4, true)) });
        }
        types.push({ ...base, enumerators });
        break;
      }
      case BtfKind.Enum64: {
        const enumerators = [];
        for (let i = 0; i < vlen; i++) {
          const enumName = stringAt(u32());
          const low = BigInt(u32());
          const high = BigInt(u32());
          enumerators.push({ name: enumName, value: (high << 32n) | low });
        }
        types.push({ ...base, enumerators });
        break;
      }
      case BtfKind.FuncProto:
        at += 8 * vlen;
        types.push(base);
        break;
      case BtfKind.Var:
      case BtfKind.DeclTag:
        u32();
        types.push(base);
        break;
      case BtfKind.Datasec: {
        const vars = [];
        for (let i = 0; i < vlen; i++) vars.push({ type: u32(), offset: u32(), size: u32() });
        types.push({ ...base, vars });
        break;
      }
      case BtfKind.Ptr: case BtfKind.Fwd: case BtfKind.Typedef: case BtfKind.Volatile: case BtfKind.Const:
      case BtfKind.Restrict: case BtfKind.Func: case BtfKind.Float: case BtfKind.TypeTag:
        types.push(base);
        break;
      default:
        throw new BtfFormatError(`unknown BTF kind ${kind as number} (type ${id})`);
    }
  }
  return { types };
}
