// SPDX-License-Identifier: Apache-2.0
/**
 * The audit trail: one JSON line per security-relevant action (attach, release, guest-changing
 * commands, ReleaseVm, denials, policy reloads), appended to a file with size-based rotation and/or
 * written to stdout. Each record carries `seq` (never reset, also across rotations) and `prev`,
 * the SHA-256 of the previous record's line: editing, removing or reordering a record breaks the
 * chain at the next one, and `kvmi-bridge audit verify` finds it (audit-verify.ts).
 *
 * Records hold names, addresses, sizes and digests, never guest memory, register values or
 * credentials (docs/authorization.md, "Audit").
 */
import { createHash } from "node:crypto";
import { closeSync, existsSync, fstatSync, openSync, readSync, renameSync, writeSync } from "node:fs";

/** `prev` of the very first record. */
export const GENESIS_HASH = "0".repeat(64);

/** What a record is about; the fields besides these depend on the action. */
export interface AuditEvent {
  /** `attach`, `detach`, `command`, `event_reply`, `release_vm`, `denied`, `policy_reload`, `audit_start`. */
  readonly action: string;
  readonly [field: string]: unknown;
}

/** Where records go. */
export interface AuditTrail {
  /** False for {@link NO_AUDIT}: callers skip building records (digests cost) when nothing is kept. */
  readonly enabled: boolean;
  /** Appends one record. Never throws: a failing sink is reported through `onError`. */
  record(event: AuditEvent): void;
  /** Closes the file. */
  close(): void;
}

/** Options of {@link createAuditTrail}. */
export interface AuditTrailOptions {
  /** Audit file; rotated to `FILE.1`, `FILE.2`, … when it would exceed {@link maxBytes}. */
  readonly file?: string | undefined;
  /** Also (or only) write records to this stream, e.g. stdout. */
  readonly stream?: { write(line: string): unknown } | undefined;
  /** Size at which the file rotates; default 64 MiB. */
  readonly maxBytes?: number;
  /** Rotated files kept besides the live one; default 5. */
  readonly maxFiles?: number;
  /** Clock, for tests. */
  readonly now?: () => Date;
  /** Told about write failures (disk full…); the bridge logs them. */
  readonly onError?: (err: Error) => void;
}

/** The audit trail that records nothing (audit off). */
export const NO_AUDIT: AuditTrail = Object.freeze({ enabled: false, record: () => undefined, close: () => undefined });

/** SHA-256 hex of a record line (without its newline). */
export function lineHash(line: string): string {
  return createHash("sha256").update(line).digest("hex");
}

/** How much of a file's end is read to find its last record (records are a few KiB at most). */
const TAIL_BYTES = 1024 * 1024;

/** The `seq` and hash of the last complete record of a file, to continue its chain after a restart. */
function lastRecordOf(path: string): { seq: number; hash: string } | undefined {
  if (!existsSync(path)) return undefined;
  const fd = openSync(path, "r");
  let tail: Buffer;
  try {
    const size = fstatSync(fd).size;
    tail = Buffer.alloc(Math.min(size, TAIL_BYTES));
    readSync(fd, tail, 0, tail.length, size - tail.length);
  } finally {
    closeSync(fd);
  }
  // The first piece may start mid-record; it is only reached when no later line is a record.
  const lines = tail.toString("utf8").split("\n");
  for (let i = lines.length - 1; i >= 0; i--) {
    const line = lines[i]!;
    if (line === "") continue;
    try {
      const seq = (JSON.parse(line) as { seq?: unknown }).seq;
      if (typeof seq === "number") return { seq, hash: lineHash(line) };
    } catch {
      // A torn last line (crash mid-write) is left for `audit verify` to report; the chain goes on
      // from the last whole record.
    }
  }
  return undefined;
}

/**
 * Opens the audit trail. An existing file is continued (its last record's seq and hash), so a
 * restarted bridge extends the same chain.
 * @throws the fs error when the file cannot be opened for appending.
 */
export function createAuditTrail(options: AuditTrailOptions): AuditTrail {
  const maxBytes = options.maxBytes ?? 64 * 1024 * 1024;
  const maxFiles = options.maxFiles ?? 5;
  const now = options.now ?? (() => new Date());
  const file = options.file;
  const last = file === undefined ? undefined : (lastRecordOf(file) ?? lastRecordOf(`${file}.1`));
  let seq = last === undefined ? 0 : last.seq + 1;
  let prev = last?.hash ?? GENESIS_HASH;
  let fd = file === undefined ? undefined : openSync(file, "a", 0o600);
  let size = fd === undefined ? 0 : fstatSync(fd).size;

  const rotate = (): void => {
    closeSync(fd!);
    for (let i = maxFiles - 1; i >= 1; i--) {
      if (existsSync(`${file}.${i}`)) renameSync(`${file}.${i}`, `${file}.${i + 1}`);
    }
    if (maxFiles >= 1) renameSync(file!, `${file}.1`);
    fd = openSync(file!, maxFiles >= 1 ? "a" : "w", 0o600);
    size = 0;
  };

  return {
    enabled: true,
    record(event) {
      // seq and prev first, so that a reader sees the chain before the payload.
      // `audit: true` tells these lines from log lines when both go to stdout.
      const line = JSON.stringify({ audit: true, seq, prev, time: now().toISOString(), ...event }, jsonSafe);
      seq++;
      prev = lineHash(line);
      try {
        if (fd !== undefined) {
          const bytes = Buffer.byteLength(line) + 1;
          if (size > 0 && size + bytes > maxBytes) rotate();
          writeSync(fd, `${line}\n`);
          size += bytes;
        }
        options.stream?.write(`${line}\n`);
      } catch (err) {
        options.onError?.(err as Error);
      }
    },
    close() {
      if (fd !== undefined) closeSync(fd);
      fd = undefined;
    },
  };
}

/**
 * bigint → decimal string; bytes become their size and digest, never their content. The holder's
 * own value is checked because a Buffer's toJSON() runs before the replacer sees it.
 */
function jsonSafe(this: Record<string, unknown>, key: string, value: unknown): unknown {
  const original = this[key];
  if (typeof original === "bigint") return original.toString();
  if (original instanceof Uint8Array) return { bytes: original.length, sha256: createHash("sha256").update(original).digest("hex") };
  return value;
}
