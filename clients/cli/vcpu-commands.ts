// SPDX-License-Identifier: Apache-2.0
/**
 * kvmictl commands for one vCPU beyond `regs`: the read-only ones (`cpuid`, `xcr`, `xsave`, `mtrr`)
 * are unary calls; the ones that change the vCPU (`regs set`, `inject`, `step`, `break`) attach as
 * controller and work inside events, as KVMI requires: registers are set in the reply to a
 * PAUSE_VCPU event, an injected exception is confirmed by the TRAP event that follows, a step is a
 * SINGLESTEP event, a breakpoint an INT3 whose BREAKPOINT events are stepped over
 * (docs/protocol/README.md, "Events and replies").
 */
import { MtrrType, UnavailableError } from "@kvmi/clients";
import type { Session, SessionItem, VcpuEvent, X86Regs } from "@kvmi/clients";
import { parseIndex, parseU64, UsageError } from "./args.js";
import type { CliContext } from "./context.js";
import { untilAborted } from "./context.js";
import { hex, hexdump, modeName, toJson } from "./format.js";

/** `cpuid <vm> <vcpu> <leaf> [subleaf]`. */
export async function cpuid(ctx: CliContext, ref: string, vcpuText: string, leafText: string, subleafText: string | undefined): Promise<void> {
  const vcpu = parseIndex(vcpuText, "vcpu");
  const leaf = u32(leafText, "leaf");
  const subleaf = subleafText === undefined ? 0 : u32(subleafText, "subleaf");
  const vm = await ctx.resolveVm(ref);
  const r = await ctx.client.vm(vm.uuid).getCpuid(vcpu, leaf, subleaf, { signal: ctx.io.signal });
  const regs = { eax: hex(r.eax), ebx: hex(r.ebx), ecx: hex(r.ecx), edx: hex(r.edx) };
  if (ctx.json) ctx.out(toJson({ vm: vm.name, vcpu, leaf: hex(leaf), subleaf: hex(subleaf), ...regs }));
  else ctx.out(`cpuid ${hex(leaf)}.${hex(subleaf)}: eax ${hex(r.eax, 8)} ebx ${hex(r.ebx, 8)} ecx ${hex(r.ecx, 8)} edx ${hex(r.edx, 8)}`);
}

/** `xcr <vm> <vcpu> [index]`: an extended control register (XCR0 by default). */
export async function xcr(ctx: CliContext, ref: string, vcpuText: string, indexText: string | undefined): Promise<void> {
  const vcpu = parseIndex(vcpuText, "vcpu");
  const index = indexText === undefined ? 0 : parseIndex(indexText, "index");
  const vm = await ctx.resolveVm(ref);
  const value = await ctx.client.vm(vm.uuid).getXcr(vcpu, index, { signal: ctx.io.signal });
  if (ctx.json) ctx.out(toJson({ vm: vm.name, vcpu, xcr: index, value }));
  else ctx.out(`xcr${index} ${hex(value, 16)}`);
}

/** `xsave <vm> <vcpu>`: the XSAVE area as a hex dump (offsets from the start of the area). */
export async function xsave(ctx: CliContext, ref: string, vcpuText: string): Promise<void> {
  const vcpu = parseIndex(vcpuText, "vcpu");
  const vm = await ctx.resolveVm(ref);
  const area = await ctx.client.vm(vm.uuid).getXsave(vcpu, { signal: ctx.io.signal });
  if (ctx.json) ctx.out(toJson({ vm: vm.name, vcpu, size: area.length, data: area }));
  else ctx.io.stdout(hexdump(area, 0n));
}

/** `mtrr <vm> <vcpu> <gpa>`: the memory type of a guest physical address. */
export async function mtrr(ctx: CliContext, ref: string, vcpuText: string, gpaText: string): Promise<void> {
  const vcpu = parseIndex(vcpuText, "vcpu");
  const gpa = parseU64(gpaText, "gpa");
  const vm = await ctx.resolveVm(ref);
  const r = await ctx.client.vm(vm.uuid).getMtrrType(vcpu, gpa, { signal: ctx.io.signal });
  const type = (MtrrType[r.type] ?? "UNSPECIFIED").toLowerCase().replace(/_/g, "-");
  if (ctx.json) ctx.out(toJson({ vm: vm.name, vcpu, gpa, type, rawType: r.rawType }));
  else ctx.out(`${hex(gpa)}: ${type} (kernel value ${r.rawType})`);
}

