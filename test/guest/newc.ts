// SPDX-License-Identifier: Apache-2.0
/**
 * A writer for the "newc" cpio format the kernel unpacks as an initramfs
 * (Documentation/driver-api/early-userspace/buffer-format.rst): a 110-byte ASCII header per entry,
 * the NUL-terminated name, the data, each padded to 4 bytes, then a `TRAILER!!!` entry. Writing it
 * here instead of running `cpio` lets an unprivileged build add device nodes (`/dev/console`) and
 * makes the archive byte-for-byte reproducible (fixed owners and times), so its hash is stable.
 */

/** One archive member. */
export type NewcEntry =
  | { readonly kind: "dir"; readonly path: string; readonly mode?: number }
  | { readonly kind: "file"; readonly path: string; readonly data: Uint8Array; readonly mode?: number }
  | { readonly kind: "symlink"; readonly path: string; readonly target: string }
  | { readonly kind: "chardev"; readonly path: string; readonly major: number; readonly minor: number; readonly mode?: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;
const MAGIC = "070701";
const HEADER_BYTES = 110;

const hex8 = (value: number) => value.toString(16).padStart(8, "0");
const pad4 = (length: number) => (4 - (length % 4)) % 4;

/** Encodes entries (parents before children) into one archive. */
export function writeNewc(entries: readonly NewcEntry[]): Uint8Array {
  const chunks: Uint8Array[] = [];
  const encoder = new TextEncoder();
  let inode = 1;
  const push = (name: string, mode: number, data: Uint8Array, rdevMajor = 0, rdevMinor = 0) => {
    const nameBytes = encoder.encode(`${name}\0`);
    const fields = [inode++, mode, 0, 0, mode & S_IFDIR ? 2 : 1, 0, data.length, 0, 0, rdevMajor, rdevMinor, nameBytes.length, 0];
    const header = encoder.encode(MAGIC + fields.map(hex8).join(""));
    chunks.push(header, nameBytes, new Uint8Array(pad4(HEADER_BYTES + nameBytes.length)), data, new Uint8Array(pad4(data.length)));
  };
  for (const entry of entries) {
    const name = entry.path.replace(/^\/+/, "");
    switch (entry.kind) {
      case "dir": push(name, S_IFDIR | (entry.mode ?? 0o755), new Uint8Array()); break;
      case "file": push(name, S_IFREG | (entry.mode ?? 0o644), entry.data); break;
      case "symlink": push(name, S_IFLNK | 0o777, encoder.encode(entry.target)); break;
      case "chardev": push(name, S_IFCHR | (entry.mode ?? 0o600), new Uint8Array(), entry.major, entry.minor); break;
    }
  }
  inode = 0;
  push("TRAILER!!!", 0, new Uint8Array());
  const total = chunks.reduce((sum, chunk) => sum + chunk.length, 0);
  const out = new Uint8Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.length;
  }
  return out;
}
