// SPDX-License-Identifier: Apache-2.0
/**
 * C cross-check of the v9 layout tables (conventions §7 item 3): gcc compiles our own declarations
 * of every v9 struct (`test/c/kvmi_v9_layout.c`, written from kvmi-abi §2.3-§6 with natural C
 * alignment) and prints each struct's size and every member's offset and size. The TypeScript
 * tables (`V9_LAYOUTS`) must describe exactly the same structs, byte for byte: same struct set,
 * same sizes, same fields (nested members flattened with dotted names, padding included), same
 * offsets, sizes and signedness. Variable-length tails (C zero-length arrays) are checked against the tail specs
 * of the dialect table.
 *
 * gcc is required: without it this test fails and says so (conventions §11: detect a missing tool and
 * fail with a message that names it).
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fieldBytes, layouts, V9_COMMANDS, V9_LAYOUTS } from "@kvmi/kvm-bridge/wire";
import type { BodySchema, Layout, TailSpec } from "@kvmi/kvm-bridge/wire";

const C_SOURCE = fileURLToPath(new URL("../c/kvmi_v9_layout.c", import.meta.url));

interface CField {
  readonly offset: number;
  readonly size: number;
  /** True for signed integer members (s32, s64). */
  readonly signed: boolean;
}
interface CTail {
  readonly offset: number;
  readonly elementSize: number;
}
interface CStruct {
  readonly size: number;
  readonly fields: Readonly<Record<string, CField>>;
  readonly tails?: Readonly<Record<string, CTail>>;
}
type CLayouts = Readonly<Record<string, CStruct>>;

function errorText(error: unknown): string {
  if (typeof error === "object" && error !== null) {
    const e = error as { message?: string; stderr?: Buffer | string };
    return [e.message, e.stderr?.toString()].filter((s) => s !== undefined && s !== "").join("\n");
  }
  return String(error);
}

let workDir: string | undefined;
let cLayouts: CLayouts;

beforeAll(() => {
  workDir = mkdtempSync(join(tmpdir(), "kvmi-v9-layout-"));
  const binary = join(workDir, "kvmi_v9_layout");
  try {
    execFileSync("gcc", ["-std=gnu11", "-O0", "-Wall", "-Wextra", "-Werror", "-o", binary, C_SOURCE], {
      stdio: "pipe",
      timeout: 60_000,
    });
  } catch (error) {
    const missing = (error as NodeJS.ErrnoException).code === "ENOENT";
    throw new Error(
      missing
        ? "gcc is not installed or not on PATH: the ABI layout cross-check needs a C compiler (apt-get install gcc)"
        : `gcc failed to compile ${C_SOURCE}:\n${errorText(error)}`,
    );
  }
  let stdout: string;
  try {
    stdout = execFileSync(binary, { encoding: "utf8", stdio: "pipe", timeout: 30_000 });
  } catch (error) {
    throw new Error(`${binary} failed (its listing is incomplete or inconsistent):\n${errorText(error)}`);
  }
  try {
    cLayouts = JSON.parse(stdout) as CLayouts;
  } catch (error) {
    throw new Error(`${binary} printed invalid JSON: ${errorText(error)}\n${stdout.slice(0, 2000)}`);
  }
}, 120_000);

afterAll(() => {
  if (workDir !== undefined) rmSync(workDir, { recursive: true, force: true });
});

/** Every field of `layout`, nested struct members flattened as `outer.inner`, offsets from the start. */
function flatten(layout: Layout, prefix = "", base = 0, out: Record<string, CField> = {}): Record<string, CField> {
  for (const [name, field] of Object.entries(layout.fields)) {
    const key = prefix + name;
    const signed = field.kind === "scalar" && (field.type === "s32" || field.type === "s64");
    out[key] = { offset: base + field.offset, size: fieldBytes(field), signed };
    if (field.kind === "struct") flatten(field.layout, `${key}.`, base + field.offset, out);
  }
  return out;
}

