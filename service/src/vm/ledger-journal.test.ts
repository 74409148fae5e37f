// SPDX-License-Identifier: Apache-2.0
/**
 * The ledger journal on disk: what a killed bridge leaves is read back into the same ledger (the
 * undo it produces is compared with a fake channel's record of commands), a torn or corrupt tail is
 * dropped and truncated, compaction keeps the file bounded without losing a change, refusals are
 * not undone, a reboot (another start time) is not confused with the same boot, and two bridges
 * cannot share a state directory.
 */
import { v9 } from "@kvmi/kvm-bridge/wire";
import { appendFileSync, mkdtempSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { KvmiRemoteError, silentLogger } from "@kvmi/kvm-bridge";
import { HookLedger } from "./hook-ledger.js";
import { decodeRecords, encodeRecord, LedgerJournals } from "./ledger-journal.js";

const UUID = "5f3c8a2e-1b4d-4c6e-9a7f-0123456789ab";
let dir: string;
let journals: LedgerJournals;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "kvmi-journal-"));
  journals = new LedgerJournals({ stateDir: dir, compactBytes: 64 * 1024, logger: silentLogger });
});

afterEach(() => {
  journals.close();
  rmSync(dir, { recursive: true, force: true });
});

/**
 * A channel that answers reads with 0x90 and records every command it gets under its v9 name. It
 * takes ops, as KvmiChannel does; `apply` below calls it with v9 names directly, which map to themselves.
 */
function fakeChannel(refuse: ReadonlySet<string> = new Set()) {
  const sent: Array<{ name: string; request: Record<string, unknown>; vcpu: number | undefined }> = [];
  return {
    sent,
    dialect: v9,
    command: async (opOrName: string, request: Record<string, unknown>, vcpu?: number) => {
      const name = v9.commands.find((c) => c.op === opOrName)?.name ?? opOrName;
      sent.push({ name, request, vcpu });
      if (refuse.has(name)) throw new KvmiRemoteError(22);
      if (name === "KVMI_VM_READ_PHYSICAL") return { data: new Uint8Array(request["size"] as number).fill(0x90) };
      return {};
    },
  };
}

type Fake = ReturnType<typeof fakeChannel>;

async function apply(ledger: HookLedger, channel: Fake, name: string, request: Record<string, unknown>, vcpu?: number): Promise<void> {
  await ledger
    .run(channel as never, name as never, request as never, vcpu, () => channel.command(name, request, vcpu) as never)
    .catch((err: unknown) => {
      if (!(err instanceof KvmiRemoteError)) throw err;
    });
}

/** The commands an undo sends, in a stable order. */
async function undoCommands(ledger: HookLedger): Promise<string[]> {
  const channel = fakeChannel();
  await ledger.undo(channel as never, 1000);
  return channel.sent.map((c) => `${c.name} ${c.vcpu ?? "-"} ${JSON.stringify(c.request, (_k, v: unknown) => (typeof v === "bigint" ? `0x${v.toString(16)}` : v instanceof Uint8Array ? [...v] : v))}`).sort();
}

async function hookSome(ledger: HookLedger, channel: Fake): Promise<void> {
  await apply(ledger, channel, "KVMI_VM_WRITE_PHYSICAL", { gpa: 0x30000n, data: Uint8Array.of(0xcc) });
  await apply(ledger, channel, "KVMI_VM_WRITE_PHYSICAL", { gpa: 0x30010n, data: Uint8Array.of(0xe9, 1, 2, 3) });
  await apply(ledger, channel, "KVMI_VM_SET_PAGE_ACCESS", { entries: [{ gpa: 0x40000n, access: 1, visible: 0 }] });
  await apply(ledger, channel, "KVMI_VCPU_CONTROL_CR", { cr: 3, enable: 1 }, 0);
  await apply(ledger, channel, "KVMI_VCPU_CONTROL_MSR", { msr: 0xc0000082, enable: 1 }, 1);
  await apply(ledger, channel, "KVMI_VCPU_CONTROL_EVENTS", { event_id: 3, enable: 1 }, 1);
}

