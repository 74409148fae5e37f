// SPDX-License-Identifier: Apache-2.0
/**
 * The kvmictl commands: each one is a few SDK calls and a formatter. Mutating commands attach as
 * the VM's controller for as long as they need and release with `keep_changes`, so a write stays
 * written; with `--hold` they keep the session until Ctrl-C and then let the bridge undo the change.
 */
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { MemoryHoleError, parseEventFilter, UnavailableError, uuidOf } from "@kvmi/clients";
import type { EventFilter } from "@kvmi/proto";
import type { EventNotice, Session, SessionItem, TranslationTarget, VcpuEvent, VcpuEventName } from "@kvmi/clients";
import { accessString, parseAccess, parseEventTypes, parseHexBytes, parseIndex, parseLength, parseNumberList, parseU64, UsageError } from "./args.js";
import type { CliContext } from "./context.js";
import { readProcess } from "./os-commands.js";
import { untilAborted, waitOrAbort } from "./context.js";
import { changeName, formatBytes, formatRegisters, hex, hexdump, modeName, stateName, table, toJson, vmDetails, vmJson, vmTable } from "./format.js";

/** `vms list`. */
export async function vmsList(ctx: CliContext): Promise<void> {
  const vms = await ctx.client.listVms({ signal: ctx.io.signal });
  if (ctx.json) ctx.out(toJson(vms.map(vmJson), 2));
  else ctx.io.stdout(vmTable(vms));
}

/** `vms get <vm>`. */
export async function vmsGet(ctx: CliContext, ref: string): Promise<void> {
  const vm = await ctx.resolveVm(ref);
  if (ctx.json) ctx.out(toJson(vmJson(vm), 2));
  else ctx.io.stdout(vmDetails(vm));
}

/** `vms watch [vm]`: one line per registry change (JSON lines with --json) until Ctrl-C or --count. */
export async function vmsWatch(ctx: CliContext, ref: string | undefined, options: { count?: string }): Promise<void> {
  const max = options.count === undefined ? Infinity : parseIndex(options.count, "--count");
  // A UUID need not exist yet (watch for it to connect); a display name must.
  const vm = ref === undefined ? undefined : (uuidOf(ref) ?? (await ctx.resolveVm(ref)).uuid);
  let seen = 0;
  const stop = new AbortController();
  const onAbort = (): void => stop.abort();
  ctx.io.signal.addEventListener("abort", onAbort, { once: true });
  try {
    await untilAborted(stop.signal, async () => {
      for await (const change of ctx.client.watchVms({ ...(vm !== undefined && { vm }), signal: stop.signal })) {
        const when = change.changeTime ? timestampDate(change.changeTime).toISOString() : new Date().toISOString();
        const v = change.vm!;
        if (ctx.json) ctx.out(toJson({ time: when, type: changeName(change.type), vm: vmJson(v) }));
        else ctx.out(`${when}  ${changeName(change.type).padEnd(14)}  ${v.uuid}  ${(v.displayName || "-").padEnd(12)}  ${stateName(v.state)}  gen ${v.generation}`);
        if (++seen >= max) stop.abort();
      }
    });
  } finally {
    ctx.io.signal.removeEventListener("abort", onAbort);
  }
}

