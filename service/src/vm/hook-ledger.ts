// SPDX-License-Identifier: Apache-2.0
/**
 * The hook ledger: every change a controller makes to a guest through the bridge, so that the
 * bridge can undo it when the controller vanishes, on unhook and on shutdown. Over a network the
 * tool can disappear at any moment; v9 itself keeps page restrictions and interceptions until
 * UNHOOK (kvmi-abi §2.8 step 4) and never restores guest memory, so without this a dead tool
 * would leave breakpoints in the guest.
 *
 * Memory writes are tracked per page with the original bytes, only for bytes not seen before; a
 * write that puts the original bytes back (a tool removing its own INT3) clears the entry, so the
 * ledger stays as small as the live modifications.
 *
 * With a journal (`--state-dir`), every change is written to disk before it is sent to the kernel
 * (ledger-journal.ts), and {@link HookLedger.fromJournal} rebuilds the ledger a killed bridge left.
 */
import { KvmiRemoteError } from "@kvmi/kvm-bridge";
import type { KvmiChannel } from "@kvmi/kvm-bridge";
import { eventKindOfApiId } from "../mapping/enums.js";
import type { V9CommandName, V9CommandReply as CommandReply, V9CommandRequest as CommandRequest } from "@kvmi/kvm-bridge/wire";
import { COMMAND_FACTS } from "../mapping/command-facts.js";
import { sendCommand } from "./dialect-translation.js";
import type { JournalRecord, LedgerJournalWriter } from "./ledger-journal.js";

const PAGE_BYTES = 4096;
const PAGE_MASK = BigInt(PAGE_BYTES - 1);
const ACCESS_RWX = 7;
/** SET_PAGE_ACCESS carries at most this many entries per message (the dialect table, kvmi-abi §4 id 23). */

/** Original bytes of one guest page the controller wrote to. */
interface PageOriginal {
  readonly original: Uint8Array;
  readonly touched: Uint8Array;
  touchedCount: number;
}

/** What an undo did, for logs and tests. */
export interface UndoReport {
  readonly commands: number;
  readonly failures: number;
  readonly restoredBytes: number;
}

type Channel = Pick<KvmiChannel, "command" | "dialect">;
type AnyRequest = Record<string, unknown>;

/** The whole ledger as plain data (a journal snapshot). */
export interface LedgerState {
  readonly vmEvents: Array<[number, boolean]>;
  readonly vcpuEvents: Array<[number, number[]]>;
  readonly crs: Array<[number, number[]]>;
  readonly msrs: Array<[number, number[]]>;
  readonly singlestep: number[];
  readonly pageAccess: Array<[bigint, number]>;
  /** Per page: runs of original bytes as [offset, bytes]. */
  readonly pages: Array<[bigint, Array<[number, Uint8Array]>]>;
}

/** The changes one controller made to one VM. */
export class HookLedger {
  /** VM events whose state differs from the bridge's baseline (UNHOOK enabled), and the baseline. */
  private readonly vmEvents = new Map<number, boolean>();
  private readonly vcpuEvents = new Map<number, Set<number>>();
  private readonly crs = new Map<number, Set<number>>();
  private readonly msrs = new Map<number, Set<number>>();
  private readonly singlestep = new Set<number>();
  private readonly pageAccess = new Map<bigint, number>();
  private readonly pages = new Map<bigint, PageOriginal>();
  /** GPAs whose bytes the last undo put back (a BREAKPOINT there is answered RETRY, not CONTINUE). */
  private restored = new Set<bigint>();

  /** @param journal where changes go before they are sent (none: the ledger lives in memory only). */
  constructor(private readonly journal?: LedgerJournalWriter & { snapshot?: () => unknown }) {
    if (journal !== undefined) journal.snapshot = () => this.exportState();
  }

