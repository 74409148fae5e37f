// SPDX-License-Identifier: Apache-2.0
// The repository documents itself: README, clients/README.md, the proto comments and docs/ point only
// at files in the repository (no ABI sheet or conventions file that users do not have), every
// relative link and cited section exists, the README shows the real-QEMU command line and keeps its
// two-command quick start, and the example VM names are the ones `npm start` creates.
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { loadConfigOrThrow } from "@kvmi/service";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));

/** Pages that other branches of this round add (the dialect pages); they link fine once merged. */

function filesUnder(dir: string, ext: string): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(join(ROOT, dir))) {
    if (entry === "node_modules" || entry === "gen" || entry.startsWith(".")) continue;
    const path = join(dir, entry);
    if (statSync(join(ROOT, path)).isDirectory()) out.push(...filesUnder(path, ext));
    else if (entry.endsWith(ext)) out.push(path);
  }
  return out;
}

const markdown = ["README.md", "CHANGELOG.md", ...["clients", "deploy", "docs", "test", "service", "kvm-bridge", "proto"].flatMap((d) => filesUnder(d, ".md"))];
const protos = filesUnder("proto/kvmi", ".proto");
const read = (path: string): string => readFileSync(join(ROOT, path), "utf8");

/** GitHub's anchor of a heading. */
function slug(heading: string): string {
  return heading
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N}\s_-]/gu, "")
    .replace(/\s/g, "-");
}
const headings = (path: string): string[] => [...read(path).matchAll(/^#{1,6} (.+)$/gm)].map((m) => m[1]!);

describe("references", () => {
  it("no README, doc or proto comment cites the ABI sheet or conventions file that users do not have", () => {
    const offenders = [...markdown, ...protos].filter((path) => /kvmi-abi|conventions(\.md)? §|shared\/conventions/.test(read(path)));
    expect(offenders).toEqual([]);
  });

  it("every relative link in the docs leads to a file, and every #anchor to a heading", () => {
    const broken: string[] = [];
    for (const path of markdown) {
      // Links outside code blocks: [text](target) where target is not a URL.
      const text = read(path).replace(/```[\s\S]*?```/g, "");
      for (const m of text.matchAll(/\]\(([^)\s]+)\)/g)) {
        const target = m[1]!;
        if (/^[a-z]+:/i.test(target)) continue;
        const [file, anchor] = target.split("#") as [string, string | undefined];
        const resolved = file === "" ? path : relative(ROOT, resolve(ROOT, dirname(path), file));
        if (!existsSync(join(ROOT, resolved))) {
          broken.push(`${path}: ${target} (no ${resolved})`);
          continue;
        }
        if (anchor !== undefined && resolved.endsWith(".md") && !headings(resolved).map(slug).includes(anchor)) broken.push(`${path}: ${target} (no heading #${anchor})`);
      }
    }
    expect(broken).toEqual([]);
  });

  it("every docs/ page and section a proto comment cites exists", () => {
    const broken: string[] = [];
    for (const path of protos) {
      const text = read(path).replace(/\n\s*\/\/\s*/g, " ");
      for (const m of text.matchAll(/(docs\/[\w/.-]+\.md)(?:, "([^"]+)")?/g)) {
        const [, page, section] = m;
        if (!existsSync(join(ROOT, page!))) broken.push(`${path}: ${page}`);
        else if (section !== undefined && !headings(page!).some((h) => h.startsWith(section))) broken.push(`${path}: ${page} "${section}"`);
      }
    }
    expect(broken).toEqual([]);
    expect(protos.some((path) => read(path).includes("docs/protocol/v9.md"))).toBe(true);
  });
});

describe("the README", () => {
  const readme = read("README.md");

  it("keeps the two-command quick start", () => {
    const quickStart = readme.slice(readme.indexOf("## Quick start"));
    const firstBlock = /```sh\n([\s\S]*?)```/.exec(quickStart)![1]!;
    expect(firstBlock.split("\n").filter(Boolean).map((l) => l.replace(/\s+#.*$/, "").trim())).toEqual(["npm ci && npm start", "npm test"]);
  });

  it("shows how to run a real KVMI QEMU against the bridge, before the architecture", () => {
    const qemu = readme.indexOf("-object introspection,id=kvmi,chardev=kvmi0");
    expect(qemu).toBeGreaterThan(0);
    expect(readme).toMatch(/-chardev socket,id=kvmi0,type=unix,path=\/run\/kvmi-bridge\/kvmi\.sock,reconnect=\d+/);
    expect(qemu).toBeLessThan(readme.indexOf("## Architecture"));
  });

  it("keeps performance on its own page, so the user guide comes first", () => {
    const section = readme.slice(readme.indexOf("## Performance"), readme.indexOf("\n## ", readme.indexOf("## Performance") + 1));
    expect(section.split("\n").length).toBeLessThan(10);
    expect(section).toContain("docs/performance.md");
    expect(read("docs/performance.md")).toMatch(/^# Performance/);
  });

  it("documents the protocol and our conventions in the repository, with the minimum protoc", () => {
    for (const page of ["docs/protocol/README.md", "docs/protocol/v9.md", "docs/conventions.md"]) expect(existsSync(join(ROOT, page)), page).toBe(true);
    const overview = headings("docs/protocol/README.md");
    for (const topic of ["Framing", "Handshake", "Unhook", "Permissions", "Errors"]) expect(overview.some((h) => h.startsWith(topic)), topic).toBe(true);
    expect(read("docs/conventions.md")).toMatch(/protoc 3\.15 or newer/);
  });
});

describe("clients/README.md", () => {
  it("uses the VM names `npm start` creates", () => {
    // `npm start` is `kvmi-bridge --embedded`: embeddedVms VMs named demo-0, demo-1, … (service/src/embedded.ts).
    const config = loadConfigOrThrow({ argv: ["--embedded"], env: {}, cwd: ROOT });
    const started = Array.from({ length: config.embeddedVms }, (_, i) => `demo-${i}`);
    expect(read("service/src/embedded.ts")).toContain('namePrefix: "demo"');
    const used = [...read("clients/README.md").matchAll(/--vm ([\w-]+)|resolveVm\("([\w-]+)"\)/g)].map((m) => m[1] ?? m[2]);
    expect(used.length).toBeGreaterThan(0);
    for (const name of used) expect(started, name).toContain(name);
  });
});
