// SPDX-License-Identifier: Apache-2.0
/**
 * Declarative layouts of kernel structs (conventions §4). A layout names the C struct, states its
 * total size and gives every field an explicit offset; everything else (encoder, decoder, padding
 * checks, the ioctl numbers, the C cross-check, the proto mapping) derives from these tables.
 *
 * Value objects use the C field names verbatim (`apic_base`, `tsc_speed`) so that grepping a name
 * from `kvmi.h` finds our code. u64/s64 become `bigint`; every other integer is a `number`.
 */

import { KvmiProtocolError } from "../errors.js";

/**
 * A layout table contradicts itself (a field outside the struct, misaligned, overlapping, a hole).
 * Raised at import time, so it never reaches the wire; a protocol error because the table is the
 * protocol's description.
 */
class LayoutDefinitionError extends KvmiProtocolError {}

/** Integer types of the KVMI ABI (kvmi-abi "Conventions"): all little-endian on x86_64. */
export type ScalarType = "u8" | "u16" | "u32" | "s32" | "u64" | "s64";

/** Width in bytes of each scalar type. */
export const SCALAR_BYTES: Readonly<Record<ScalarType, number>> = {
  u8: 1,
  u16: 2,
  u32: 4,
  s32: 4,
  u64: 8,
  s64: 8,
};

export interface ScalarField<T extends ScalarType = ScalarType> {
  readonly kind: "scalar";
  readonly type: T;
  readonly offset: number;
  /**
   * A u64 that decodes as a `number` (see {@link u64AsNumber}): set where a dialect widens a field
   * that is narrow elsewhere, so that every dialect hands consumers the same JS type.
   */
  readonly asNumber?: true;
}

/** A fixed-size byte array (`u8 uuid[16]`, `char name[64]`). */
export interface BytesField {
  readonly kind: "bytes";
  readonly offset: number;
  readonly length: number;
}

/** A fixed-count array of scalars (`u64 interrupt_bitmap[4]`). */
export interface ArrayField<T extends ScalarType = ScalarType> {
  readonly kind: "array";
  readonly type: T;
  readonly offset: number;
  readonly count: number;
}

/** A nested struct (`struct kvm_regs regs`). */
export interface StructField<L extends Layout = Layout> {
  readonly kind: "struct";
  readonly layout: L;
  readonly offset: number;
}

/**
 * Explicit padding. Always written as zero. `checked` marks padding the v9 kernel validates
 * (a non-zero byte there makes the command fail with -KVM_EINVAL, kvmi-abi "Conventions");
 * unchecked padding (e.g. `kvm_segment.padding`, handshake padding) is ignored on receipt.
 */
export interface PadField {
  readonly kind: "pad";
  readonly offset: number;
  readonly length: number;
  readonly checked: boolean;
}

export type Field = ScalarField | BytesField | ArrayField | StructField | PadField;
export type FieldMap = Readonly<Record<string, Field>>;

/** A kernel struct: its C name, `sizeof`, and fields by C name. */
export interface Layout<F extends FieldMap = FieldMap> {
  readonly name: string;
  readonly size: number;
  readonly fields: F;
}

type ScalarValue<T extends ScalarType> = T extends "u64" | "s64" ? bigint : number;

/**
 * The TS value of one field. Padding has none.
 *
 * Width normalisation (docs/decisions/0010-dialect-model.md): u64/s64 decode as `bigint`, narrower
 * integers as `number`, except a u64 built with {@link u64AsNumber}, which decodes as `number`. The
 * encoder accepts either JS type for any integer field (range-checked), so a value read from one
 * dialect can be written to another whatever the field's width there.
 */
export type FieldValue<F extends Field> =
  F extends { readonly asNumber: true }
    ? number
    : F extends ScalarField<infer T>
    ? ScalarValue<T>
    : F extends BytesField
      ? Uint8Array
      : F extends ArrayField<infer T>
        ? ScalarValue<T>[]
        : F extends StructField<infer L>
          ? LayoutValue<L>
          : never;

/** The TS value of a whole layout: every non-padding field by its C name. */
export type LayoutValue<L extends Layout> = {
  -readonly [K in keyof L["fields"] as L["fields"][K] extends PadField ? never : K]: L["fields"][K] extends Field
    ? FieldValue<L["fields"][K]>
    : never;
};