function u32(text: string, what: string): number {
  const value = parseU64(text, what);
  if (value > 0xffffffffn) throw new UsageError(`${what}: ${text} does not fit in 32 bits`);
  return Number(value);
}

/** The registers `regs set` may change: the 18 of `struct kvm_regs`. */
const REGISTER_NAMES = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags"] as const;
type RegisterName = (typeof REGISTER_NAMES)[number];

/** Parses `rip=0x…` assignments. */
export function parseAssignments(texts: readonly string[]): Partial<Record<RegisterName, bigint>> {
  if (texts.length === 0) throw new UsageError("regs set: give at least one assignment, e.g. rax=0x1 rip=0xffffffff81000000");
  const out: Partial<Record<RegisterName, bigint>> = {};
  for (const text of texts) {
    const m = /^([a-z0-9]+)=(.+)$/i.exec(text.trim());
    const name = m?.[1]?.toLowerCase() as RegisterName | undefined;
    if (m === null || name === undefined || !REGISTER_NAMES.includes(name)) {
      throw new UsageError(`regs set: "${text}" is not REGISTER=VALUE with one of ${REGISTER_NAMES.join(", ")}`);
    }
    out[name] = parseU64(m[2]!, name);
  }
  return out;
}

/**
 * Attaches as controller, stops `vcpu` with PAUSE_VCPU and runs `atPause` inside that event (which
 * must reply to it); every other event is answered with CONTINUE. Releases keeping the changes.
 */
async function atPause(ctx: CliContext, uuid: string, vcpu: number, body: (session: Session, event: VcpuEvent) => Promise<void>): Promise<void> {
  const session = await ctx.client.attach(uuid, { role: "controller", eventDeadlineMs: 60_000 });
  try {
    await session.pauseVcpu(vcpu, { wait: true, signal: ctx.io.signal });
    await untilAborted(ctx.io.signal, async () => {
      for await (const item of session.events({ signal: ctx.io.signal })) {
        if (item.kind === "unhook") throw new UsageError("the bridge is unhooking the VM; nothing was changed");
        if (item.kind !== "event") continue;
        if (item.type === "pauseVcpu" && item.vcpu === vcpu) return body(session, item);
        await item.continue();
      }
    });
  } finally {
    await session.release({ keepChanges: true });
  }
}

/** `regs set <vm> <vcpu> reg=value…`: the registers are replaced in the reply to a PAUSE_VCPU event. */
export async function regsSet(ctx: CliContext, ref: string, vcpuText: string, assignments: readonly string[]): Promise<void> {
  const vcpu = parseIndex(vcpuText, "vcpu");
  const changes = parseAssignments(assignments);
  const vm = await ctx.resolveVm(ref);
  await atPause(ctx, vm.uuid, vcpu, async (session, event) => {
    const before: X86Regs = event.arch.regs;
    const after: X86Regs = { ...before, ...changes };
    await event.continue({ registers: after });
    // The reply is on its way, not applied: releasing now could let the bridge answer the event
    // first (without the registers). Wait until the vCPU shows them.
    const until = Date.now() + 5000;
    for (;;) {
      const now = (await session.getRegisters(vcpu, { signal: ctx.io.signal })).regs;
      if (Object.entries(changes).every(([k, v]) => now[k as RegisterName] === v)) break;
      if (Date.now() > until) throw new UsageError(`regs set: vCPU ${vcpu} did not take the new registers (is another tool answering its events?)`);
      await new Promise((r) => setTimeout(r, 20));
    }
    const changed = Object.fromEntries(Object.keys(changes).map((k) => [k, { from: before[k as RegisterName], to: after[k as RegisterName] }]));
    if (ctx.json) ctx.out(toJson({ vm: vm.name, vcpu, changed }));
    else for (const [k, v] of Object.entries(changed)) ctx.out(`${k.padEnd(6)} ${hex(v.from, 16)} -> ${hex(v.to, 16)}`);
  });
}