  /**
   * Rebuilds the ledger a previous connection or bridge left, from its journal records: the last
   * snapshot, then every change after it unless the kernel refused it. A change whose outcome was
   * never written counts as applied: undoing a change that did not happen is harmless, missing
   * one that did would leave it in the guest.
   */
  static fromJournal(records: readonly JournalRecord[]): HookLedger {
    const ledger = new HookLedger();
    const refused = new Set<number>();
    for (const record of records) if (record.t === "f") refused.add(record.n);
    for (const record of records) {
      if (record.t === "s") ledger.importState(record.state as LedgerState);
      if (record.t !== "c" || refused.has(record.n)) continue;
      if (record.original !== undefined) ledger.keepOriginal(record.original.gpa, record.original.bytes);
      ledger.record(record.command as V9CommandName, record.request, record.vcpu);
    }
    return ledger;
  }

  /** The ledger as plain data, for a journal snapshot. */
  exportState(): LedgerState {
    const sets = (map: Map<number, Set<number>>): Array<[number, number[]]> =>
      [...map].filter(([, ids]) => ids.size > 0).map(([vcpu, ids]) => [vcpu, [...ids]]);
    return {
      vmEvents: [...this.vmEvents],
      vcpuEvents: sets(this.vcpuEvents),
      crs: sets(this.crs),
      msrs: sets(this.msrs),
      singlestep: [...this.singlestep],
      pageAccess: [...this.pageAccess],
      pages: [...this.pages].map(([gfn, page]) => [gfn, touchedRuns(page.touched).map(([start, end]) => [start, page.original.slice(start, end)])]),
    };
  }

  private importState(state: LedgerState): void {
    this.clear();
    for (const [id, baseline] of state.vmEvents) this.vmEvents.set(id, baseline);
    for (const [vcpu, ids] of state.vcpuEvents) this.vcpuEvents.set(vcpu, new Set(ids));
    for (const [vcpu, crs] of state.crs) this.crs.set(vcpu, new Set(crs));
    for (const [vcpu, msrs] of state.msrs) this.msrs.set(vcpu, new Set(msrs));
    for (const vcpu of state.singlestep) this.singlestep.add(vcpu);
    for (const [gfn, access] of state.pageAccess) this.pageAccess.set(gfn, access);
    for (const [gfn, runs] of state.pages) for (const [offset, bytes] of runs) this.keepOriginal(gfn + BigInt(offset), bytes);
  }

  /** True when nothing needs undoing. */
  get isEmpty(): boolean {
    return (
      this.vmEvents.size === 0 &&
      [this.vcpuEvents, this.crs, this.msrs].every((m) => [...m.values()].every((s) => s.size === 0)) &&
      this.singlestep.size === 0 &&
      this.pageAccess.size === 0 &&
      this.pages.size === 0
    );
  }

  /** Number of guest bytes currently differing from what the controller found. */
  get modifiedBytes(): number {
    let n = 0;
    for (const page of this.pages.values()) n += page.touchedCount;
    return n;
  }

  /** True if the last undo restored the byte at `gpa`. */
  wasRestored(gpa: bigint): boolean {
    return this.restored.has(gpa);
  }

  /**
   * Runs a controller command through the ledger: captures what a memory write will replace, sends
   * the command, and records the change once the kernel accepted it.
   */
  async run<N extends V9CommandName>(
    channel: Channel,
    name: N,
    request: CommandRequest<N>,
    vcpu: number | undefined,
    send: () => Promise<CommandReply<N>>,
  ): Promise<CommandReply<N>> {
    const body = request as AnyRequest;
    const original =
      name === "KVMI_VM_WRITE_PHYSICAL" ? await this.captureOriginal(channel, body["gpa"] as bigint, (body["data"] as Uint8Array).length) : undefined;
    // On disk before the kernel sees it: a bridge killed from here on leaves the change journaled.
    const n = await this.journal?.intent({ command: name, vcpu, request: body, original });
    let reply: CommandReply<N>;
    try {
      reply = await send();
    } catch (err) {
      // Only a refusal is known not to have changed the guest. After a timeout or a lost socket the
      // journal keeps the change as possibly applied (it stays in flight, so compaction keeps it).
      if (n !== undefined && err instanceof KvmiRemoteError) this.journal!.failed(n);
      throw err;
    }
    this.record(name, body, vcpu);
    if (n !== undefined) this.journal!.settled(n);
    return reply;
  }