/** `info <vm>`: registry data, KVMI version, memory size and a line per vCPU. */
export async function info(ctx: CliContext, ref: string): Promise<void> {
  const vm = await ctx.resolveVm(ref);
  const h = ctx.client.vm(vm.uuid);
  const signal = ctx.io.signal;
  const [version, vmInfo, maxGfn] = await Promise.all([h.getVersion({ signal }), h.getVmInfo({ signal }), h.getMaxGfn({ signal })]);
  const vcpus = await Promise.all(
    Array.from({ length: vmInfo.vcpuCount }, async (_, i) => {
      try {
        const [regs, vcpuInfo] = await Promise.all([h.getRegisters(i, { signal }), h.getVcpuInfo(i, { signal })]);
        return { vcpu: i, started: true, mode: modeName(regs.mode), rip: regs.regs.rip, cr3: regs.sregs.cr3, tscHz: Number(vcpuInfo.tscSpeed) };
      } catch (err) {
        // KVM_EAGAIN: the guest has not started this vCPU yet.
        if (err instanceof UnavailableError && err.reason === "KVMI_TRY_AGAIN") return { vcpu: i, started: false };
        throw err;
      }
    }),
  );
  if (ctx.json) {
    ctx.out(toJson({ vm: vmJson(vm), kvmi: version, vcpuCount: vmInfo.vcpuCount, maxGfn, memoryBytes: Number(maxGfn * 4096n), vcpus }, 2));
    return;
  }
  const rows: string[][] = [
    ["VM", `${vm.name} (${vm.displayName || "no name"})`],
    ["state", `${stateName(vm.state)}, generation ${vm.generation}`],
    ["kvmi", `dialect ${vm.dialect || "?"}, version ${version.version}, singlestep ${version.singlestep ? "yes" : "no"}, max message ${version.maxMsgSize} B`],
    ["memory", `${formatBytes(maxGfn * 4096n)} (max gfn ${hex(maxGfn)})`],
    ["sessions", `controller ${vm.controllerAttached ? "attached" : "none"}, ${vm.observerCount} observer(s)`],
  ];
  ctx.io.stdout(table(rows));
  ctx.out("");
  const vcpuRows = [["VCPU", "MODE", "RIP", "CR3", "TSC"]];
  for (const v of vcpus) {
    if (!v.started) vcpuRows.push([String(v.vcpu), "not started", "-", "-", "-"]);
    else vcpuRows.push([String(v.vcpu), v.mode!, hex(v.rip!, 16), hex(v.cr3!, 16), `${(Number(v.tscHz) / 1e9).toFixed(3)} GHz`]);
  }
  ctx.io.stdout(table(vcpuRows));
}

/** `regs <vm> <vcpu>`. */
export async function regs(ctx: CliContext, ref: string, vcpuText: string, options: { msr?: string }): Promise<void> {
  const vcpu = parseIndex(vcpuText, "vcpu");
  const msrs = options.msr === undefined ? [] : parseNumberList(options.msr, "--msr");
  const vm = await ctx.resolveVm(ref);
  const r = await ctx.client.vm(vm.uuid).getRegisters(vcpu, { msrs, signal: ctx.io.signal });
  if (ctx.json) ctx.out(toJson({ vm: vm.name, vcpu, mode: modeName(r.mode), regs: r.regs, sregs: r.sregs, msrs: r.msrs }, 2));
  else ctx.io.stdout(formatRegisters(vm.name, vcpu, r));
}

/** The translation a `--virtual`/`--vcpu`/`--cr3` option set asks for; `undefined` for physical. */
function translationOf(options: { virtual?: boolean; vcpu?: string; cr3?: string }): TranslationTarget | undefined {
  if (options.cr3 !== undefined) {
    if (options.vcpu !== undefined) throw new UsageError("--vcpu and --cr3 are alternatives: translate with one of them");
    return { cr3: parseU64(options.cr3, "--cr3") };
  }
  if (options.vcpu !== undefined) return parseIndex(options.vcpu, "--vcpu");
  return options.virtual ? 0 : undefined;
}

/** `read <vm> <addr> <len>`: a hex dump of guest memory. */
export async function read(ctx: CliContext, ref: string, addrText: string, lenText: string, options: { virtual?: boolean; vcpu?: string; cr3?: string; pid?: string; profile?: string }): Promise<number> {
  const address = parseU64(addrText, "addr");
  const length = parseLength(lenText, "len");
  if (length > 64 * 1024 * 1024) throw new UsageError("len: read at most 64 MiB at once; use `kvmictl dump` for more");
  if (options.pid !== undefined) {
    const data = await readProcess(ctx, ref, options.pid, address, length, options);
    if (ctx.json) ctx.out(toJson({ vm: ref, pid: Number(options.pid), address, length, space: `virtual (pid ${options.pid})`, data }, 2));
    else ctx.io.stdout(hexdump(data, address));
    return 0;
  }
  const via = translationOf(options);
  const vm = await ctx.resolveVm(ref);
  const h = ctx.client.vm(vm.uuid);
  const signal = ctx.io.signal;
  let data: Uint8Array;
  let holes: MemoryHoleError["holes"] = [];
  try {
    data = via === undefined ? await h.readPhysical(address, length, { signal }) : await h.readVirtual(via, address, length, { signal });
  } catch (err) {
    if (!(err instanceof MemoryHoleError)) throw err;
    data = err.data;
    holes = err.holes;
  }
  const space = via === undefined ? "physical" : typeof via === "number" ? `virtual (vcpu ${via})` : `virtual (cr3 ${hex(via.cr3)})`;
  if (ctx.json) {
    ctx.out(toJson({ vm: vm.name, address, length, space, data, holes: holes.map((h) => ({ address: h.address, length: Number(h.length), reason: h.reason })) }, 2));
  } else {
    ctx.io.stdout(hexdump(data, address));
    for (const h of holes) ctx.err(`hole: ${hex(h.address)}+${hex(h.length)} ${h.reason} (shown as zeros)`);
  }
  return holes.length > 0 ? 1 : 0;
}

