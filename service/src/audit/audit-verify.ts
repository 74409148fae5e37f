// SPDX-License-Identifier: Apache-2.0
/**
 * `kvmi-bridge audit verify FILE`: checks the hash chain of an audit file and of its rotated
 * predecessors (`FILE.N` … `FILE.1`, oldest first). Reports the first break: a line that is not
 * a whole JSON record (torn or truncated), a `seq` that does not follow, or a `prev` that is not
 * the SHA-256 of the line before (edited, removed or reordered records).
 *
 * What a chain cannot show by itself: records cut from the very end. The result prints the last
 * seq and hash, to compare with a copy shipped elsewhere (the stdout sink, a log collector).
 */
import { existsSync, readFileSync } from "node:fs";
import { GENESIS_HASH, lineHash } from "./audit-log.js";

/** The outcome of a verification. */
export interface AuditVerifyResult {
  readonly ok: boolean;
  /** Files checked, oldest first. */
  readonly files: readonly string[];
  readonly records: number;
  /** seq of the first record checked; > 0 when older records were rotated away. */
  readonly firstSeq: number | undefined;
  readonly lastSeq: number | undefined;
  /** SHA-256 of the last record's line. */
  readonly lastHash: string | undefined;
  /** Each problem as `FILE:LINE: what`. */
  readonly problems: readonly string[];
}

/** The file and its rotated predecessors that exist, oldest first. */
export function auditFileSet(file: string): string[] {
  const rotated: string[] = [];
  for (let i = 1; existsSync(`${file}.${i}`); i++) rotated.unshift(`${file}.${i}`);
  return [...rotated, file];
}

/**
 * Verifies one chain spread over `files` (oldest first).
 * @throws the fs error when a file cannot be read.
 */
export function verifyAuditFiles(files: readonly string[]): AuditVerifyResult {
  const problems: string[] = [];
  let records = 0;
  let firstSeq: number | undefined;
  let lastSeq: number | undefined;
  let lastHash: string | undefined;
  for (const file of files) {
    const text = readFileSync(file, "utf8");
    const lines = text.split("\n");
    // A file ends with a newline after its last record; anything after it was cut mid-write.
    if (lines.at(-1) !== "") problems.push(`${file}:${lines.length}: the last record is incomplete (file truncated or torn write)`);
    lines.pop();
    lines.forEach((line, index) => {
      const where = `${file}:${index + 1}`;
      let record: { seq?: unknown; prev?: unknown };
      try {
        record = JSON.parse(line) as typeof record;
      } catch {
        problems.push(`${where}: not a JSON record`);
        return;
      }
      if (typeof record.seq !== "number" || typeof record.prev !== "string") {
        problems.push(`${where}: has no seq/prev chain fields`);
        return;
      }
      if (lastSeq === undefined) {
        firstSeq = record.seq;
        // The first record ever chains to the genesis hash; a later first record means older
        // files were rotated away, which only a shipped copy can confirm.
        if (record.seq === 0 && record.prev !== GENESIS_HASH) problems.push(`${where}: seq 0 does not start from the genesis hash`);
      } else {
        if (record.seq !== lastSeq + 1) problems.push(`${where}: seq ${record.seq} follows seq ${lastSeq} (records missing or reordered)`);
        if (record.prev !== lastHash) problems.push(`${where}: prev does not match the previous record (a record before it was edited or removed)`);
      }
      records++;
      lastSeq = record.seq;
      lastHash = lineHash(line);
    });
  }
  return { ok: problems.length === 0, files, records, firstSeq, lastSeq, lastHash, problems };
}

/** Runs the `audit` subcommand; returns the exit code (0 intact, 1 broken, 2 usage). */
export function runAuditCommand(args: readonly string[], io: { stdout(text: string): void; stderr(text: string): void }): number {
  const [verb, ...files] = args;
  if (verb !== "verify" || files.length === 0) {
    io.stderr("usage: kvmi-bridge audit verify FILE [FILE...]\n  checks FILE and its rotated FILE.N predecessors\n");
    return 2;
  }
  let ok = true;
  for (const file of files) {
    let result: AuditVerifyResult;
    try {
      result = verifyAuditFiles(auditFileSet(file));
    } catch (err) {
      io.stderr(`${file}: cannot read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})\n`);
      ok = false;
      continue;
    }
    for (const problem of result.problems) io.stderr(`${problem}\n`);
    const range = result.records === 0 ? "no records" : `seq ${result.firstSeq}..${result.lastSeq}`;
    io.stdout(
      `${file}: ${result.ok ? "intact" : "BROKEN"}: ${result.records} records in ${result.files.length} file(s), ${range}` +
        `${result.lastHash === undefined ? "" : `, last hash ${result.lastHash}`}\n`,
    );
    ok &&= result.ok;
  }
  return ok ? 0 : 1;
}