  /** Reads and keeps the bytes a write will replace; returns them for the journal. */
  private async captureOriginal(channel: Channel, gpa: bigint, size: number): Promise<{ gpa: bigint; bytes: Uint8Array } | undefined> {
    const gfn = gpa & ~PAGE_MASK;
    const offset = Number(gpa & PAGE_MASK);
    const page = this.pages.get(gfn);
    if (page !== undefined && page.touched.subarray(offset, offset + size).every((t) => t === 1)) return undefined;
    // The write stays inside one page (the kernel refuses others), so one read covers it. If the
    // kernel refuses the read (a page guest memory does not back), it refuses the write for the
    // same reason: let the write fail with its own error rather than report the read's.
    let before: { data: Uint8Array };
    try {
      before = await sendCommand(channel, "KVMI_VM_READ_PHYSICAL", { gpa, size });
    } catch (err) {
      if (err instanceof KvmiRemoteError) return undefined;
      throw err;
    }
    this.keepOriginal(gpa, before.data);
    return { gpa, bytes: before.data };
  }

  /** Keeps `bytes` as the original of the bytes at `gpa` not kept before (one page at most). */
  private keepOriginal(gpa: bigint, bytes: Uint8Array): void {
    const gfn = gpa & ~PAGE_MASK;
    const offset = Number(gpa & PAGE_MASK);
    const entry = this.pages.get(gfn) ?? { original: new Uint8Array(PAGE_BYTES), touched: new Uint8Array(PAGE_BYTES), touchedCount: 0 };
    for (let i = 0; i < bytes.length && offset + i < PAGE_BYTES; i++) {
      if (entry.touched[offset + i] === 0) {
        entry.original[offset + i] = bytes[i]!;
        entry.touched[offset + i] = 1;
        entry.touchedCount++;
      }
    }
    if (entry.touchedCount > 0) this.pages.set(gfn, entry);
  }

  private record(name: V9CommandName, body: AnyRequest, vcpu: number | undefined): void {
    const enable = body["enable"] === 1;
    // One case per way of undoing (command-facts.ts), not per command.
    const undo = COMMAND_FACTS[name].undo;
    switch (undo) {
      case "memory":
        this.forgetRestoredBytes(body["gpa"] as bigint, body["data"] as Uint8Array);
        return;
      case "vm-event": {
        const id = body["event_id"] as number;
        // kvmi.v1 event ids (mapping/enums.ts): UNHOOK is the one the bridge keeps enabled.
        const baseline = eventKindOfApiId(id) === "UNHOOK";
        if (enable === baseline) this.vmEvents.delete(id);
        else this.vmEvents.set(id, baseline);
        return;
      }
      case "vcpu-event":
        return toggle(this.vcpuEvents, vcpu!, body["event_id"] as number, enable);
      case "cr":
        return toggle(this.crs, vcpu!, body["cr"] as number, enable);
      case "msr":
        return toggle(this.msrs, vcpu!, body["msr"] as number, enable);
      case "singlestep":
        if (enable) this.singlestep.add(vcpu!);
        else this.singlestep.delete(vcpu!);
        return;
      case "page-access":
        for (const entry of body["entries"] as Array<{ gpa: bigint; access: number }>) {
          const gfn = entry.gpa & ~PAGE_MASK;
          if (entry.access === ACCESS_RWX) this.pageAccess.delete(gfn);
          else this.pageAccess.set(gfn, entry.access);
        }
        return;
      case "none":
      case undefined:
        return;
      default: {
        const unhandled: never = undo;
        throw new Error(`no ledger bookkeeping for undo kind ${String(unhandled)}`);
      }
    }
  }

  /** A write that puts back original bytes removes them from the ledger. */
  private forgetRestoredBytes(gpa: bigint, data: Uint8Array): void {
    const gfn = gpa & ~PAGE_MASK;
    const page = this.pages.get(gfn);
    if (page === undefined) return;
    const offset = Number(gpa & PAGE_MASK);
    for (let i = 0; i < data.length; i++) {
      if (page.touched[offset + i] === 1 && page.original[offset + i] === data[i]) {
        page.touched[offset + i] = 0;
        page.touchedCount--;
      }
    }
    if (page.touchedCount === 0) this.pages.delete(gfn);
  }

