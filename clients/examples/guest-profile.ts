// SPDX-License-Identifier: Apache-2.0
/**
 * What the examples know about their target OS comes from a profile (docs/profiles.md): `--profile
 * FILE` names one (ISF JSON, e.g. built by test/guest/build.ts for Debian's kernel, or a Volatility
 * 3 symbol file); without it the examples use the profile of the emulator's built-in workload
 * (clients/profiles/kvmi-sim-workload.json). No offset or address is written here.
 */
import { fileURLToPath } from "node:url";
import { Profile, linux } from "@kvmi/clients";
import type { LinuxGuest, LinuxProcess, VmCommands } from "@kvmi/clients";

export type { LinuxProcess } from "@kvmi/clients";

/** The profile of the emulator's built-in workload. */
export const WORKLOAD_PROFILE = fileURLToPath(new URL("../profiles/kvmi-sim-workload.json", import.meta.url));

/** The `--profile` option every OS-aware example takes. */
export const PROFILE_OPTION = { profile: { type: "string" } } as const;

/** Loads `--profile`, `$KVMI_PROFILE` or the workload's profile, and binds it to a VM. */
export async function openGuest(vm: VmCommands, profilePath?: string): Promise<LinuxGuest> {
  return linux(vm, await Profile.load(profilePath ?? process.env["KVMI_PROFILE"] ?? WORKLOAD_PROFILE));
}

/** The bits of CR3 that hold the page-table root (PCID and flag bits cleared). */
export const PAGE_TABLE_ROOT_MASK = 0x000ffffffffff000n;

/** Looks processes up by page-table root (which identifies the running process on a CR3 write or a syscall). */
export class TaskIndex {
  private readonly byRoot = new Map<bigint, LinuxProcess>();

  constructor(readonly tasks: readonly LinuxProcess[]) {
    // Threads share their process's page tables: keep the group leader (pid === tgid).
    for (const task of tasks) if (task.pageTable !== undefined && (task.pid === task.tgid || !this.byRoot.has(task.pageTable))) this.byRoot.set(task.pageTable, task);
  }

  /** The process whose page tables are rooted at `cr3` (PCID and flag bits ignored). */
  byPageTable(cr3: bigint): LinuxProcess | undefined {
    return this.byRoot.get(cr3 & PAGE_TABLE_ROOT_MASK);
  }

  /** Every page-table root with the process it belongs to (one per address space). */
  roots(): IterableIterator<[bigint, LinuxProcess]> {
    return this.byRoot.entries();
  }

  /** `pid (comm)`, or `? (cr3 0x…)` for an unknown CR3. */
  describe(cr3: bigint): string {
    const task = this.byPageTable(cr3);
    return task === undefined ? `? (cr3 0x${cr3.toString(16)})` : `${task.pid} (${task.comm})`;
  }
}