/** Dotted paths at which `layout` embeds a struct named `inner`. */
function embeddings(layout: Layout, inner: string, prefix = ""): string[] {
  const out: string[] = [];
  for (const [name, field] of Object.entries(layout.fields)) {
    if (field.kind !== "struct") continue;
    if (field.layout.name === inner) out.push(prefix + name);
    out.push(...embeddings(field.layout, inner, `${prefix}${name}.`));
  }
  return out;
}

/** Every (fixed layout, tail) pair that TypeScript declares: command bodies plus the e820 handshake. */
function tsTails(): Array<{ where: string; layout: Layout; tail: TailSpec }> {
  const out: Array<{ where: string; layout: Layout; tail: TailSpec }> = [];
  const add = (where: string, schema: BodySchema): void => {
    if (schema.layout !== null && schema.tail !== undefined) out.push({ where, layout: schema.layout, tail: schema.tail });
  };
  for (const spec of Object.values(V9_COMMANDS)) {
    add(`${spec.name} request`, spec.request);
    add(`${spec.name} reply`, spec.reply);
  }
  add("qemu_vmi_to_introspector_e820 handshake", layouts.qemuVmiToIntrospectorE820Body);
  return out;
}

/** Bytes of one tail element, from the C widths of kvmi-abi "Conventions" (not from the codec). */
function tailElementBytes(tail: TailSpec): number {
  const element = tail.element;
  if (element === "bytes") return 1;
  if (typeof element === "string") return { u8: 1, u16: 2, u32: 4, s32: 4, u64: 8, s64: 8 }[element];
  return element.size;
}

const parentOf = (path: string): string => (path.includes(".") ? path.slice(0, path.lastIndexOf(".") + 1) : "");
const lastOf = (path: string): string => path.slice(path.lastIndexOf(".") + 1);

