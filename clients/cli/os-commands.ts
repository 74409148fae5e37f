// SPDX-License-Identifier: Apache-2.0
/**
 * OS-aware kvmictl commands (docs/profiles.md): `ps`, `modules`, `sym` and `read --pid` read a
 * Linux guest through a profile. `--profile FILE` (or `KVMI_PROFILE`) names it; without one they use
 * the profile of the emulator's built-in workload, which is what `npm start` serves.
 */
import { fileURLToPath } from "node:url";
import { Profile, ProfileError, linux } from "@kvmi/clients";
import type { LinuxGuest } from "@kvmi/clients";
import { parseIndex, parseU64, UsageError } from "./args.js";
import type { CliContext } from "./context.js";
import { hex, table, toJson } from "./format.js";

/** The profile of the emulator's built-in workload (clients/profiles/). */
export const WORKLOAD_PROFILE = fileURLToPath(new URL("../profiles/kvmi-sim-workload.json", import.meta.url));

export interface ProfileOptions {
  readonly profile?: string;
}

export async function loadProfile(ctx: CliContext, options: ProfileOptions): Promise<Profile> {
  return Profile.load(options.profile ?? ctx.io.env["KVMI_PROFILE"] ?? WORKLOAD_PROFILE);
}

async function guestOf(ctx: CliContext, ref: string, options: ProfileOptions): Promise<LinuxGuest> {
  const [vm, profile] = await Promise.all([ctx.resolveVm(ref), loadProfile(ctx, options)]);
  return linux(ctx.client.vm(vm.uuid), profile);
}

/** `ps <vm>`: the guest's processes from its task list. */
export async function ps(ctx: CliContext, ref: string, options: ProfileOptions): Promise<void> {
  const guest = await guestOf(ctx, ref, options);
  const processes = await guest.processes({ signal: ctx.io.signal });
  if (ctx.json) {
    ctx.out(toJson(processes.map((p) => ({ pid: p.pid, ppid: p.ppid, comm: p.comm, kernelThread: p.kernelThread, task: p.task, pageTable: p.pageTable ?? null })), 2));
    return;
  }
  ctx.io.stdout(
    table([
      ["PID", "PPID", "PAGE TABLE", "COMMAND"],
      ...processes.map((p) => [String(p.pid), String(p.ppid), p.pageTable === undefined ? "-" : hex(p.pageTable), p.kernelThread ? `[${p.comm}]` : p.comm]),
    ]),
  );
}

/** `modules <vm>`: loaded kernel modules. */
export async function modules(ctx: CliContext, ref: string, options: ProfileOptions): Promise<void> {
  const guest = await guestOf(ctx, ref, options);
  const list = await guest.modules({ signal: ctx.io.signal });
  if (ctx.json) ctx.out(toJson(list, 2));
  else if (list.length === 0) ctx.err("no modules loaded (or the profile has no `modules` list)");
  else ctx.io.stdout(table([["NAME", "BASE", "SIZE"], ...list.map((m) => [m.name, m.base === undefined ? "-" : hex(m.base), m.size === undefined ? "-" : String(m.size)])]));
}

/** `sym <name|address>`: symbol → address, or address → symbol+offset. Needs no VM. */
export async function sym(ctx: CliContext, query: string, options: ProfileOptions): Promise<number> {
  const profile = await loadProfile(ctx, options);
  if (/^(0x)?[0-9a-f]+$/i.test(query) && (query.startsWith("0x") || query.length >= 8)) {
    const address = parseU64(query.startsWith("0x") ? query : `0x${query}`, "address");
    const hit = profile.symbolize(address);
    if (!hit) {
      ctx.err(`no symbol covers ${hex(address)}`);
      return 1;
    }
    if (ctx.json) ctx.out(toJson({ address, symbol: hit.name, offset: hit.offset }));
    else ctx.out(`${hex(address)} = ${hit.name}${hit.offset ? `+${hex(hit.offset)}` : ""}`);
    return 0;
  }
  const address = profile.symbol(query);
  if (address === undefined) {
    ctx.err(`no symbol "${query}" in the profile`);
    return 1;
  }
  if (ctx.json) ctx.out(toJson({ symbol: query, address }));
  else ctx.out(`${query} = ${hex(address)}`);
  return 0;
}

/** `read --pid N`: the process's virtual memory through its own page tables. */
export async function readProcess(ctx: CliContext, ref: string, pidText: string, address: bigint, length: number, options: ProfileOptions): Promise<Uint8Array> {
  const pid = parseIndex(pidText, "--pid");
  const guest = await guestOf(ctx, ref, options);
  try {
    return await guest.readProcessMemory(pid, address, length, { signal: ctx.io.signal });
  } catch (err) {
    if (err instanceof ProfileError) throw new UsageError(err.message);
    throw err;
  }
}
