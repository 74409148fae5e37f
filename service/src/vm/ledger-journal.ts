// SPDX-License-Identifier: Apache-2.0
/**
 * The hook ledger on disk: one append-only journal file per VM under `<stateDir>/ledger/`, each
 * change written and fsync'd BEFORE the command goes to the kernel, so that a bridge killed at any
 * moment leaves a file that says at least everything the guest may have been changed by. The next
 * bridge that sees the same VM boot (same UUID and `start_time` from the handshake) replays it into
 * a {@link HookLedger} and undoes it before anyone can attach (README, "A ledger that survives a
 * crash"; docs/decisions/0040).
 *
 * Format: one line per record, `<crc32 hex> <json>\n`. JSON because a person debugging a stuck
 * guest can read it; the checksum because a crash can leave a torn last line. Reading stops at
 * the first line whose checksum or JSON is bad (the torn tail of an append that never finished,
 * which therefore never reached the kernel) and truncates the file there.
 *
 * Records: `h` (header: VM and start time), `s` (a snapshot of the whole ledger, written by
 * compaction), `c` (a change about to be sent: command, vCPU, request, and for memory writes the
 * original bytes), `f` (that change failed: the kernel refused it; written without fsync, since
 * losing it only makes the undo do a little more than needed).
 */
import { closeSync, fsyncSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync, statSync, truncateSync, utimesSync, writeFileSync, writeSync } from "node:fs";
import { open } from "node:fs/promises";
import type { FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { crc32 } from "node:zlib";
import type { Logger } from "@kvmi/kvm-bridge";

/** A change as the journal keeps it (the {@link HookLedger}'s view of a command). */
export interface JournalChange {
  readonly command: string;
  readonly vcpu: number | undefined;
  readonly request: Record<string, unknown>;
  /** For memory writes: the bytes the write replaces, for the bytes not captured before. */
  readonly original?: { readonly gpa: bigint; readonly bytes: Uint8Array } | undefined;
}

/** One record of a journal file. */
export type JournalRecord =
  | { readonly t: "h"; readonly vm: string; readonly startTime: bigint }
  | { readonly t: "s"; readonly state: unknown }
  | ({ readonly t: "c"; readonly n: number } & JournalChange)
  | { readonly t: "f"; readonly n: number };

/** What a journal file held when a bridge found it. */
export interface RecoveredJournal {
  readonly vm: string;
  readonly startTime: bigint;
  /** The records after the header, in order (a snapshot first when compacted). */
  readonly records: readonly JournalRecord[];
  /** Bytes dropped from a torn or corrupt tail. */
  readonly droppedBytes: number;
}

/** Where a ledger writes its changes; implemented by {@link LedgerJournal}. */
export interface LedgerJournalWriter {
  /** Records a change about to be sent; resolves once it is on disk. Returns its record number. */
  intent(change: JournalChange): Promise<number>;
  /** The ledger recorded change `n`: compaction snapshots hold it from now on. */
  settled(n: number): void;
  /** Marks change `n` as refused by the kernel. */
  failed(n: number): void;
  /** Replaces the journal with `state` (after an undo: the empty state). */
  reset(state: unknown): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// Encoding: bigint and bytes survive JSON as tagged objects.

function replacer(_key: string, value: unknown): unknown {
  if (typeof value === "bigint") return { $b: value.toString() };
  if (value instanceof Uint8Array) return { $u8: Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString("base64") };
  return value;
}

function reviver(_key: string, value: unknown): unknown {
  if (value !== null && typeof value === "object" && !Array.isArray(value)) {
    const tagged = value as { $b?: unknown; $u8?: unknown };
    if (typeof tagged.$b === "string") return BigInt(tagged.$b);
    if (typeof tagged.$u8 === "string") return new Uint8Array(Buffer.from(tagged.$u8, "base64"));
  }
  return value;
}

/** One journal line: checksum of the JSON, space, JSON, newline. */
export function encodeRecord(record: JournalRecord): Buffer {
  const json = JSON.stringify(record, replacer);
  const crc = crc32(json).toString(16).padStart(8, "0");
  return Buffer.from(`${crc} ${json}\n`, "utf8");
}

/**
 * Parses a journal file's bytes: every whole, valid line up to the first bad one.
 * @returns the records and the byte length of the valid prefix.
 */
export function decodeRecords(bytes: Buffer): { records: JournalRecord[]; validBytes: number } {
  const records: JournalRecord[] = [];
  let at = 0;
  while (at < bytes.length) {
    const end = bytes.indexOf(0x0a, at);
    if (end < 0) break;
    const line = bytes.subarray(at, end).toString("utf8");
    const space = line.indexOf(" ");
    if (space !== 8) break;
    const json = line.slice(9);
    if (crc32(json).toString(16).padStart(8, "0") !== line.slice(0, 8)) break;
    let record: JournalRecord;
    try {
      record = JSON.parse(json, reviver) as JournalRecord;
    } catch {
      break;
    }
    if (typeof record !== "object" || record === null || !["h", "s", "c", "f"].includes(record.t)) break;
    records.push(record);
    at = end + 1;
  }
  return { records, validBytes: at };
}

function fsyncDirectory(dir: string): void {
  const fd = openSync(dir, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

// ---------------------------------------------------------------------------------------------

/** Options of {@link LedgerJournals}. */
export interface LedgerJournalsOptions {
  /** The bridge's state directory (`--state-dir`); journals live in its `ledger/` subdirectory. */
  readonly stateDir: string;
  /** A journal is compacted (rewritten as one snapshot) once it grows past this many bytes. */
  readonly compactBytes: number;
  readonly logger: Logger;
}

/**
 * The journals of one bridge: finds a previous incarnation's journal of a VM, and opens the
 * journal of a newly hooked one. Holds `<stateDir>/lock` so that two bridges never share journals.
 */
export class LedgerJournals {
  private readonly dir: string;
  private readonly lockPath: string;
  /** VMs whose journal this bridge has open (connected), with that journal: never pruned. */
  private readonly connected = new Map<string, LedgerJournal>();
  private pruning: NodeJS.Timeout | undefined;

  constructor(private readonly options: LedgerJournalsOptions) {
    this.dir = join(options.stateDir, "ledger");
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    this.lockPath = join(options.stateDir, "lock");
    this.lock();
  }

  private lock(): void {
    try {
      const holder = Number(readFileSync(this.lockPath, "utf8").trim());
      if (Number.isInteger(holder) && holder > 0 && holder !== process.pid && processAlive(holder)) {
        throw new Error(`state directory ${this.options.stateDir} is in use by process ${holder} (another bridge?); give each bridge its own --state-dir`);
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    }
    writeFileSync(this.lockPath, `${process.pid}\n`, { mode: 0o600 });
  }

  /** Releases the state directory (on a clean stop). */
  close(): void {
    clearInterval(this.pruning);
    rmSync(this.lockPath, { force: true });
  }

  private pathOf(uuid: string): string {
    if (!/^[0-9a-f-]{36}$/i.test(uuid)) throw new Error(`not a VM UUID: ${uuid}`);
    return join(this.dir, `${uuid}.journal`);
  }

  /**
   * Deletes the journals of VMs that are not connected to this bridge and whose journal was last
   * written (or, for a VM that left while this bridge ran, left) more than `maxAgeMs` ago. A VM
   * that never came back has no memory to restore: its hooks died with it. One that does come back
   * (the same boot) after its journal was pruned keeps what the previous controller left in place,
   * so `maxAgeMs` must be longer than any time a VM may stay away and come back.
   * @returns the UUIDs pruned.
   */
  prune(maxAgeMs: number, nowMs = Date.now()): string[] {
    const pruned: string[] = [];
    for (const uuid of this.list()) {
      if (this.connected.has(uuid)) continue;
      let mtimeMs: number;
      try {
        mtimeMs = statSync(this.pathOf(uuid)).mtimeMs;
      } catch {
        continue; // gone meanwhile
      }
      if (nowMs - mtimeMs <= maxAgeMs) continue;
      this.discard(uuid);
      pruned.push(uuid);
      this.options.logger.warn(
        { vm: uuid, ageHours: Math.round((nowMs - mtimeMs) / 3_600_000) },
        "deleted the ledger journal of a VM that never came back; if it returns with the same boot, what its controller left in guest memory stays",
      );
    }
    return pruned;
  }

  /**
   * Prunes journals older than `maxAgeMs` now and then every `everyMs` (default: a quarter of the
   * age, at most an hour), until {@link close}. The timer never keeps the process alive.
   */
  startPruning(maxAgeMs: number, everyMs = Math.min(3_600_000, Math.max(1_000, maxAgeMs / 4))): void {
    const prune = (): void => {
      try {
        this.prune(maxAgeMs);
      } catch (err) {
        this.options.logger.warn({ err: (err as Error).message }, "could not prune old ledger journals");
      }
    };
    prune();
    clearInterval(this.pruning);
    this.pruning = setInterval(prune, everyMs);
    this.pruning.unref();
  }

  /** UUIDs with a journal on disk (VMs whose previous connection may have left changes). */
  list(): string[] {
    return readdirSync(this.dir)
      .filter((name) => name.endsWith(".journal"))
      .map((name) => name.slice(0, -".journal".length));
  }

  /**
   * Reads the journal a previous connection (or bridge) left for a VM, dropping a torn tail.
   * Undefined when there is none or it holds no valid header.
   */
  recover(uuid: string): RecoveredJournal | undefined {
    const path = this.pathOf(uuid);
    let bytes: Buffer;
    try {
      bytes = readFileSync(path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw err;
    }
    const { records, validBytes } = decodeRecords(bytes);
    const droppedBytes = bytes.length - validBytes;
    if (droppedBytes > 0) {
      this.options.logger.warn({ vm: uuid, droppedBytes, keptRecords: records.length }, "the ledger journal ends in a torn or corrupt record; ignoring the tail");
      truncateSync(path, validBytes);
    }
    const header = records[0];
    if (header?.t !== "h" || header.vm !== uuid) {
      this.options.logger.warn({ vm: uuid }, "the ledger journal has no valid header; discarding it");
      return undefined;
    }
    return { vm: uuid, startTime: header.startTime, records: records.slice(1), droppedBytes };
  }

  /** Deletes a VM's journal (its changes were undone, or the VM rebooted). */
  discard(uuid: string): void {
    rmSync(this.pathOf(uuid), { force: true });
  }

  /**
   * Starts a fresh journal for a hooked VM (replacing any old one, which the caller recovered
   * first). Written and fsync'd with the directory before the VM can receive a command.
   */
  open(uuid: string, startTime: bigint): LedgerJournal {
    const path = this.pathOf(uuid);
    writeDurably(path, [encodeRecord({ t: "h", vm: uuid, startTime })]);
    fsyncDirectory(this.dir);
    const journal: LedgerJournal = new LedgerJournal(path, uuid, startTime, this.options.compactBytes, () => fsyncDirectory(this.dir), () => this.left(uuid, journal));
    this.connected.set(uuid, journal);
    return journal;
  }

  /**
   * The VM's connection ended (its journal closed): from now on its journal's age counts, so the
   * file's time is set to now (its last write may be weeks old for a VM hooked that long).
   */
  private left(uuid: string, journal: LedgerJournal): void {
    // A quick re-hook may have opened the VM's next journal before this one finished closing.
    if (this.connected.get(uuid) !== journal) return;
    this.connected.delete(uuid);
    try {
      const now = new Date();
      utimesSync(this.pathOf(uuid), now, now);
    } catch {
      // Discarded already (nothing was left to undo).
    }
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Writes `lines` to a temporary file, fsyncs it and renames it over `path`. */
function writeDurably(path: string, lines: readonly Buffer[]): void {
  const temporary = `${path}.tmp`;
  const fd = openSync(temporary, "w", 0o600);
  try {
    for (const line of lines) writeSync(fd, line);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(temporary, path);
}

/**
 * One VM's journal. Appends are serialized: each `intent` resolves after its line and every line
 * before it are on disk. When the file passes the compaction threshold, the next append first
 * rewrites it as header + snapshot + the changes still in flight.
 */
export class LedgerJournal implements LedgerJournalWriter {
  private handle: Promise<FileHandle>;
  private tail: Promise<unknown> = Promise.resolve();
  private bytes: number;
  /** Size past which the next append compacts: at least twice the last compacted size. */
  private threshold: number;
  private next = 1;
  /** Changes sent or being sent whose outcome the ledger has not recorded yet. */
  private readonly inFlight = new Map<number, JournalChange>();
  /** Returns the current ledger state, for compaction snapshots. */
  snapshot: () => unknown = () => undefined;

  constructor(
    private readonly path: string,
    private readonly uuid: string,
    private readonly startTime: bigint,
    private readonly compactBytes: number,
    private readonly syncDirectory: () => void,
    /** Called once the journal is closed (the VM's connection ended). */
    private readonly onClosed: () => void = () => undefined,
  ) {
    this.bytes = statSync(path).size;
    this.threshold = compactBytes;
    this.handle = open(path, "a");
  }

  /** True while a change was journaled whose outcome the ledger has not recorded. */
  get hasUnsettled(): boolean {
    return this.inFlight.size > 0;
  }

  /** Current size of the file, in bytes (for tests and metrics). */
  get sizeBytes(): number {
    return this.bytes;
  }

  intent(change: JournalChange): Promise<number> {
    const n = this.next++;
    this.inFlight.set(n, change);
    const line = encodeRecord({ t: "c", n, ...change });
    const done = this.tail.then(async () => {
      if (this.bytes + line.length > this.threshold) await this.compact();
      const handle = await this.handle;
      await handle.write(line);
      await handle.datasync();
      this.bytes += line.length;
      return n;
    });
    this.tail = done.catch(() => undefined);
    return done;
  }

  settled(n: number): void {
    this.inFlight.delete(n);
  }

  failed(n: number): void {
    this.inFlight.delete(n);
    const line = encodeRecord({ t: "f", n });
    this.tail = this.tail.then(async () => {
      const handle = await this.handle;
      await handle.write(line);
      this.bytes += line.length;
    }).catch(() => undefined);
  }

  reset(state: unknown): Promise<void> {
    this.inFlight.clear();
    const done = this.tail.then(() => this.rewrite(state));
    this.tail = done.catch(() => undefined);
    return done;
  }

  private async compact(): Promise<void> {
    await this.rewrite(this.snapshot());
  }

  /** Rewrites the file as header + snapshot + in-flight changes (renamed into place atomically). */
  private async rewrite(state: unknown): Promise<void> {
    const lines = [encodeRecord({ t: "h", vm: this.uuid, startTime: this.startTime })];
    if (state !== undefined) lines.push(encodeRecord({ t: "s", state }));
    for (const [n, change] of this.inFlight) lines.push(encodeRecord({ t: "c", n, ...change }));
    await (await this.handle).close();
    writeDurably(this.path, lines);
    this.syncDirectory();
    this.bytes = lines.reduce((sum, line) => sum + line.length, 0);
    // A ledger whose live state alone is large would otherwise compact on every append.
    this.threshold = Math.max(this.compactBytes, 2 * this.bytes);
    this.handle = open(this.path, "a");
  }

  /** Closes the file (the journal stays on disk). */
  async close(): Promise<void> {
    try {
      await this.tail;
      await (await this.handle).close();
    } finally {
      this.onClosed();
    }
  }
}
