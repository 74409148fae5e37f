// SPDX-License-Identifier: Apache-2.0
/**
 * Reader of the hand-written golden byte fixtures in `test/fixtures/wire/*.hex` (conventions §7 item 3).
 *
 * Format: hex byte pairs separated by whitespace; `#` starts a comment that runs to the end of the
 * line; blank lines are allowed. Every token must be exactly two hex digits, so a mistyped byte
 * ("0", "1g", "000") is an error that names its line instead of silently shifting every offset after it.
 *
 * ```
 * 01 00        # kvmi_msg_hdr.id = 1 (KVMI_GET_VERSION)
 * ```
 */
import { readFileSync } from "node:fs";

/** Directory of the wire fixtures. */
export const FIXTURE_DIR = new URL("../fixtures/wire/", import.meta.url);

const BYTE = /^[0-9a-fA-F]{2}$/;

/**
 * Parses fixture text into bytes.
 * @param source shown in error messages (usually the file name).
 * @throws Error naming the source, the 1-based line and column and the offending token.
 */
export function parseHexFixture(text: string, source = "<hex>"): Uint8Array {
  const out: number[] = [];
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i]!;
    const hash = raw.indexOf("#");
    const content = hash < 0 ? raw : raw.slice(0, hash);
    const tokenPattern = /\S+/g;
    for (let m = tokenPattern.exec(content); m !== null; m = tokenPattern.exec(content)) {
      const token = m[0];
      if (!BYTE.test(token)) {
        throw new Error(
          `${source}:${i + 1}:${m.index + 1}: expected a byte as two hex digits, got ${JSON.stringify(token)} ` +
            `(byte offset ${out.length}; line: ${JSON.stringify(raw.trim())})`,
        );
      }
      out.push(Number.parseInt(token, 16));
    }
  }
  return Uint8Array.from(out);
}

/** Reads and parses `test/fixtures/wire/<name>` (the `.hex` suffix may be omitted). */
export function loadFixture(name: string): Uint8Array {
  const file = name.endsWith(".hex") ? name : `${name}.hex`;
  let text: string;
  try {
    text = readFileSync(new URL(file, FIXTURE_DIR), "utf8");
  } catch (cause) {
    throw new Error(`cannot read wire fixture ${file} from ${FIXTURE_DIR.pathname}`, { cause });
  }
  return parseHexFixture(text, file);
}

/** Formats bytes as hex rows of 16 for assertion messages. */
export function toHexRows(bytes: Uint8Array): string {
  const rows: string[] = [];
  for (let at = 0; at < bytes.length; at += 16) {
    const row = [...bytes.subarray(at, at + 16)].map((b) => b.toString(16).padStart(2, "0")).join(" ");
    rows.push(`${at.toString().padStart(5, " ")}: ${row}`);
  }
  return rows.join("\n");
}