/** `inject <vm> <vcpu> <vector> [--error-code n] [--address x] [--wait ms]`. */
export async function inject(ctx: CliContext, ref: string, vcpuText: string, vectorText: string, options: { errorCode?: string; address?: string; wait?: string }): Promise<number> {
  const vcpu = parseIndex(vcpuText, "vcpu");
  const vector = parseIndex(vectorText, "vector");
  if (vector > 255) throw new UsageError(`vector: ${vector} is not 0..255`);
  const errorCode = options.errorCode === undefined ? undefined : u32(options.errorCode, "--error-code");
  const address = options.address === undefined ? undefined : parseU64(options.address, "--address");
  const waitMs = options.wait === undefined ? 10_000 : parseIndex(options.wait, "--wait");
  const vm = await ctx.resolveVm(ref);
  const session = await ctx.client.attach(vm.uuid, { role: "controller" });
  let trap: Extract<VcpuEvent, { type: "trap" }> | undefined;
  try {
    await session.injectException(vcpu, { vector, ...(errorCode !== undefined && { errorCode }), ...(address !== undefined && { address }) });
    // The TRAP event reports what was injected, at the vCPU's next guest entry.
    const stop = AbortSignal.any([ctx.io.signal, AbortSignal.timeout(waitMs)]);
    await untilAborted(stop, async () => {
      for await (const item of session.events({ signal: stop })) {
        if (item.kind === "unhook") return;
        if (item.kind !== "event") continue;
        await item.continue();
        if (item.type === "trap" && item.vcpu === vcpu) {
          trap = item;
          return;
        }
      }
    });
  } finally {
    await session.release({ keepChanges: true });
  }
  if (trap === undefined) {
    ctx.err(`exception ${vector} queued on vCPU ${vcpu}; no TRAP event within ${waitMs} ms (has the vCPU entered the guest?)`);
    if (ctx.json) ctx.out(toJson({ vm: vm.name, vcpu, vector, injected: false }));
    return 1;
  }
  const t = trap;
  if (ctx.json) ctx.out(toJson({ vm: vm.name, vcpu, vector: t.vector, errorCode: hex(t.errorCode), address: t.address, injected: true }));
  else ctx.out(`injected vector ${t.vector} (error code ${hex(t.errorCode)}, address ${hex(t.address)}) into vCPU ${vcpu} at rip ${hex(t.arch.regs.rip, 16)}`);
  return 0;
}

/** `step <vm> <vcpu> [--count n]`: single-steps a vCPU from where a pause stops it, printing each RIP. */
export async function step(ctx: CliContext, ref: string, vcpuText: string, options: { count?: string }): Promise<void> {
  const vcpu = parseIndex(vcpuText, "vcpu");
  const count = options.count === undefined ? 1 : parseIndex(options.count, "--count");
  if (count === 0) throw new UsageError("--count: at least 1");
  const vm = await ctx.resolveVm(ref);
  await atPause(ctx, vm.uuid, vcpu, async (session, paused) => {
    const print = (n: number, e: VcpuEvent): void => {
      if (ctx.json) ctx.out(toJson({ vm: vm.name, vcpu, step: n, rip: e.arch.regs.rip, cr3: e.arch.sregs.cr3, mode: modeName(e.arch.mode) }));
      else ctx.out(`${String(n).padStart(4)}  rip ${hex(e.arch.regs.rip, 16)}  cr3 ${hex(e.arch.sregs.cr3)}`);
    };
    print(0, paused);
    await session.controlSingleStep(vcpu, true);
    await paused.continue();
    let n = 0;
    try {
      for await (const item of session.events({ signal: ctx.io.signal })) {
        if (item.kind === "unhook") return;
        if (item.kind !== "event") continue;
        if (item.type === "singleStep" && item.vcpu === vcpu) {
          print(++n, item);
          if (n >= count) await session.controlSingleStep(vcpu, false);
        }
        await item.continue();
        if (n >= count) return;
      }
    } finally {
      if (n < count && !session.closed) await session.controlSingleStep(vcpu, false).catch(() => undefined);
    }
  });
}

const INT3 = Uint8Array.of(0xcc);

/**
 * `break <vm> <addr> [--physical] [--vcpu n] [--count n] [--duration ms]`: an INT3 at the address
 * (virtual, translated with vCPU 0 or --vcpu, unless --physical). Each hit is printed and stepped
 * over the KVMI way: the original byte goes back, the vCPU single-steps it, RETRY re-executes it,
 * and on the SINGLESTEP the INT3 returns. On exit the original byte is restored.
 */
