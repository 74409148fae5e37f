// SPDX-License-Identifier: Apache-2.0
/**
 * C cross-check of the layout tables of every dialect (conventions §7 item 3): gcc compiles our own
 * declarations of every struct of v9, v12 and kvmi-v7 (`test/c/kvmi_<dialect>_layout.c`, written from
 * the ABI sheet and docs/protocol/ with natural C alignment) and prints each struct's size and every
 * member's offset and size. The TypeScript indexes (`V9_LAYOUTS`, `V12_LAYOUTS`, `KVMI_V7_LAYOUTS`,
 * keyed by each dialect's C names) must describe exactly the same structs, byte for byte: same struct set,
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
import { commandByOp, fieldBytes, KVMI_V7_LAYOUTS, kvmiV7, layouts, V12_LAYOUTS, v12, v9, V9_LAYOUTS } from "@kvmi/kvm-bridge/wire";
import type { BodySchema, Dialect, Layout, TailSpec } from "@kvmi/kvm-bridge/wire";

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

/** One dialect's C listing and the TypeScript index it must match. */
interface DialectCase {
  readonly dialect: Dialect;
  readonly cFile: string;
  /** Every struct of the dialect keyed by its C name in that dialect. */
  readonly layouts: Readonly<Record<string, Layout>>;
  /** C member names our layouts spell differently (the neutral vocabulary, wire/ops.ts): C name -> ours, per struct. */
  readonly renames: Readonly<Record<string, Readonly<Record<string, string>>>>;
  /** Fixed-part + tail pairs outside the command table (the e820 handshake). */
  readonly extraTails: ReadonlyArray<{ where: string; schema: BodySchema }>;
}

const CASES: readonly DialectCase[] = [
  {
    dialect: v9,
    cFile: "kvmi_v9_layout.c",
    layouts: V9_LAYOUTS,
    renames: {},
    extraTails: [{ where: "qemu_vmi_to_introspector_e820 handshake", schema: layouts.qemuVmiToIntrospectorE820Body }],
  },
  { dialect: v12, cFile: "kvmi_v12_layout.c", layouts: V12_LAYOUTS, renames: {}, extraTails: [] },
  {
    dialect: kvmiV7,
    cFile: "kvmi_v7_layout.c",
    layouts: KVMI_V7_LAYOUTS,
    renames: { kvmi_event_trap: { vector: "nr", cr2: "address" } },
    extraTails: [],
  },
];

/** Compiles and runs one listing; fails naming gcc when it is missing. */
function cListing(cFile: string, workDir: string): CLayouts {
  const source = fileURLToPath(new URL(`../c/${cFile}`, import.meta.url));
  const binary = join(workDir, cFile.replace(/\.c$/, ""));
  try {
    execFileSync("gcc", ["-std=gnu11", "-O0", "-Wall", "-Wextra", "-Werror", "-o", binary, source], {
      stdio: "pipe",
      timeout: 60_000,
    });
  } catch (error) {
    const missing = (error as NodeJS.ErrnoException).code === "ENOENT";
    throw new Error(
      missing
        ? "gcc is not installed or not on PATH: the ABI layout cross-check needs a C compiler (apt-get install gcc)"
        : `gcc failed to compile ${source}:\n${errorText(error)}`,
    );
  }
  let stdout: string;
  try {
    stdout = execFileSync(binary, { encoding: "utf8", stdio: "pipe", timeout: 30_000 });
  } catch (error) {
    throw new Error(`${binary} failed (its listing is incomplete or inconsistent):\n${errorText(error)}`);
  }
  try {
    return JSON.parse(stdout) as CLayouts;
  } catch (error) {
    throw new Error(`${binary} printed invalid JSON: ${errorText(error)}\n${stdout.slice(0, 2000)}`);
  }
}

let workDir: string | undefined;
const listings = new Map<string, CLayouts>();

beforeAll(() => {
  workDir = mkdtempSync(join(tmpdir(), "kvmi-layout-"));
  for (const c of CASES) listings.set(c.dialect.name, cListing(c.cFile, workDir));
}, 180_000);

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

