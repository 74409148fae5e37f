// SPDX-License-Identifier: Apache-2.0
// Contract for the proto toolchain (conventions §1, §6, §7.6): the API lints
// clean, stays wire-compatible with the committed baseline image, and the
// committed protoc-gen-es output in proto/gen is exactly what `npm run
// generate` produces. Runs buf from node_modules, fully offline.
import { spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import { fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const BIN = join(ROOT, "node_modules", ".bin");
const BUF = join(BIN, "buf");
const BASELINE = join(ROOT, "proto", "baseline", "kvmi-v1.binpb");
const GEN = join(ROOT, "proto", "gen");

const tempDirs: string[] = [];
afterAll(() => {
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});

function tempDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  tempDirs.push(dir);
  return dir;
}

interface BufResult {
  status: number | null;
  output: string;
}

/** Runs buf with node_modules/.bin first on PATH, so `local: protoc-gen-es` resolves. */
function buf(args: string[], cwd = ROOT): BufResult {
  if (!existsSync(BUF)) throw new Error(`buf not found at ${BUF}: run npm ci`);
  const r = spawnSync(BUF, args, {
    cwd,
    encoding: "utf8",
    env: { ...process.env, PATH: `${BIN}${delimiter}${process.env.PATH ?? ""}` },
    timeout: 25_000,
  });
  if (r.error) throw r.error;
  const output = `$ buf ${args.join(" ")}  (exit ${r.status})\n${r.stdout}${r.stderr}`;
  return { status: r.status, output };
}

/** Copies the buf workspace (buf.yaml + .proto sources) to a temp dir for mutation tests. */
function copyWorkspace(): string {
  const dir = tempDir("kvmi-proto-ws-");
  cpSync(join(ROOT, "buf.yaml"), join(dir, "buf.yaml"));
  for (const sub of ["kvmi", "google"]) {
    cpSync(join(ROOT, "proto", sub), join(dir, "proto", sub), { recursive: true });
  }
  return dir;
}

function listFiles(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => relative(dir, join(e.parentPath, e.name)))
    .sort();
}

/** Describes the first differing line of two texts, for assertion messages. */
function firstDifference(expected: string, actual: string): string {
  const a = expected.split("\n");
  const b = actual.split("\n");
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    if (a[i] !== b[i]) return `line ${i + 1}:\n  committed:   ${a[i] ?? "<eof>"}\n  regenerated: ${b[i] ?? "<eof>"}`;
  }
  return "identical text";
}

describe("buf lint", () => {
  it("passes with zero findings (STANDARD + COMMENTS)", () => {
    const r = buf(["lint", "--error-format=text"]);
    expect(r.status, r.output).toBe(0);
    expect(r.output.split("\n").slice(1).join("").trim(), r.output).toBe("");
  });

  it("is armed: an uncommented message in kvmi/v1 is a finding", () => {
    const ws = copyWorkspace();
    const file = join(ws, "proto", "kvmi", "v1", "vm.proto");
    writeFileSync(file, `${readFileSync(file, "utf8")}\nmessage LintProbe {}\n`);
    const r = buf(["lint", "--error-format=json"], ws);
    expect(r.status, r.output).not.toBe(0);
    expect(r.output, r.output).toContain("COMMENT_MESSAGE");
  });

  it("sees only the .proto sources (proto/gen and proto/baseline are excluded)", () => {
    const r = buf(["ls-files"]);
    expect(r.status, r.output).toBe(0);
    const files = r.output.split("\n").slice(1).filter(Boolean);
    expect(files, r.output).toContain("proto/kvmi/v1/introspection_service.proto");
    expect(files.filter((f) => !/^proto\/(kvmi\/v1|google\/(api|rpc))\/[a-z_]+\.proto$/.test(f)), r.output).toEqual([]);
  });
});

describe("buf breaking", () => {
  it("the committed baseline is a real image of the kvmi.v1 API", () => {
    expect(existsSync(BASELINE), `missing ${BASELINE}: run npm run proto:baseline`).toBe(true);
    // A buf image is wire-compatible with google.protobuf.FileDescriptorSet.
    const image = fromBinary(FileDescriptorSetSchema, readFileSync(BASELINE));
    const service = image.file
      .find((f) => f.name === "kvmi/v1/introspection_service.proto")
      ?.service.find((s) => s.name === "IntrospectionService");
    expect(service?.method.length ?? 0, `baseline files: ${image.file.map((f) => f.name).join(", ")}`).toBeGreaterThanOrEqual(32);
  });

  it("finds no breaking change against the baseline (FILE rules)", () => {
    const r = buf(["breaking", "--against", BASELINE, "--error-format=text"]);
    expect(r.status, r.output).toBe(0);
  });

  it("is armed: renumbering a field is a breaking change", () => {
    const ws = copyWorkspace();
    const file = join(ws, "proto", "kvmi", "v1", "vm.proto");
    const source = readFileSync(file, "utf8");
    const mutated = source.replace("uint64 generation = 5", "uint64 generation = 99");
    expect(mutated, "probe did not apply: vm.proto changed, update this test").not.toBe(source);
    writeFileSync(file, mutated);
    const r = buf(["breaking", "--against", BASELINE, "--error-format=json"], ws);
    expect(r.status, r.output).not.toBe(0);
    expect(r.output, r.output).toContain("FIELD_NO_DELETE");
  });
});

describe("generated code", () => {
  it("regenerating with buf.gen.yaml reproduces proto/gen byte for byte", () => {
    const out = tempDir("kvmi-proto-gen-");
    // -o prefixes the template's `out` (proto/gen), so the committed template is used unchanged.
    const r = buf(["generate", "--template", join(ROOT, "buf.gen.yaml"), "-o", out]);
    expect(r.status, r.output).toBe(0);

    const fresh = join(out, "proto", "gen");
    const committedFiles = listFiles(GEN);
    const freshFiles = listFiles(fresh);
    expect(freshFiles.length, `${r.output}\nbuf generated nothing`).toBeGreaterThan(0);
    expect(committedFiles, "file list differs: run npm run generate and commit proto/gen").toEqual(freshFiles);

    const changed: string[] = [];
    for (const name of freshFiles) {
      const a = readFileSync(join(GEN, name));
      const b = readFileSync(join(fresh, name));
      if (!a.equals(b)) changed.push(`${name}: ${firstDifference(a.toString("utf8"), b.toString("utf8"))}`);
    }
    expect(changed, `proto/gen is stale or hand-edited; run npm run generate and commit:\n${changed.join("\n")}`).toEqual([]);
  });
});