describe("v9 struct layouts: TypeScript tables vs gcc", () => {
  it("the C listing itself holds the headline numbers of kvmi-abi §6", () => {
    // Sanity of the C side before it judges anything (the _Static_asserts make these build-time too).
    expect(cLayouts.kvmi_event?.size).toBe(544);
    expect(cLayouts.kvmi_event?.fields["arch.regs.rip"]).toEqual({ offset: 144, size: 8, signed: false });
    expect(cLayouts.kvmi_event?.fields["arch.sregs.cr3"]).toEqual({ offset: 400, size: 8, signed: false });
    expect(cLayouts.kvmi_event?.fields["arch.sregs.interrupt_bitmap"]).toEqual({ offset: 440, size: 32, signed: false });
    expect(cLayouts.kvmi_event?.fields["arch.msrs.shadow_gs"]).toEqual({ offset: 536, size: 8, signed: false });
    expect(cLayouts.kvmi_error_code?.fields["err"]).toEqual({ offset: 0, size: 4, signed: true });
    expect(cLayouts.kvmi_vcpu_get_registers_reply?.size).toBe(472);
    expect(cLayouts.kvm_sregs?.size).toBe(312);
    expect(cLayouts.qemu_vmi_to_introspector_e820?.tails?.["arch.e820_entries"]).toEqual({ offset: 104, elementSize: 24 });
  });

  it("declares the same set of structs", () => {
    const ts = Object.keys(V9_LAYOUTS).sort();
    const c = Object.keys(cLayouts).sort();
    const onlyTs = ts.filter((name) => !(name in cLayouts));
    const onlyC = c.filter((name) => !(name in V9_LAYOUTS));
    expect(
      { onlyInTypeScript: onlyTs, onlyInC: onlyC },
      `struct sets differ: only in V9_LAYOUTS: [${onlyTs.join(", ")}]; only in C: [${onlyC.join(", ")}]`,
    ).toEqual({ onlyInTypeScript: [], onlyInC: [] });
    // The key of V9_LAYOUTS is the layout's own name.
    const misnamed = Object.entries(V9_LAYOUTS).filter(([key, layout]) => key !== layout.name).map(([key]) => key);
    expect(misnamed, `V9_LAYOUTS keys that differ from layout.name: ${misnamed.join(", ")}`).toEqual([]);
  });

  it("agrees on every size, field offset and field size", () => {
    const differences: string[] = [];
    for (const [name, layout] of Object.entries(V9_LAYOUTS)) {
      const c = cLayouts[name];
      if (c === undefined) continue; // reported by the struct-set test
      if (c.size !== layout.size) differences.push(`${name}: sizeof C ${c.size}, TypeScript ${layout.size}`);
      const ts = flatten(layout);
      for (const [field, tsField] of Object.entries(ts)) {
        const cField = c.fields[field];
        if (cField === undefined) {
          differences.push(`${name}.${field}: in TypeScript (@${tsField.offset}, ${tsField.size} B) but not in C`);
        } else if (cField.offset !== tsField.offset || cField.size !== tsField.size || cField.signed !== tsField.signed) {
          const show = (f: CField): string => `@${f.offset} ${f.size} B${f.signed ? " signed" : ""}`;
          differences.push(`${name}.${field}: C ${show(cField)}, TypeScript ${show(tsField)}`);
        }
      }
      for (const [field, cField] of Object.entries(c.fields)) {
        if (!(field in ts)) differences.push(`${name}.${field}: in C (@${cField.offset}, ${cField.size} B) but not in TypeScript`);
      }
    }
    expect(differences, `${differences.length} layout difference(s):\n  ${differences.join("\n  ")}`).toEqual([]);
  });

  it("agrees on every variable-length tail (C zero-length arrays vs the dialect's tail specs)", () => {
    const differences: string[] = [];
    const matched = new Set<string>();
    for (const { where, layout, tail } of tsTails()) {
      const c = cLayouts[layout.name];
      if (c === undefined) {
        differences.push(`${where}: no C struct ${layout.name}`);
        continue;
      }
      const candidates = Object.entries(c.tails ?? {}).filter(([path]) => lastOf(path) === tail.name);
      if (candidates.length !== 1) {
        differences.push(
          `${where}: tail ${tail.name} matches ${candidates.length} C zero-length members of ${layout.name} ` +
            `(C tails: ${Object.keys(c.tails ?? {}).join(", ") || "none"})`,
        );
        continue;
      }
      const [path, cTail] = candidates[0]!;
      matched.add(`${layout.name}:${path}`);
      if (cTail.offset !== layout.size) {
        differences.push(`${where}: C ${layout.name}.${path} starts @${cTail.offset}, the tail follows the ${layout.size}-byte fixed part`);
      }
      if (cTail.elementSize !== tailElementBytes(tail)) {
        differences.push(`${where}: C element of ${path} is ${cTail.elementSize} B, TypeScript ${tailElementBytes(tail)} B`);
      }
      if (tail.countField !== undefined) {
        if (!(tail.countField in c.fields)) differences.push(`${where}: count field ${tail.countField} is not a C member`);
        if (parentOf(tail.countField) !== parentOf(path)) {
          differences.push(`${where}: count field ${tail.countField} is not a sibling of C ${path}`);
        }
      }
    }
    // Every C zero-length member must be a declared tail, directly or through an embedding struct.
    const tails = tsTails();
    for (const [name, c] of Object.entries(cLayouts)) {
      for (const path of Object.keys(c.tails ?? {})) {
        if (matched.has(`${name}:${path}`)) continue;
        const viaOuter = tails.some(({ layout }) =>
          embeddings(layout, name).some((at) => matched.has(`${layout.name}:${at}.${path}`)),
        );
        if (!viaOuter) differences.push(`C ${name}.${path} (zero-length array) has no tail spec in TypeScript`);
      }
    }
    expect(differences, `${differences.length} tail difference(s):\n  ${differences.join("\n  ")}`).toEqual([]);
  });

  it("bounds the XSAVE region tails by sizeof(struct kvm_xsave)", () => {
    const xsave = cLayouts.kvm_xsave?.size;
    expect(xsave).toBe(4096);
    const setTail = V9_COMMANDS.KVMI_VCPU_SET_XSAVE.request.tail;
    expect((setTail.maxCount ?? Infinity) * tailElementBytes(setTail)).toBe(xsave);
  });
});