/**
 * Attaches as controller and runs `body`. Without `hold` it releases keeping the change; with `hold`
 * it waits for Ctrl-C and releases without keeping, so the bridge undoes the change.
 */
async function asController(ctx: CliContext, uuid: string, hold: boolean, body: (session: Session) => Promise<void>, eventDeadlineMs?: number): Promise<void> {
  const session = await ctx.client.attach(uuid, { role: "controller", ...(eventDeadlineMs !== undefined && { eventDeadlineMs }) });
  try {
    await body(session);
    if (hold) {
      ctx.err("holding the controller session; press Ctrl-C to release it (the bridge then undoes the change)");
      await waitOrAbort(undefined, ctx.io.signal);
    }
  } finally {
    await session.release({ keepChanges: !hold });
  }
}

/** `write <vm> <addr> <hex> --yes [--virtual | --vcpu n | --cr3 x]`. */
export async function write(
  ctx: CliContext,
  ref: string,
  addrText: string,
  hexText: string,
  options: { yes?: boolean; hold?: boolean; virtual?: boolean; vcpu?: string; cr3?: string },
): Promise<void> {
  const address = parseU64(addrText, "addr");
  const data = parseHexBytes(hexText, "hex");
  const via = translationOf(options);
  if (!options.yes) throw new UsageError(`refusing to write ${data.length} byte(s) of guest memory without --yes`);
  const vm = await ctx.resolveVm(ref);
  await asController(ctx, vm.uuid, options.hold === true, async (session) => {
    // A virtual write translates every page first and writes only if all are mapped (the SDK's writeVirtual).
    const readBack = (): Promise<Uint8Array> => (via === undefined ? session.readPhysical(address, data.length) : session.readVirtual(via, address, data.length));
    const before = await readBack();
    if (via === undefined) await session.writePhysical(address, data);
    else await session.writeVirtual(via, address, data);
    const ok = Buffer.from(await readBack()).equals(Buffer.from(data));
    const where = via === undefined ? { gpa: address } : { gva: address };
    if (ctx.json) ctx.out(toJson({ vm: vm.name, ...where, written: data.length, verified: ok, previous: before }));
    else ctx.out(`wrote ${data.length} byte(s) at ${hex(address)}${via === undefined ? "" : " (virtual)"} of ${vm.name}${ok ? " (verified)" : " (read-back differs!)"}; previous bytes ${Buffer.from(before).toString("hex")}`);
  });
}

/** `vms release <vm> [--grace ms]`: the bridge unhooks the VM (ReleaseVm); QEMU reconnects later. */
export async function vmsRelease(ctx: CliContext, ref: string, options: { grace?: string }): Promise<void> {
  const graceMs = options.grace === undefined ? undefined : parseIndex(options.grace, "--grace");
  if (graceMs !== undefined && graceMs > 300_000) throw new UsageError("--grace: at most 300000 ms");
  const vm = await ctx.resolveVm(ref);
  const released = await ctx.client.releaseVm(vm.uuid, { ...(graceMs !== undefined && { gracePeriodMs: graceMs }), signal: ctx.io.signal });
  if (ctx.json) ctx.out(toJson(vmJson(released), 2));
  else ctx.out(`released ${released.name} (${released.displayName || "no name"}): ${stateName(released.state)}; QEMU reconnects after its chardev reconnect interval`);
}