export async function breakpoint(ctx: CliContext, ref: string, addrText: string, options: { physical?: boolean; vcpu?: string; count?: string; duration?: string }): Promise<number> {
  const address = parseU64(addrText, "addr");
  const via = options.vcpu === undefined ? 0 : parseIndex(options.vcpu, "--vcpu");
  const count = options.count === undefined ? 1 : parseIndex(options.count, "--count");
  const durationMs = options.duration === undefined ? undefined : parseIndex(options.duration, "--duration");
  if (count === 0) throw new UsageError("--count: at least 1");
  const vm = await ctx.resolveVm(ref);
  const session = await ctx.client.attach(vm.uuid, { role: "controller" });
  const vcpus = Array.from({ length: session.vm.vcpuCount }, (_, i) => i);
  const stop = new AbortController();
  const onAbort = (): void => stop.abort();
  ctx.io.signal.addEventListener("abort", onAbort, { once: true });
  const timer = durationMs === undefined ? undefined : setTimeout(onAbort, durationMs);
  const stepping = new Set<number>();
  let armed = false;
  let hits = 0;
  let gpa = address;
  let original: Uint8Array = new Uint8Array(0);
  const handle = async (item: SessionItem): Promise<void> => {
    if (item.kind !== "event") return;
    if (item.type === "breakpoint" && item.gpa === gpa) {
      hits++;
      const at = { vm: vm.name, hit: hits, vcpu: item.vcpu, gpa, rip: item.arch.regs.rip, cr3: item.arch.sregs.cr3 };
      if (ctx.json) ctx.out(toJson(at));
      else ctx.out(`hit ${hits}: vCPU ${item.vcpu} at rip ${hex(at.rip, 16)} (gpa ${hex(gpa)}, cr3 ${hex(at.cr3)})`);
      if (hits >= count) {
        armed = false;
        await session.writePhysical(gpa, original);
        stop.abort();
        return item.retry();
      }
      if (!armed) return item.retry();
      if (stepping.size === 0) await session.writePhysical(gpa, original);
      stepping.add(item.vcpu);
      await session.controlSingleStep(item.vcpu, true);
      return item.retry();
    }
    if (item.type === "singleStep" && stepping.delete(item.vcpu)) {
      await session.controlSingleStep(item.vcpu, false);
      if (armed && stepping.size === 0) await session.writePhysical(gpa, INT3);
      return item.continue();
    }
    // A guest's own INT3 or any other event goes on unchanged (CONTINUE re-injects a foreign #BP).
    return item.continue();
  };
  try {
    if (!options.physical) {
      const translated = await session.translate(via, address);
      if (translated === undefined) throw new UsageError(`addr: ${hex(address)} is not mapped in vCPU ${via}'s address space (use --physical for a guest physical address)`);
      gpa = translated;
    }
    original = await session.readPhysical(gpa, 1);
    for (const v of vcpus) {
      await session.controlVcpuEvents(v, "breakpoint", true).catch((err: unknown) => {
        // KVM_EAGAIN: the guest has not started this vCPU yet.
        if (!(err instanceof UnavailableError)) throw err;
      });
    }
    await session.writePhysical(gpa, INT3);
    armed = true;
    ctx.err(`breakpoint at ${hex(address)}${options.physical ? "" : ` (gpa ${hex(gpa)})`}, original byte ${Buffer.from(original).toString("hex")}; waiting for ${count} hit(s)`);
    await untilAborted(stop.signal, async () => {
      for await (const item of session.events({ signal: stop.signal })) {
        if (item.kind === "unhook") return;
        await handle(item);
        if (stop.signal.aborted) return;
      }
    });
  } finally {
    clearTimeout(timer);
    ctx.io.signal.removeEventListener("abort", onAbort);
    if (!session.closed && original.length === 1) {
      armed = false;
      for (const v of vcpus) await session.controlVcpuEvents(v, "breakpoint", false).catch(() => undefined);
      await session.writePhysical(gpa, original);
      for (const v of stepping) await session.controlSingleStep(v, false).catch(() => undefined);
      // Events sent before the INT3 went away still need their reply.
      const quiet = AbortSignal.timeout(150);
      await untilAborted(quiet, async () => {
        for await (const item of session.events({ signal: quiet })) await handle(item);
      }).catch(() => undefined);
    }
    await session.release();
  }
  return hits >= count ? 0 : 1;
}
