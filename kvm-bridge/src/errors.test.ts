// SPDX-License-Identifier: Apache-2.0
/**
 * kvm-bridge throws only KvmiError subclasses (conventions §5): the two places that did not (the
 * codec's bounds check, the listener's bind failure) and a scan of the sources for any other
 * `throw new Error`-style throw.
 */
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { KvmiArgumentError, KvmiError, KvmiTransportError } from "./errors.js";
import { createKvmiListener } from "./session/listener.js";
import { encodeInto, viewOf } from "./wire/codec.js";
import { v9 } from "./wire/dialects/v9.js";
import { kvmiMsgHdr } from "./wire/layouts/common.js";

const SRC = dirname(fileURLToPath(import.meta.url));

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return sources(path);
    // Test code (`*.test.ts`, `test-support.ts`) may throw what it likes.
    return entry.name.endsWith(".ts") && !entry.name.endsWith(".test.ts") && entry.name !== "test-support.ts" ? [path] : [];
  });
}

describe("kvm-bridge throws only KvmiError subclasses", () => {
  it("the codec refuses a view without room for the struct with KvmiArgumentError", () => {
    const tooSmall = viewOf(new Uint8Array(4));
    expect(() => encodeInto(kvmiMsgHdr, { id: 1, size: 0, seq: 1 }, tooSmall)).toThrow(KvmiArgumentError);
  });

  it("a listener that cannot bind fails with KvmiTransportError naming the endpoint", async () => {
    // A path below a regular file can never be bound.
    const path = join(fileURLToPath(import.meta.url), "kvmi.sock");
    const listening = createKvmiListener({ endpoints: [{ kind: "unix", path }], dialect: v9 }, () => undefined);
    await expect(listening).rejects.toBeInstanceOf(KvmiTransportError);
    await expect(listening).rejects.toThrow(`cannot listen on unix:${path}`);
  });

  it("no source file throws a plain Error, RangeError or TypeError", () => {
    const offenders: string[] = [];
    for (const file of sources(SRC)) {
      const text = readFileSync(file, "utf8");
      text.split("\n").forEach((line, i) => {
        if (/\b(throw|reject\()\s*new (Error|RangeError|TypeError|SyntaxError)\(/.test(line)) offenders.push(`${relative(SRC, file)}:${i + 1}`);
      });
    }
    expect(offenders).toEqual([]);
  });

  it("KvmiError is the base of both", () => {
    expect(new KvmiArgumentError("f", "m")).toBeInstanceOf(KvmiError);
    expect(new KvmiTransportError("m")).toBeInstanceOf(KvmiError);
  });
});