/** `translate <vm> <vcpu> <gva>`; exits 1 when the address is not mapped, as `read` does for a hole. */
export async function translate(ctx: CliContext, ref: string, vcpuText: string, gvaText: string): Promise<number> {
  const vcpu = parseIndex(vcpuText, "vcpu");
  const gva = parseU64(gvaText, "gva");
  const vm = await ctx.resolveVm(ref);
  const gpa = await ctx.client.vm(vm.uuid).translateGva(vcpu, gva, { signal: ctx.io.signal });
  if (ctx.json) ctx.out(toJson({ vm: vm.name, vcpu, gva, mapped: gpa !== undefined, ...(gpa !== undefined && { gpa }) }));
  else ctx.out(gpa === undefined ? `${hex(gva, 16)} -> not mapped` : `${hex(gva, 16)} -> ${hex(gpa, 16)}`);
  return gpa === undefined ? 1 : 0;
}

/** EventAction values (event.proto, kernel + 1) as JSON words. */
const ANSWERS: Readonly<Record<number, string>> = { 1: "continue", 2: "retry", 3: "crash" };

/** The JSON line of a session item. */
export function itemJson(item: SessionItem): Record<string, unknown> {
  const time = new Date().toISOString();
  switch (item.kind) {
    case "event": {
      const { message: _m, arch, kind, vm, vcpu, seq, type, replyDeadline: _d, receiveTime, answered: _a, notification, ...payload } = item as VcpuEvent & Record<string, unknown>;
      const fields = Object.fromEntries(Object.entries(payload).filter(([, v]) => typeof v !== "function"));
      return {
        time: receiveTime?.toISOString() ?? time,
        kind,
        vm,
        vcpu,
        seq,
        type,
        ...fields,
        rip: arch.regs.rip,
        cr3: arch.sregs.cr3,
        // A rule already answered it: which rule, with what (docs/event-filters.md).
        ...(notification !== undefined && { rule: notification.rule, answeredWith: ANSWERS[(notification as EventNotice).action] ?? "unknown" }),
      };
    }
    case "unhook":
      return { time, kind: "unhook", vm: item.vm, reason: item.reason, deadline: item.deadline?.toISOString() };
    case "vmChange":
      return { time, kind: "vmChange", type: changeName(item.change.type), vm: item.change.vm && vmJson(item.change.vm) };
    case "replyRejected":
      return { time, kind: "replyRejected", vcpu: item.vcpu, seq: item.seq, code: item.error.codeName, reason: item.error.reason, message: item.error.message };
    case "filterSummary":
      return {
        time: item.time?.toISOString() ?? time,
        kind: "filterSummary",
        // Counts, not addresses: plain JSON numbers (exact up to 2^53 events), not the hex of other u64s.
        rules: item.rules.map((r) => ({ name: r.name, matched: Number(r.matched), replied: Number(r.replied), notified: Number(r.notified), delivered: Number(r.delivered) })),
        unmatched: Number(item.unmatched),
        notificationsDropped: Number(item.notificationsDropped),
      };
  }
}

/** Enables what a controller needs for `types` on `vcpu`. */
async function enableEvents(session: Session, vcpu: number, types: readonly VcpuEventName[], crs: readonly number[], msrs: readonly number[], enable: boolean): Promise<void> {
  for (const type of types) {
    if (type === "cr") for (const cr of crs) await session.controlCr(vcpu, cr as 0 | 3 | 4, enable);
    if (type === "msr") for (const msr of msrs) await session.controlMsr(vcpu, msr, enable);
    // PAUSE_VCPU, TRAP and SINGLESTEP need no enabling (kvmi-abi §4 id 10).
    if (type === "pauseVcpu" || type === "trap") continue;
    if (type === "singleStep") await session.controlSingleStep(vcpu, enable);
    else await session.controlVcpuEvents(vcpu, type, enable);
  }
}

