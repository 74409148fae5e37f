// SPDX-License-Identifier: Apache-2.0
/**
 * @internal Test helpers for the mapping tests: hand-written wire samples, and a read tracker that
 * records which wire fields a mapping function actually touches. Not used by production code.
 */
import type { BodySchema, Layout } from "@kvmi/kvm-bridge/wire";
import type { WireEventArch, WireRegs, WireSegment, WireSregs } from "./registers.js";

export const UUID = "5b8a3c7e-1d2f-4e6a-9b0c-7d8e9f0a1b2c";
export const VM = `vms/${UUID}`;
export const VCPU = `${VM}/vcpus/2`;

/** `kvm_regs` with a distinct value in every register. */
export function sampleRegs(seed = 1n): WireRegs {
  const names = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags"] as const;
  const out = {} as WireRegs;
  names.forEach((n, i) => (out[n] = 0x1000_0000_0000_0000n * seed + BigInt(i + 1)));
  return out;
}

/** A `kvm_segment` whose flags are all 0/1 (the kernel never reports anything else). */
export function sampleSegment(i: number): WireSegment {
  return {
    base: 0xffff_8000_0000_0000n + BigInt(i),
    limit: 0xffff_f000 + i,
    selector: 0x10 + i * 8,
    type: (i + 3) % 16,
    present: 1,
    dpl: i % 4,
    db: i % 2,
    s: (i + 1) % 2,
    l: i % 2,
    g: 1,
    avl: 0,
    unusable: i === 7 ? 1 : 0,
  };
}

/** A `kvm_sregs` with distinct values everywhere. */
export function sampleSregs(): WireSregs {
  return {
    cs: sampleSegment(0),
    ds: sampleSegment(1),
    es: sampleSegment(2),
    fs: sampleSegment(3),
    gs: sampleSegment(4),
    ss: sampleSegment(5),
    tr: sampleSegment(6),
    ldt: sampleSegment(7),
    gdt: { base: 0xfffffe0000001000n, limit: 0x7f },
    idt: { base: 0xfffffe0000000000n, limit: 0xfff },
    cr0: 0x8005_0033n,
    cr2: 0x7fff_dead_b000n,
    cr3: 0x1_2345_6000n,
    cr4: 0x3706f0n,
    cr8: 2n,
    efer: 0xd01n,
    apic_base: 0xfee0_0900n,
    interrupt_bitmap: [1n, 2n, 1n << 63n, 0n],
  };
}

/** A `kvmi_event_arch` in 64-bit mode. */
export function sampleArch(): WireEventArch {
  return {
    mode: 8,
    regs: sampleRegs(),
    sregs: sampleSregs(),
    msrs: {
      sysenter_cs: 0x10n,
      sysenter_esp: 0x11n,
      sysenter_eip: 0x12n,
      efer: 0xd01n,
      star: 0x23001000000000n,
      lstar: 0xffffffff81a00010n,
      cstar: 0xffffffff81a01000n,
      pat: 0x7040600070406n,
      shadow_gs: 0xffff88807fc00000n,
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Read/write tracking against the layout tables

/** The coverage key of a tail (see wire-coverage.ts). */
export function tailKey(schema: BodySchema, owner: string): string | undefined {
  return schema.tail === undefined ? undefined : `${schema.layout?.name ?? owner}.${schema.tail.name}`;
}

function trackLayout(value: Record<string, unknown>, layout: Layout, reads: Set<string>): Record<string, unknown> {
  return new Proxy(value, {
    get(target, prop, receiver) {
      const result = Reflect.get(target, prop, receiver);
      if (typeof prop !== "string") return result;
      const field = layout.fields[prop];
      if (field === undefined || field.kind === "pad") return result;
      reads.add(`${layout.name}.${prop}`);
      return field.kind === "struct" ? trackLayout(result as Record<string, unknown>, field.layout, reads) : result;
    },
  });
}

/**
 * Wraps a decoded body so that every read of a wire field (recursively) is recorded as its
 * coverage key in `reads`.
 */
export function trackBody(value: Record<string, unknown>, schema: BodySchema, owner: string, reads: Set<string>): Record<string, unknown> {
  const fixed = schema.layout === null ? value : trackLayout(value, schema.layout, reads);
  const tail = schema.tail;
  if (tail === undefined) return fixed;
  const key = tailKey(schema, owner)!;
  return new Proxy(fixed, {
    get(target, prop, receiver) {
      const result = Reflect.get(target, prop, receiver);
      if (prop !== tail.name) return result;
      reads.add(key);
      if (typeof tail.element === "object") {
        const element = tail.element;
        return (result as Array<Record<string, unknown>>).map((e) => trackLayout(e, element, reads));
      }
      return result;
    },
  });
}

/**
 * Lists the coverage keys present in a body a mapping produced, and the keys the layout does not
 * know (which the encoder would silently ignore, so a mapping must not produce them).
 */
export function writtenKeys(
  value: Record<string, unknown>,
  schema: BodySchema,
  owner: string,
): { readonly present: Set<string>; readonly unknown: string[] } {
  const present = new Set<string>();
  const unknown: string[] = [];
  const walk = (v: Record<string, unknown>, layout: Layout, path: string): void => {
    for (const [k, inner] of Object.entries(v)) {
      const field = layout.fields[k];
      if (field === undefined || field.kind === "pad") {
        unknown.push(`${path}${k}`);
        continue;
      }
      present.add(`${layout.name}.${k}`);
      if (field.kind === "struct") walk(inner as Record<string, unknown>, field.layout, `${path}${k}.`);
    }
  };
  const tail = schema.tail;
  const fixedPart = { ...value };
  if (tail !== undefined && tail.name in fixedPart) {
    present.add(tailKey(schema, owner)!);
    const items = fixedPart[tail.name];
    delete fixedPart[tail.name];
    if (typeof tail.element === "object") {
      (items as Array<Record<string, unknown>>).forEach((e, i) => walk(e, tail.element as Layout, `${tail.name}[${i}].`));
    }
  }
  if (schema.layout !== null) walk(fixedPart, schema.layout, "");
  else unknown.push(...Object.keys(fixedPart));
  return { present, unknown };
}
