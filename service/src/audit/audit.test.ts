// SPDX-License-Identifier: Apache-2.0
// The audit trail: hash chain across restarts and rotation, `audit verify` on intact, edited,
// reordered and truncated files, and what a record may contain (digests, never bytes).
import { createHash } from "node:crypto";
import { appendFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { RegsSchema, SetRegistersRequestSchema, WritePhysicalMemoryRequestSchema } from "@kvmi/proto";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createAuditTrail, GENESIS_HASH, lineHash } from "./audit-log.js";
import { summarizeArguments } from "./audit-records.js";
import { auditFileSet, runAuditCommand, verifyAuditFiles } from "./audit-verify.js";

let dir: string;
let file: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "kvmi-audit-test-"));
  file = join(dir, "audit.jsonl");
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

function write(count: number, options: { maxBytes?: number; maxFiles?: number } = {}): void {
  const trail = createAuditTrail({ file, ...options, now: () => new Date("2026-01-01T00:00:00Z") });
  for (let i = 0; i < count; i++) trail.record({ action: "command", identity: "spiffe://example.org/a", command: "KVMI_VM_WRITE_PHYSICAL", n: i });
  trail.close();
}

function lines(path = file): string[] {
  return readFileSync(path, "utf8").trimEnd().split("\n");
}

function verify(): { ok: boolean; problems: readonly string[]; out: string } {
  let out = "";
  let err = "";
  const code = runAuditCommand(["verify", file], { stdout: (t) => (out += t), stderr: (t) => (err += t) });
  return { ok: code === 0, problems: err.trim() === "" ? [] : err.trim().split("\n"), out };
}

describe("the audit chain", () => {
  it("chains each record to the previous one from the genesis hash, and continues after a restart", () => {
    write(3);
    write(2);
    const records = lines().map((l) => JSON.parse(l) as { seq: number; prev: string; audit: boolean });
    expect(records.map((r) => r.seq)).toEqual([0, 1, 2, 3, 4]);
    expect(records[0]!.prev).toBe(GENESIS_HASH);
    for (let i = 1; i < records.length; i++) expect(records[i]!.prev).toBe(lineHash(lines()[i - 1]!));
    expect(records.every((r) => r.audit)).toBe(true);
    const result = verify();
    expect(result).toMatchObject({ ok: true, problems: [] });
    expect(result.out).toContain(`intact: 5 records in 1 file(s), seq 0..4, last hash ${lineHash(lines()[4]!)}`);
  });

  it("detects an edited record", () => {
    write(4);
    const edited = lines();
    edited[1] = edited[1]!.replace("spiffe://example.org/a", "spiffe://example.org/b");
    writeFileSync(file, `${edited.join("\n")}\n`);
    expect(verify()).toMatchObject({ ok: false, problems: [`${file}:3: prev does not match the previous record (a record before it was edited or removed)`] });
  });

  it("detects a removed record, a reordered pair, and a removed first record", () => {
    write(4);
    const original = lines();
    writeFileSync(file, `${[original[0], original[2], original[3]].join("\n")}\n`);
    expect(verify().problems).toEqual([
      `${file}:2: seq 2 follows seq 0 (records missing or reordered)`,
      `${file}:2: prev does not match the previous record (a record before it was edited or removed)`,
    ]);
    writeFileSync(file, `${[original[0], original[2], original[1], original[3]].join("\n")}\n`);
    expect(verify().ok).toBe(false);
    // Without seq 0 the file claims rotated predecessors; a forged seq 0 does not chain to genesis.
    const forged = JSON.stringify({ ...JSON.parse(original[1]!), seq: 0 });
    writeFileSync(file, `${[forged, ...original.slice(2)].join("\n")}\n`);
    expect(verify().problems[0]).toBe(`${file}:1: seq 0 does not start from the genesis hash`);
  });

  it("detects a file truncated mid-record and garbage lines", () => {
    write(3);
    const text = readFileSync(file, "utf8");
    writeFileSync(file, text.slice(0, text.length - 20));
    expect(verify().problems).toEqual([`${file}:3: the last record is incomplete (file truncated or torn write)`]);
    write(0);
    appendFileSync(file, "\n{}\n");
    expect(verify().ok).toBe(false);
  });

  it("rotates by size and verifies the rotated set as one chain, oldest first", () => {
    write(40, { maxBytes: 1024, maxFiles: 20 });
    const set = auditFileSet(file);
    expect(set.length).toBeGreaterThan(3);
    expect(set.at(-1)).toBe(file);
    expect(set[0]).toMatch(/audit\.jsonl\.\d+$/);
    const result = verifyAuditFiles(set);
    expect(result).toMatchObject({ ok: true, records: 40, firstSeq: 0, lastSeq: 39 });
    // Deleting a rotated file in the middle breaks the chain.
    rmSync(set[1]!);
    expect(verifyAuditFiles(set.filter((f) => f !== set[1])).ok).toBe(false);
  });

  it("keeps at most maxFiles rotated files; the oldest kept file starts after seq 0", () => {
    write(60, { maxBytes: 1024, maxFiles: 2 });
    const set = auditFileSet(file);
    expect(set).toHaveLength(3);
    const result = verifyAuditFiles(set);
    expect(result.ok).toBe(true);
    expect(result.firstSeq).toBeGreaterThan(0);
    expect(result.lastSeq).toBe(59);
  });

  it("answers usage errors with exit 2", () => {
    expect(runAuditCommand([], { stdout: () => undefined, stderr: () => undefined })).toBe(2);
    expect(runAuditCommand(["verify"], { stdout: () => undefined, stderr: () => undefined })).toBe(2);
  });
});

describe("record contents", () => {
  it("digests written bytes and names the registers set, without their values", () => {
    const data = new Uint8Array([0xcc, 0x90, 0x41, 0x42]);
    const write = create(WritePhysicalMemoryRequestSchema, { vm: "vms/x", gpa: 0x1000n, data });
    expect(summarizeArguments(write)).toEqual({
      gpa: "0x1000",
      data: { bytes: 4, sha256: createHash("sha256").update(data).digest("hex") },
    });
    const regs = create(SetRegistersRequestSchema, { name: "vms/x/vcpus/0", regs: create(RegsSchema, { rip: 0xfffff800deadbeefn, rax: 1n }) });
    const summary = summarizeArguments(regs) as { regs: { registers: string[]; sha256: string } };
    expect(summary.regs.registers.sort()).toEqual(["rax", "rip"]);
    expect(JSON.stringify(summary)).not.toMatch(/deadbeef|18446/i);
  });

  it("never writes a Buffer's content into the file", () => {
    const trail = createAuditTrail({ file });
    trail.record({ action: "test", data: Buffer.from("guest secret"), big: 5n });
    trail.close();
    const text = readFileSync(file, "utf8");
    expect(text).not.toContain("guest secret");
    expect(text).not.toContain(JSON.stringify([...Buffer.from("guest secret")]).slice(1, 12));
    expect(JSON.parse(text)).toMatchObject({ data: { bytes: 12 }, big: "5" });
  });
});