/** `events watch <vm>`: JSON lines of events (observer by default) and the unhook notice. */
export async function eventsWatch(
  ctx: CliContext,
  ref: string,
  options: { type?: string; vcpu?: string; controller?: boolean; cr?: string; msr?: string; filter?: string; summaryInterval?: string; count?: string; duration?: string },
): Promise<void> {
  const types = options.type === undefined ? undefined : parseEventTypes(options.type);
  const vcpuFilter = options.vcpu === undefined ? undefined : parseIndex(options.vcpu, "--vcpu");
  const crs = options.cr === undefined ? [3] : parseNumberList(options.cr, "--cr");
  const msrs = options.msr === undefined ? [] : parseNumberList(options.msr, "--msr");
  const max = options.count === undefined ? Infinity : parseIndex(options.count, "--count");
  const durationMs = options.duration === undefined ? undefined : parseIndex(options.duration, "--duration");
  if (options.controller && types === undefined) throw new UsageError("--controller needs --type: which events should kvmictl enable?");
  if (types?.includes("msr") && msrs.length === 0 && options.controller) throw new UsageError("--type msr needs --msr <index,...> to select the MSRs");
  for (const cr of crs) if (![0, 3, 4].includes(cr)) throw new UsageError(`--cr: ${cr} is not 0, 3 or 4`);
  const eventFilter = filterOption(options);
  const vm = await ctx.resolveVm(ref);
  const session = await ctx.client.attach(vm.uuid, { role: options.controller ? "controller" : "observer", ...(eventFilter !== undefined && { eventFilter }) });
  const stop = new AbortController();
  const onAbort = (): void => stop.abort();
  ctx.io.signal.addEventListener("abort", onAbort, { once: true });
  const timer = durationMs === undefined ? undefined : setTimeout(onAbort, durationMs);
  const vcpus = vcpuFilter !== undefined ? [vcpuFilter] : Array.from({ length: session.vm.vcpuCount }, (_, i) => i);
  let shown = 0;
  try {
    if (options.controller) for (const v of vcpus) await enableEvents(session, v, types!, crs, msrs, true);
    ctx.err(`watching ${vm.name} as ${session.role}${types ? ` (${types.join(", ")})` : ""}; Ctrl-C to stop`);
    await untilAborted(stop.signal, async () => {
      for await (const item of session.events({ signal: stop.signal })) {
        if (item.kind === "event") {
          const wanted = (types === undefined || types.includes(item.type)) && (vcpuFilter === undefined || item.vcpu === vcpuFilter);
          // A controller answers everything; CONTINUE keeps the guest's behaviour (a CR/MSR write goes
          // through). A notification was answered by its filter rule already.
          if (session.role === "controller" && item.notification === undefined) await item.continue();
          if (!wanted) continue;
        }
        ctx.out(toJson(itemJson(item)));
        if (item.kind === "unhook") break;
        if (++shown >= max) break;
      }
    });
  } finally {
    clearTimeout(timer);
    ctx.io.signal.removeEventListener("abort", onAbort);
    if (options.controller && !session.closed) {
      for (const v of vcpus) await enableEvents(session, v, types!, crs, msrs, false).catch(() => undefined);
    }
    await session.release();
  }
}

/** `--filter` and `--summary-interval` of `events watch`, parsed before anything connects. */
function filterOption(options: { controller?: boolean; filter?: string; summaryInterval?: string }): EventFilter | undefined {
  if (options.summaryInterval !== undefined && options.filter === undefined) throw new UsageError("--summary-interval needs --filter");
  if (options.filter === undefined) return undefined;
  if (!options.controller) throw new UsageError("--filter needs --controller: the rules answer events on the controller's behalf");
  const intervalMs = options.summaryInterval === undefined ? undefined : parseIndex(options.summaryInterval, "--summary-interval");
  if (intervalMs !== undefined && (intervalMs < 100 || intervalMs > 3_600_000)) throw new UsageError("--summary-interval: between 100 and 3600000 ms");
  try {
    return parseEventFilter(options.filter, intervalMs === undefined ? {} : { summaryIntervalMs: intervalMs });
  } catch (err) {
    throw new UsageError(`--filter: ${(err as Error).message}`);
  }
}