/** Dotted paths at which `layout` embeds the struct whose C name is `inner`. */
function embeddings(layout: Layout, inner: string, cNameOf: (l: Layout) => string, prefix = ""): string[] {
  const out: string[] = [];
  for (const [name, field] of Object.entries(layout.fields)) {
    if (field.kind !== "struct") continue;
    if (cNameOf(field.layout) === inner) out.push(prefix + name);
    out.push(...embeddings(field.layout, inner, cNameOf, `${prefix}${name}.`));
  }
  return out;
}

/** Every (fixed layout, tail) pair the dialect declares: command bodies plus the case's extras. */
function tsTails(c: DialectCase): Array<{ where: string; layout: Layout; tail: TailSpec }> {
  const out: Array<{ where: string; layout: Layout; tail: TailSpec }> = [];
  const add = (where: string, schema: BodySchema): void => {
    if (schema.layout !== null && schema.tail !== undefined) out.push({ where, layout: schema.layout, tail: schema.tail });
  };
  for (const spec of c.dialect.commands) {
    add(`${spec.name} request`, spec.request);
    add(`${spec.name} reply`, spec.reply);
  }
  for (const extra of c.extraTails) add(extra.where, extra.schema);
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

/** The C listing with the case's member renames applied (C name -> ours, nested paths too). */
function renamed(c: DialectCase, listing: CLayouts): CLayouts {
  const out: Record<string, CStruct> = {};
  for (const [name, struct] of Object.entries(listing)) {
    const map = c.renames[name] ?? {};
    const rename = (path: string): string => path.split(".").map((part, i) => (i === 0 ? (map[part] ?? part) : part)).join(".");
    out[name] = { ...struct, fields: Object.fromEntries(Object.entries(struct.fields).map(([k, v]) => [rename(k), v])) };
  }
  return out;
}

describe("the C listings themselves hold the headline numbers of the ABI sheet", () => {
  it("v9 (kvmi-abi §6)", () => {
    // Sanity of the C side before it judges anything (the _Static_asserts make these build-time too).
    const c = listings.get("v9")!;
    expect(c.kvmi_event?.size).toBe(544);
    expect(c.kvmi_event?.fields["arch.regs.rip"]).toEqual({ offset: 144, size: 8, signed: false });
    expect(c.kvmi_event?.fields["arch.sregs.cr3"]).toEqual({ offset: 400, size: 8, signed: false });
    expect(c.kvmi_event?.fields["arch.sregs.interrupt_bitmap"]).toEqual({ offset: 440, size: 32, signed: false });
    expect(c.kvmi_event?.fields["arch.msrs.shadow_gs"]).toEqual({ offset: 536, size: 8, signed: false });
    expect(c.kvmi_error_code?.fields["err"]).toEqual({ offset: 0, size: 4, signed: true });
    expect(c.kvmi_vcpu_get_registers_reply?.size).toBe(472);
    expect(c.kvm_sregs?.size).toBe(312);
    expect(c.qemu_vmi_to_introspector_e820?.tails?.["arch.e820_entries"]).toEqual({ offset: 104, elementSize: 24 });
  });

  it("v12 (kvmi-abi §1.3)", () => {
    const c = listings.get("v12")!;
    expect(c.kvmi_event_hdr?.size).toBe(8);
    expect(c.kvmi_vcpu_event?.size).toBe(544);
    expect(c.kvmi_vcpu_event?.fields["arch.regs.rip"]).toEqual({ offset: 144, size: 8, signed: false });
    expect(c.kvmi_get_version_reply?.fields["max_msg_size"]).toEqual({ offset: 4, size: 4, signed: false });
    expect(c.kvmi_vm_pause_vcpu?.fields["wait"]).toEqual({ offset: 2, size: 1, signed: false });
    expect(c.kvmi_page_access_entry?.fields["padding"]).toEqual({ offset: 9, size: 7, signed: false });
  });

  it("kvmi-v7 (kvmi-abi §1.4)", () => {
    const c = listings.get("kvmi-v7")!;
    expect(c.kvmi_event?.size).toBe(544);
    expect(c.kvmi_event?.fields["arch.view"]).toEqual({ offset: 10, size: 2, signed: false });
    expect(c.kvmi_event_pf_reply?.size).toBe(272);
    expect(c.kvmi_read_physical?.fields["size"]).toEqual({ offset: 8, size: 8, signed: false });
    expect(c.kvmi_control_cr?.fields["cr"]).toEqual({ offset: 4, size: 4, signed: false });
    expect(c.kvmi_event_cr?.fields["cr"]).toEqual({ offset: 0, size: 2, signed: false });
    expect(c.kvmi_set_page_access?.fields["view"]).toEqual({ offset: 0, size: 2, signed: false });
  });
});

describe.each(CASES.map((c) => [c.dialect.name, c] as const))("%s struct layouts: TypeScript tables vs gcc", (_name, dc) => {
  const index = dc.layouts;
  const cNames = new Map<Layout, string>(Object.entries(index).map(([key, layout]) => [layout, key]));
  const cNameOf = (layout: Layout): string => cNames.get(layout) ?? layout.name;
  const listing = (): CLayouts => renamed(dc, listings.get(dc.dialect.name)!);

  it("declares the same set of structs", () => {
    const cLayouts = listing();
    const ts = Object.keys(index).sort();
    const c = Object.keys(cLayouts).sort();
    const onlyTs = ts.filter((name) => !(name in cLayouts));
    const onlyC = c.filter((name) => !(name in index));
    expect(
      { onlyInTypeScript: onlyTs, onlyInC: onlyC },
      `struct sets differ: only in the ${dc.dialect.name} index: [${onlyTs.join(", ")}]; only in C: [${onlyC.join(", ")}]`,
    ).toEqual({ onlyInTypeScript: [], onlyInC: [] });
    // Each layout appears once, so a C name identifies it.
    expect(cNames.size).toBe(ts.length);
  });

  it("indexes every layout the dialect table uses", () => {
    const used = new Set<Layout>();
    const add = (l: Layout | null | undefined): void => {
      if (l != null) used.add(l);
    };
    for (const spec of dc.dialect.commands) {
      add(spec.request.layout);
      add(spec.reply.layout);
      for (const t of [spec.request.tail, spec.reply.tail]) if (t !== undefined && typeof t.element === "object") add(t.element);
    }
    for (const spec of dc.dialect.events) {
      add(spec.payload);
      add(spec.replyData);
    }
    for (const l of Object.values(dc.dialect.layouts)) add(l as Layout | null);
    const missing = [...used].filter((l) => !cNames.has(l)).map((l) => l.name);
    expect(missing).toEqual([]);
  });

  it("agrees on every size, field offset and field size", () => {
    const cLayouts = listing();
    const differences: string[] = [];
    for (const [name, layout] of Object.entries(index)) {
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
    const cLayouts = listing();
    const differences: string[] = [];
    const matched = new Set<string>();
    for (const { where, layout, tail } of tsTails(dc)) {
      const cName = cNameOf(layout);
      const c = cLayouts[cName];
      if (c === undefined) {
        differences.push(`${where}: no C struct ${cName}`);
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
      matched.add(`${cName}:${path}`);
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
    const tails = tsTails(dc);
    for (const [name, c] of Object.entries(cLayouts)) {
      for (const path of Object.keys(c.tails ?? {})) {
        if (matched.has(`${name}:${path}`)) continue;
        const viaOuter = tails.some(({ layout }) =>
          embeddings(layout, name, cNameOf).some((at) => matched.has(`${cNameOf(layout)}:${at}.${path}`)),
        );
        if (!viaOuter) differences.push(`C ${name}.${path} (zero-length array) has no tail spec in TypeScript`);
      }
    }
    expect(differences, `${differences.length} tail difference(s):\n  ${differences.join("\n  ")}`).toEqual([]);
  });

  it("bounds SET_XSAVE by sizeof(struct kvm_xsave)", () => {
    const xsave = listings.get("v9")!.kvm_xsave?.size;
    expect(xsave).toBe(4096);
    const request = commandByOp(dc.dialect, "SET_XSAVE")!.request;
    const bytes = request.tail !== undefined ? (request.tail.maxCount ?? Infinity) * tailElementBytes(request.tail) : request.layout!.size;
    expect(bytes).toBe(xsave);
    expect(dc.dialect.limits.maxXsaveBytes).toBe(xsave);
  });
});
