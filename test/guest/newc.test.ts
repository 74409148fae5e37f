// SPDX-License-Identifier: Apache-2.0
// The initramfs writer against GNU cpio, the reference reader of the newc format.
import { spawnSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import { writeNewc } from "./newc.js";

function cpioList(archive: Uint8Array): string[] {
  const run = spawnSync("cpio", ["-itv", "--quiet"], { input: archive, encoding: "utf8" });
  if (run.error) throw new Error("this test needs GNU cpio (Debian's cpio; test/setup/prepare.sh installs it)");
  expect(run.status, run.stderr).toBe(0);
  return run.stdout.trim().split("\n");
}

describe("writeNewc", () => {
  const archive = writeNewc([
    { kind: "dir", path: "bin" },
    { kind: "file", path: "bin/hello", data: new TextEncoder().encode("hi!\n"), mode: 0o755 },
    { kind: "symlink", path: "bin/sh", target: "busybox" },
    { kind: "dir", path: "dev" },
    { kind: "chardev", path: "/dev/console", major: 5, minor: 1 },
  ]);

  it("is read back by cpio with every type, mode, size and device number", () => {
    const lines = cpioList(archive);
    expect(lines).toHaveLength(5);
    expect(lines[0]).toMatch(/^drwxr-xr-x .* bin$/);
    expect(lines[1]).toMatch(/^-rwxr-xr-x .* 4 .* bin\/hello$/);
    expect(lines[2]).toMatch(/^lrwxrwxrwx .* bin\/sh -> busybox$/);
    expect(lines[4]).toMatch(/^crw------- .* 5,\s+1 .* dev\/console$/);
  });

  it("pads every header and body to 4 bytes and ends with the trailer", () => {
    expect(archive.length % 4).toBe(0);
    const text = new TextDecoder("latin1").decode(archive);
    expect(text.startsWith("070701")).toBe(true);
    expect(text).toContain("TRAILER!!!\0");
  });

  it("is reproducible byte for byte", () => {
    const again = writeNewc([{ kind: "file", path: "a", data: new Uint8Array([1, 2, 3]) }]);
    expect(again).toEqual(writeNewc([{ kind: "file", path: "a", data: new Uint8Array([1, 2, 3]) }]));
  });
});
