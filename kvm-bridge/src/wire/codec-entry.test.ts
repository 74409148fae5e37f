// SPDX-License-Identifier: Apache-2.0
/**
 * `@kvmi/kvm-bridge/codec` is what `clients/` may import (README, design notes): its module graph
 * must hold no listener, emulator, ioctl or ffi-rs. Walked from the sources, so a new import that
 * drags the node side in fails here rather than in a client's bundle.
 */
import { readFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const SRC = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const PACKAGE = JSON.parse(readFileSync(join(SRC, "..", "package.json"), "utf8")) as { exports: Record<string, string> };

/** Every module reachable from `entry` (relative imports followed, `import type` ignored), and the bare imports. */
function graph(entry: string): { files: Set<string>; bare: Set<string> } {
  const files = new Set<string>();
  const bare = new Set<string>();
  const visit = (file: string): void => {
    if (files.has(file)) return;
    files.add(file);
    const source = readFileSync(file, "utf8");
    for (const m of source.matchAll(/^(?:import|export)\s+(type\s+)?[^;]*?from\s+"([^"]+)";/gms)) {
      const [, typeOnly, spec] = m;
      if (typeOnly !== undefined) continue;
      if (spec!.startsWith(".")) visit(resolve(dirname(file), spec!.replace(/\.js$/, ".ts")));
      else bare.add(spec!);
    }
  };
  visit(entry);
  return { files, bare };
}

describe("@kvmi/kvm-bridge/codec", () => {
  const entry = join(SRC, "..", PACKAGE.exports["./codec"]!);
  const { files, bare } = graph(entry);
  const inSrc = [...files].map((f) => relative(SRC, f));

  it("is exported by the package", () => {
    expect(PACKAGE.exports["./codec"]).toBe("./src/wire/index.ts");
  });

  it("reaches no listener, channel, emulator or ioctl module", () => {
    expect(inSrc.length).toBeGreaterThan(10);
    const nodeSide = inSrc.filter((f) => /^(emulator|ioctl)\//.test(f) || (f.startsWith("session/") && f !== "session/framer.ts"));
    expect(nodeSide).toEqual([]);
  });

  it("imports no socket, process or ffi module", () => {
    const forbidden = [...bare].filter((b) => ["node:net", "node:child_process", "node:dgram", "ffi-rs", "node:fs"].includes(b));
    expect(forbidden).toEqual([]);
    // node:crypto stays: the handshake's cookie hash is SHA-1 (kvmi-abi §2.2).
    expect([...bare].every((b) => b.startsWith("node:"))).toBe(true);
  });
});
