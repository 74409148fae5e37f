// SPDX-License-Identifier: Apache-2.0
// The committed protoc-gen-es output for the vendored KubeVirt hook protocol is exactly what
// `npm run generate:kubevirt` produces, and the vendored protos stay outside the kvmi.v1 buf module
// (its lint and breaking checks never see them). Runs buf from node_modules, offline.
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";

const ROOT = fileURLToPath(new URL("../../../", import.meta.url));
const BIN = join(ROOT, "node_modules", ".bin");
const GEN = join(ROOT, "service", "src", "kubevirt", "gen");
const TEMPLATE = join(ROOT, "deploy", "kubevirt", "buf.gen.yaml");
const scratch = mkdtempSync(join(tmpdir(), "kvmi-kubevirt-gen-"));

afterAll(() => rmSync(scratch, { recursive: true, force: true }));

function buf(args: string[]): { status: number | null; output: string } {
  const bufPath = join(BIN, "buf");
  if (!existsSync(bufPath)) throw new Error(`buf not found at ${bufPath}: run npm ci`);
  const r = spawnSync(bufPath, args, { cwd: ROOT, encoding: "utf8", env: { ...process.env, PATH: `${BIN}${delimiter}${process.env.PATH ?? ""}` }, timeout: 25_000 });
  if (r.error) throw r.error;
  return { status: r.status, output: `$ buf ${args.join(" ")}  (exit ${r.status})\n${r.stdout}${r.stderr}` };
}

function listFiles(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => relative(dir, join(e.parentPath, e.name)))
    .sort();
}

// buf runs as a child process: seconds on a loaded machine, so these get the contract timeout.
describe("KubeVirt hook protocol code generation", { timeout: 60_000 }, () => {
  it("regenerating with deploy/kubevirt/buf.gen.yaml reproduces service/src/kubevirt/gen byte for byte", () => {
    // -o prefixes the template's `out`, so the committed template is used unchanged.
    const r = buf(["generate", "--template", TEMPLATE, "-o", scratch]);
    expect(r.status, r.output).toBe(0);
    const fresh = join(scratch, "service", "src", "kubevirt", "gen");
    const files = listFiles(fresh);
    expect(files, r.output).toEqual(["kubevirt/hooks/info/api_info_pb.ts", "kubevirt/hooks/plugins/v1alpha1/api_pb.ts", "kubevirt/hooks/v1alpha3/api_v1alpha3_pb.ts"]);
    expect(listFiles(GEN), "file list differs: run npm run generate:kubevirt").toEqual(files);
    const stale = files.filter((name) => !readFileSync(join(GEN, name)).equals(readFileSync(join(fresh, name))));
    expect(stale, "service/src/kubevirt/gen is stale or hand-edited: run npm run generate:kubevirt").toEqual([]);
  }, 30_000);

  it("keeps the vendored protos out of the kvmi.v1 module", () => {
    const r = buf(["ls-files"]);
    expect(r.status, r.output).toBe(0);
    expect(r.output).toContain("proto/kvmi/v1/introspection_service.proto");
    expect(r.output).not.toMatch(/kubevirt|api_info|api_v1alpha3|plugins/);
  });

  it("vendors the protos with their origin and license header", () => {
    for (const file of ["kubevirt/hooks/info/api_info.proto", "kubevirt/hooks/v1alpha3/api_v1alpha3.proto", "kubevirt/hooks/plugins/v1alpha1/api.proto"]) {
      const text = readFileSync(join(ROOT, "deploy", "kubevirt", "proto", file), "utf8");
      expect(text).toMatch(/^\/\/ Vendored from KubeVirt, unchanged below this header:\n\/\/ {3}https:\/\/github\.com\/kubevirt\/kubevirt\/blob\/[0-9a-f]{40}\/pkg\/hooks\//);
      expect(text).toContain("Licensed under the Apache License, Version 2.0");
    }
  });
});