describe("the ledger journal", () => {
  it("replays into a ledger whose undo equals the live ledger's undo", async () => {
    const journal = journals.open(UUID, 1700n);
    const live = new HookLedger(journal);
    await hookSome(live, fakeChannel());
    const recovered = journals.recover(UUID)!;
    expect(recovered.startTime).toBe(1700n);
    const replayed = HookLedger.fromJournal(recovered.records);
    expect(replayed.modifiedBytes).toBe(5);
    expect(await undoCommands(replayed)).toEqual(await undoCommands(live));
    await journal.close();
  });

  it("writes each change before it is sent", async () => {
    const journal = journals.open(UUID, 1n);
    const ledger = new HookLedger(journal);
    let onDiskWhenSent = 0;
    const request = { cr: 4, enable: 1 };
    await ledger.run({ command: async () => ({}) } as never, "KVMI_VCPU_CONTROL_CR", request as never, 0, async () => {
      onDiskWhenSent = decodeRecords(readFileSync(join(dir, "ledger", `${UUID}.journal`))).records.filter((r) => r.t === "c").length;
      return {} as never;
    });
    expect(onDiskWhenSent).toBe(1);
    await journal.close();
  });

  it("does not undo a change the kernel refused, but does undo one whose reply never came", async () => {
    const journal = journals.open(UUID, 1n);
    const ledger = new HookLedger(journal);
    await apply(ledger, fakeChannel(new Set(["KVMI_VCPU_CONTROL_CR"])), "KVMI_VCPU_CONTROL_CR", { cr: 3, enable: 1 }, 0);
    await ledger
      .run({} as never, "KVMI_VCPU_CONTROL_MSR", { msr: 0x174, enable: 1 } as never, 1, () => Promise.reject(new Error("socket lost")))
      .catch(() => undefined);
    await journal.close();
    const replayed = HookLedger.fromJournal(journals.recover(UUID)!.records);
    expect(await undoCommands(replayed)).toEqual(['KVMI_VCPU_CONTROL_MSR 1 {"msr":372,"enable":0}']);
  });

  it("drops a torn tail and a corrupt record, truncating the file to its valid prefix", async () => {
    const journal = journals.open(UUID, 1n);
    await hookSome(new HookLedger(journal), fakeChannel());
    await journal.close();
    const path = join(dir, "ledger", `${UUID}.journal`);
    const valid = statSync(path).size;
    const whole = encodeRecord({ t: "c", n: 99, command: "KVMI_VCPU_CONTROL_CR", vcpu: 1, request: { cr: 4, enable: 1 } });
    appendFileSync(path, whole.subarray(0, whole.length - 5));
    const recovered = journals.recover(UUID)!;
    expect(recovered.droppedBytes).toBe(whole.length - 5);
    expect(statSync(path).size).toBe(valid);
    expect(recovered.records.filter((r) => r.t === "c")).toHaveLength(6);
    // A flipped byte inside a record: that record and everything after it are dropped.
    const bytes = readFileSync(path);
    const third = bytes.indexOf("\n", bytes.indexOf("\n", bytes.indexOf("\n") + 1) + 1);
    bytes[third - 3] ^= 0x01;
    writeFileSync(path, bytes);
    expect(journals.recover(UUID)!.records.filter((r) => r.t === "c")).toHaveLength(1);
  });

  it("compacts past its size limit without losing a change", async () => {
    const small = new LedgerJournals({ stateDir: dir, compactBytes: 8 * 1024, logger: silentLogger });
    const journal = small.open(UUID, 1n);
    const ledger = new HookLedger(journal);
    const channel = fakeChannel();
    // Toggle interceptions on and off: the live ledger stays small, the log would not.
    for (let i = 0; i < 100; i++) {
      await apply(ledger, channel, "KVMI_VCPU_CONTROL_CR", { cr: 4, enable: 1 }, 0);
      await apply(ledger, channel, "KVMI_VCPU_CONTROL_CR", { cr: 4, enable: 0 }, 0);
      await apply(ledger, channel, "KVMI_VM_WRITE_PHYSICAL", { gpa: 0x50000n + BigInt(i % 8), data: Uint8Array.of(i & 0xff) });
    }
    await hookSome(ledger, channel);
    await journal.close();
    expect(statSync(join(dir, "ledger", `${UUID}.journal`)).size).toBeLessThanOrEqual(8 * 1024 + 4096);
    const recovered = journals.recover(UUID)!;
    expect(recovered.records[0]?.t).toBe("s");
    expect(await undoCommands(HookLedger.fromJournal(recovered.records))).toEqual(await undoCommands(ledger));
  });

  it("is emptied by an undo", async () => {
    const journal = journals.open(UUID, 1n);
    const ledger = new HookLedger(journal);
    await hookSome(ledger, fakeChannel());
    await ledger.undo(fakeChannel() as never, 1000);
    await journal.close();
    expect(HookLedger.fromJournal(journals.recover(UUID)!.records).isEmpty).toBe(true);
  });

  it("refuses a state directory another live bridge holds", () => {
    writeFileSync(join(dir, "lock"), `${process.ppid}\n`);
    expect(() => new LedgerJournals({ stateDir: dir, compactBytes: 65536, logger: silentLogger })).toThrow(/is in use by process/);
  });

  it("prunes journals of VMs that left longer ago than the age, never a connected VM's, counting from when it left", async () => {
    const HOUR = 3_600_000;
    const gone = "0a3c8a2e-1b4d-4c6e-9a7f-0123456789ab";
    const recent = "1b3c8a2e-1b4d-4c6e-9a7f-0123456789ab";
    const connected = "2c3c8a2e-1b4d-4c6e-9a7f-0123456789ab";
    const now = Date.now();
    // A previous run's journals: one written ten days ago, one an hour ago.
    for (const [uuid, ageMs] of [[gone, 240 * HOUR], [recent, HOUR]] as const) {
      await journals.open(uuid, 1n).close();
      const then = new Date(now - ageMs);
      utimesSync(join(dir, "ledger", `${uuid}.journal`), then, then);
    }
    // A VM hooked for ten days without a change: its journal is old but in use.
    const open = journals.open(connected, 1n);
    const tenDaysAgo = new Date(now - 240 * HOUR);
    utimesSync(join(dir, "ledger", `${connected}.journal`), tenDaysAgo, tenDaysAgo);

    expect(journals.prune(168 * HOUR, now)).toEqual([gone]);
    expect(journals.list().sort()).toEqual([recent, connected].sort());
    // It leaves: its age counts from now, so it is kept for another week.
    await open.close();
    expect(journals.prune(168 * HOUR, Date.now())).toEqual([]);
    expect(journals.prune(168 * HOUR, Date.now() + 169 * HOUR).sort()).toEqual([recent, connected].sort());
    expect(journals.list()).toEqual([]);
  });

  it("a quick re-hook keeps the VM connected even when the previous journal finishes closing after it", async () => {
    const first = journals.open(UUID, 1n);
    const closing = first.close();
    const second = journals.open(UUID, 1n);
    await closing;
    expect(journals.prune(0, Date.now() + 1000)).toEqual([]);
    await second.close();
    expect(journals.prune(0, Date.now() + 1000)).toEqual([UUID]);
  });

  it("prunes at start when asked to (startPruning)", async () => {
    await journals.open(UUID, 1n).close();
    const old = new Date(Date.now() - 10_000);
    utimesSync(join(dir, "ledger", `${UUID}.journal`), old, old);
    journals.startPruning(5_000);
    expect(journals.list()).toEqual([]);
  });
});
