// SPDX-License-Identifier: Apache-2.0
/**
 * What both methods of the `trace` example share: the traced target, per-process counters and the
 * session loops (handle items until told to stop, then answer what is still on its way).
 */
import { CancelledError } from "@kvmi/clients";
import type { LinuxGuest, LinuxProcess, Session, SessionItem } from "@kvmi/clients";
import type { TaskIndex } from "./guest-profile.js";

/** What a method traces. */
export interface TraceTarget {
  readonly session: Session;
  readonly guest: LinuxGuest;
  readonly tasks: TaskIndex;
  readonly vcpus: readonly number[];
  /** The kernel function whose entries are counted, and where it is. */
  readonly symbol: string;
  readonly entryGva: bigint;
  readonly entryGpa: bigint;
  /** Ends the trace (Ctrl-C, --duration). */
  readonly signal: AbortSignal;
}

/** One process's syscall count. */
export interface ProcessCount {
  readonly pid: number;
  readonly comm: string;
  count: number;
}

/** What a method reports. */
export interface TraceOutcome {
  /** Syscalls per pid. */
  readonly counts: Map<number, ProcessCount>;
  /** Seconds from arming to disarming. */
  readonly seconds: number;
  /** Method-specific figures for the report (`inBridge`, `notified`, …). */
  readonly figures: Readonly<Record<string, number>>;
}

export function addCount(counts: Map<number, ProcessCount>, task: Pick<LinuxProcess, "pid" | "comm">, n = 1): void {
  if (n === 0) return;
  const entry = counts.get(task.pid) ?? { pid: task.pid, comm: task.comm, count: 0 };
  entry.count += n;
  counts.set(task.pid, entry);
}

/** Handles items until `signal` fires or the unhook notice comes. */
export async function loop(session: Session, signal: AbortSignal, handle: (item: SessionItem) => Promise<void>): Promise<void> {
  try {
    for await (const item of session.events({ signal })) {
      if (item.kind === "unhook") {
        process.stderr.write(`unhook notice (${item.reason}): cleaning up before ${item.deadline?.toISOString()}\n`);
        return;
      }
      await handle(item);
      if (signal.aborted) return;
    }
  } catch (err) {
    if (!(signal.aborted && err instanceof CancelledError)) throw err;
  }
}

/** A guest address as the tools print it. */
export const hex = (value: bigint): string => `0x${value.toString(16)}`;