// Field builders. Short on purpose: a layout reads like the C struct with offsets in the margin.
export const u8 = (offset: number): ScalarField<"u8"> => ({ kind: "scalar", type: "u8", offset });
export const u16 = (offset: number): ScalarField<"u16"> => ({ kind: "scalar", type: "u16", offset });
export const u32 = (offset: number): ScalarField<"u32"> => ({ kind: "scalar", type: "u32", offset });
export const s32 = (offset: number): ScalarField<"s32"> => ({ kind: "scalar", type: "s32", offset });
export const u64 = (offset: number): ScalarField<"u64"> => ({ kind: "scalar", type: "u64", offset });
/**
 * A u64 on the wire that decodes as a JS `number`: for a field that is u16 in one dialect and u64 in
 * another (kvmi-v7's READ/WRITE_PHYSICAL `size`) and whose meaningful range is small. Values above
 * 2^53 decode to the nearest double, which is still far above any kernel limit, so a range check
 * on the decoded number rejects them as the kernel would.
 */
export const u64AsNumber = (offset: number): ScalarField<"u64"> & { readonly asNumber: true } => ({
  kind: "scalar",
  type: "u64",
  offset,
  asNumber: true,
});
export const s64 = (offset: number): ScalarField<"s64"> => ({ kind: "scalar", type: "s64", offset });
export const bytes = (offset: number, length: number): BytesField => ({ kind: "bytes", offset, length });
export const array = <T extends ScalarType>(offset: number, type: T, count: number): ArrayField<T> => ({
  kind: "array",
  type,
  offset,
  count,
});
export const struct = <L extends Layout>(offset: number, layout: L): StructField<L> => ({
  kind: "struct",
  layout,
  offset,
});
/** Padding the kernel checks: non-zero means -KVM_EINVAL. */
export const pad = (offset: number, length: number): PadField => ({ kind: "pad", offset, length, checked: true });
/** Padding or reserved bytes the kernel ignores on receipt (still written as zero). */
export const reserved = (offset: number, length: number): PadField => ({
  kind: "pad",
  offset,
  length,
  checked: false,
});

/** Size in bytes of one field. */
export function fieldBytes(field: Field): number {
  switch (field.kind) {
    case "scalar":
      return SCALAR_BYTES[field.type];
    case "bytes":
    case "pad":
      return field.length;
    case "array":
      return SCALAR_BYTES[field.type] * field.count;
    case "struct":
      return field.layout.size;
  }
}

/**
 * Defines a layout and proves it consistent at load time: every field inside `size`, naturally
 * aligned, no two fields overlapping, and every byte covered by a field or explicit padding.
 * A mistake in a table therefore fails at import, not on the wire.
 */
export function defineLayout<const F extends FieldMap>(name: string, size: number, fields: F): Layout<F> {
  const owner = new Array<string | undefined>(size);
  for (const [fieldName, field] of Object.entries(fields)) {
    const width = fieldBytes(field);
    if (field.offset < 0 || field.offset + width > size) {
      throw new LayoutDefinitionError(`layout ${name}: field ${fieldName} @${field.offset}+${width} exceeds size ${size}`);
    }
    const alignment = field.kind === "scalar" || field.kind === "array" ? SCALAR_BYTES[field.type] : 1;
    if (field.offset % alignment !== 0) {
      throw new LayoutDefinitionError(`layout ${name}: field ${fieldName} @${field.offset} is not ${alignment}-byte aligned`);
    }
    for (let i = field.offset; i < field.offset + width; i++) {
      if (owner[i] !== undefined) {
        throw new LayoutDefinitionError(`layout ${name}: field ${fieldName} overlaps ${owner[i]} at byte ${i}`);
      }
      owner[i] = fieldName;
    }
  }
  for (let i = 0; i < size; i++) {
    if (owner[i] === undefined) throw new LayoutDefinitionError(`layout ${name}: byte ${i} is not covered by any field`);
  }
  return Object.freeze({ name, size, fields: Object.freeze(fields) });
}

/** Fields in offset order, padding included. */
export function orderedFields(layout: Layout): ReadonlyArray<readonly [string, Field]> {
  return Object.entries(layout.fields).sort((a, b) => a[1].offset - b[1].offset);
}