/** `pause <vm> <vcpu>`: stops a vCPU at its next guest entry and keeps it stopped until Ctrl-C or --duration. */
export async function pause(ctx: CliContext, ref: string, vcpuText: string, options: { duration?: string }): Promise<void> {
  const vcpu = parseIndex(vcpuText, "vcpu");
  const durationMs = options.duration === undefined ? undefined : parseIndex(options.duration, "--duration");
  if (durationMs !== undefined && durationMs > 55_000) throw new UsageError("--duration: at most 55000 ms (the bridge answers an event after 60 s at the latest)");
  const vm = await ctx.resolveVm(ref);
  // The bridge answers a pending event itself after the controller's deadline: ask for the longest one.
  await asController(ctx, vm.uuid, false, (session) => untilAborted(ctx.io.signal, async () => {
    const stopped = performance.now();
    await session.pauseVcpu(vcpu, { wait: true, signal: ctx.io.signal });
    for await (const item of session.events({ signal: ctx.io.signal })) {
      if (item.kind === "unhook") {
        ctx.err(`the bridge is unhooking ${vm.name}; giving up`);
        return;
      }
      if (item.kind !== "event") continue;
      if (item.type !== "pauseVcpu" || item.vcpu !== vcpu) {
        await item.continue();
        continue;
      }
      const where = { vm: vm.name, vcpu, rip: item.arch.regs.rip, cr3: item.arch.sregs.cr3, mode: modeName(item.arch.mode) };
      if (ctx.json) ctx.out(toJson({ event: "paused", ...where }));
      else ctx.out(`vCPU ${vcpu} of ${vm.name} paused at rip ${hex(where.rip, 16)} (cr3 ${hex(where.cr3)}, ${where.mode})`);
      if (durationMs === undefined) ctx.err("holding it; press Ctrl-C to resume");
      await waitOrAbort(durationMs, ctx.io.signal);
      await item.continue();
      const seconds = ((performance.now() - stopped) / 1000).toFixed(2);
      if (ctx.json) ctx.out(toJson({ event: "resumed", ...where, seconds: Number(seconds) }));
      else ctx.out(`vCPU ${vcpu} resumed after ${seconds} s`);
      return;
    }
  }), 60_000);
}

/**
 * `page-access <vm> <gpa> [rwx]`: with `rwx`, restricts the page (SetPageAccess, as controller);
 * without, shows the page's access (GetPageAccess, read only; kvmi-v7 VMs only).
 */
export async function pageAccess(ctx: CliContext, ref: string, gpaText: string, accessText: string | undefined, options: { hold?: boolean }): Promise<void> {
  const gpa = parseU64(gpaText, "gpa");
  if (accessText === undefined) {
    if (options.hold === true) throw new UsageError("--hold only applies when setting an access (give rwx)");
    const vm = await ctx.resolveVm(ref);
    const [page] = await ctx.client.vm(vm.uuid).getPageAccess([gpa], { signal: ctx.io.signal });
    if (page === undefined) throw new Error(`the bridge returned no access for ${hex(gpa)}`);
    if (ctx.json) ctx.out(toJson({ vm: vm.name, page: gpa, access: accessString(page.access) }));
    else ctx.out(`page ${hex(gpa)} of ${vm.name} is ${accessString(page.access)}`);
    return;
  }
  const access = parseAccess(accessText);
  // KVMI_VM_SET_PAGE_ACCESS works on whole pages (docs/protocol/v9.md): an unaligned address would
  // silently restrict the page around it.
  if (gpa % 4096n !== 0n) throw new UsageError(`gpa: ${hex(gpa)} is not page-aligned: give the page's first address, ${hex(gpa & ~0xfffn)}`);
  const vm = await ctx.resolveVm(ref);
  const maxGfn = await ctx.client.vm(vm.uuid).getMaxGfn({ signal: ctx.io.signal });
  if (gpa >> 12n > maxGfn) throw new UsageError(`gpa: ${hex(gpa)} is beyond the guest's memory (its last page is ${hex(maxGfn << 12n)})`);
  await asController(ctx, vm.uuid, options.hold === true, async (session) => {
    await session.setPageAccess([{ gpa, access }]);
    if (ctx.json) ctx.out(toJson({ vm: vm.name, page: gpa, access: accessString(access) }));
    else ctx.out(`page ${hex(gpa)} of ${vm.name} is now ${accessString(access)}`);
  });
}