  /**
   * Undoes everything, in the order that stops new events first: vCPU events and single-stepping,
   * CR and MSR interceptions, page restrictions, memory, then VM events. Each command is bounded
   * by `timeoutMs`; a failure is counted and the rest still runs. The ledger is empty afterwards.
   */
  async undo(channel: Channel, timeoutMs: number): Promise<UndoReport> {
    let commands = 0;
    let failures = 0;
    const restored = new Set<bigint>();
    const send = async <N extends V9CommandName>(name: N, request: CommandRequest<N>, vcpu?: number): Promise<void> => {
      commands++;
      try {
        await sendCommand(channel, name, request, vcpu, { timeoutMs });
      } catch {
        failures++;
      }
    };
    const jobs: Array<Promise<void>> = [];
    for (const [vcpu, ids] of this.vcpuEvents) for (const id of ids) jobs.push(send("KVMI_VCPU_CONTROL_EVENTS", { event_id: id, enable: 0 }, vcpu));
    for (const vcpu of this.singlestep) jobs.push(send("KVMI_VCPU_CONTROL_SINGLESTEP", { enable: 0 }, vcpu));
    await Promise.all(jobs.splice(0));
    for (const [vcpu, crs] of this.crs) for (const cr of crs) jobs.push(send("KVMI_VCPU_CONTROL_CR", { cr, enable: 0 }, vcpu));
    for (const [vcpu, msrs] of this.msrs) for (const msr of msrs) jobs.push(send("KVMI_VCPU_CONTROL_MSR", { msr, enable: 0 }, vcpu));
    const gfns = [...this.pageAccess.keys()];
    // As many pages per message as the VM's dialect allows.
    const perMessage = channel.dialect.limits.maxPageAccessEntries;
    for (let i = 0; i < gfns.length; i += perMessage) {
      const entries = gfns.slice(i, i + perMessage).map((gpa) => ({ gpa, access: ACCESS_RWX, visible: 0 }));
      jobs.push(send("KVMI_VM_SET_PAGE_ACCESS", { entries }));
    }
    let restoredBytes = 0;
    for (const [gfn, page] of this.pages) {
      for (const [start, end] of touchedRuns(page.touched)) {
        jobs.push(send("KVMI_VM_WRITE_PHYSICAL", { gpa: gfn + BigInt(start), data: page.original.slice(start, end) }));
        for (let i = start; i < end; i++) restored.add(gfn + BigInt(i));
        restoredBytes += end - start;
      }
    }
    for (const [id, baseline] of this.vmEvents) jobs.push(send("KVMI_VM_CONTROL_EVENTS", { event_id: id, enable: baseline ? 1 : 0 }));
    await Promise.all(jobs);
    this.clear();
    this.restored = restored;
    await this.journal?.reset(undefined);
    return { commands, failures, restoredBytes };
  }

  /** Forgets everything without undoing (policy `keep`, or a closed socket). */
  clear(): void {
    this.vmEvents.clear();
    this.vcpuEvents.clear();
    this.crs.clear();
    this.msrs.clear();
    this.singlestep.clear();
    this.pageAccess.clear();
    this.pages.clear();
  }
}

function toggle(map: Map<number, Set<number>>, vcpu: number, id: number, enable: boolean): void {
  let set = map.get(vcpu);
  if (set === undefined) map.set(vcpu, (set = new Set()));
  if (enable) set.add(id);
  else set.delete(id);
}

/** Contiguous runs of touched bytes: [start, end) pairs. */
function touchedRuns(touched: Uint8Array): Array<[number, number]> {
  const runs: Array<[number, number]> = [];
  let start = -1;
  for (let i = 0; i <= touched.length; i++) {
    const on = i < touched.length && touched[i] === 1;
    if (on && start < 0) start = i;
    if (!on && start >= 0) {
      runs.push([start, i]);
      start = -1;
    }
  }
  return runs;
}
