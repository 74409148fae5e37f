// SPDX-License-Identifier: Apache-2.0
/**
 * The kernel side the relay plays for the tool: one handler per dialect-neutral op
 * (docs/decisions/0010-dialect-model.md) that runs the command as ONE command on the relay's
 * Session and returns the reply data in the dialect-neutral shape (`OpShapes`), which the relay
 * then encodes with the tool's dialect table. Ids inside bodies (CHECK_COMMAND, CHECK_EVENT,
 * CONTROL_EVENTS) are the tool's dialect ids: they are looked up in its table by id and renumbered
 * to kvmi.v1 through the op or kind, never by a dialect's name.
 */
import { Command, isKvmiBridgeError } from "@kvmi/clients";
import type { EventName, Session, VcpuEventName } from "@kvmi/clients";
import { commandById, commandByOp, errno, eventById, v9 } from "@kvmi/kvm-bridge/codec";
import type { CommandOp, Dialect, EventKind } from "@kvmi/kvm-bridge/codec";
import { kernelErrorOf } from "./errors.js";
import { regsFromWire, regsToWire, sregsToWire } from "./wire-state.js";

type Value = Record<string, unknown>;

/** A command's outcome as the kernel writes it: 0 and the reply data, or a negative KVM errno. */
export type KernelResult = { readonly err: 0; readonly value: Value } | { readonly err: number };

/** What a handler sees: the session, the tool's dialect and the decoded request. */
export interface KernelContext {
  readonly session: Session;
  readonly dialect: Dialect;
  /** GET_VERSION of the remote kernel, read once at attach (features.singlestep). */
  readonly remoteSinglestep: boolean;
}

type Handler = (ctx: KernelContext, body: Value, vcpu: number) => Promise<Value> | Value;

const ok = (): Value => ({});

/** Thrown by a handler to answer with a KVM errno without asking the bridge. */
export class KernelRefusal extends Error {
  constructor(readonly err: number) {
    super(`kernel refusal ${err}`);
  }
}

/** kvmi.v1 events by their dialect-neutral kind; kinds missing here (CREATE_VCPU, CPUID) the bridge cannot carry. */
export const SDK_EVENT_BY_KIND: Partial<Record<EventKind, EventName>> = {
  UNHOOK: "unhook",
  PAUSE_VCPU: "pauseVcpu",
  HYPERCALL: "hypercall",
  BREAKPOINT: "breakpoint",
  CR: "cr",
  TRAP: "trap",
  XSETBV: "xsetbv",
  DESCRIPTOR: "descriptor",
  MSR: "msr",
  PF: "pageFault",
  SINGLESTEP: "singleStep",
};

/** kvmi.v1 `Command` of an op: kvmi.v1 keeps v9's numbering (proto/kvmi/v1/command.proto). */
function protoCommandOf(op: CommandOp): Command | undefined {
  return commandByOp(v9, op)?.id as Command | undefined;
}

/**
 * True when the relay can run `op` for the tool (locally or through the bridge). Ops without a
 * handler are those no remote kernel behind kvmi.v1 can do: EPT views, SPP, #VE, map tokens,
 * QUERY_PHYSICAL and the other kvmi-v7 product commands (docs/protocol/kvmi-v7.md); they answer
 * EOPNOTSUPP, as a kvmi-v7 kernel on a host without them does.
 */
export function relaySupports(op: CommandOp): boolean {
  return HANDLERS[op] !== undefined;
}

function sdkEventOf(ctx: KernelContext, id: number): EventName {
  const kind = eventById(ctx.dialect, id)?.kind;
  const name = kind === undefined ? undefined : SDK_EVENT_BY_KIND[kind];
  if (name === undefined) throw new KernelRefusal(kind === undefined ? -errno.KVM_EINVAL : -errno.KVM_EOPNOTSUPP);
  return name;
}

const HANDLERS: Partial<Record<CommandOp, Handler>> = {
  GET_VERSION: (ctx) => ({
    version: ctx.dialect.kvmiVersion,
    max_msg_size: ctx.dialect.maxMessageBytes,
    // No SPP, VMFUNC, EPTP switching or #VE through kvmi.v1; single-step as the remote host has it.
    features: { singlestep: ctx.remoteSinglestep ? 1 : 0, spp: 0, vmfunc: 0, eptp: 0, ve: 0 },
  }),
  CHECK_COMMAND: async (ctx, body) => {
    const spec = commandById(ctx.dialect, body["id"] as number);
    if (spec === undefined) throw new KernelRefusal(-errno.KVM_EINVAL);
    if (!relaySupports(spec.op)) throw new KernelRefusal(-errno.KVM_EOPNOTSUPP);
    const command = protoCommandOf(spec.op);
    if (command !== undefined) await ctx.session.checkCommand(command);
    return ok();
  },
  CHECK_EVENT: async (ctx, body) => {
    await ctx.session.checkEvent(sdkEventOf(ctx, body["id"] as number));
    return ok();
  },
  GET_VM_INFO: async (ctx) => ({ vcpu_count: (await ctx.session.getVmInfo()).vcpuCount }),
  CONTROL_VM_EVENTS: async (ctx, body) => {
    const name = sdkEventOf(ctx, body["event_id"] as number);
    if (name !== "unhook") throw new KernelRefusal(-errno.KVM_EINVAL);
    await ctx.session.controlVmEvents("unhook", body["enable"] === 1);
    return ok();
  },
  READ_PHYSICAL: async (ctx, body) => ({ data: await ctx.session.readPhysicalMemory(body["gpa"] as bigint, Number(body["size"])) }),
  WRITE_PHYSICAL: async (ctx, body) => {
    await ctx.session.writePhysicalMemory(body["gpa"] as bigint, body["data"] as Uint8Array);
    return ok();
  },
  GET_VCPU_INFO: async (ctx, _body, vcpu) => ({ tsc_speed: (await ctx.session.getVcpuInfo(vcpu)).tscSpeed }),
  // Whatever the node's kernel speaks, a pause is kvmi.v1 PauseVcpu with the tool's wait flag.
  PAUSE_VCPU: async (ctx, body, vcpu) => {
    await ctx.session.pauseVcpu(vcpu, { wait: body["wait"] === 1 });
    return ok();
  },
  CONTROL_VCPU_EVENTS: async (ctx, body, vcpu) => {
    const name = sdkEventOf(ctx, body["event_id"] as number);
    if (name === "unhook") throw new KernelRefusal(-errno.KVM_EINVAL);
    await ctx.session.controlVcpuEvents(vcpu, name as VcpuEventName, body["enable"] === 1);
    return ok();
  },
  GET_REGISTERS: async (ctx, body, vcpu) => {
    const msrs = (body["msrs_idx"] as number[]) ?? [];
    const r = await ctx.session.getRegisters(vcpu, { msrs });
    return {
      mode: r.mode,
      regs: regsToWire(r.regs),
      sregs: sregsToWire(r.sregs),
      msrs: { nmsrs: msrs.length },
      entries: msrs.map((index) => ({ index, data: r.msrs.get(index) ?? 0n })),
    };
  },
  SET_REGISTERS: async (ctx, body, vcpu) => {
    await ctx.session.setRegisters(vcpu, regsFromWire(body));
    return ok();
  },
  GET_CPUID: async (ctx, body, vcpu) => ctx.session.getCpuid(vcpu, body["function"] as number, body["index"] as number) as unknown as Value,
  CONTROL_CLEANUP: async (ctx, body) => {
    await ctx.session.controlCleanup(body["enable"] === 1);
    return ok();
  },
  CONTROL_CR: async (ctx, body, vcpu) => {
    await ctx.session.controlCr(vcpu, body["cr"] as 0 | 3 | 4, body["enable"] === 1);
    return ok();
  },
  INJECT_EXCEPTION: async (ctx, body, vcpu) => {
    await ctx.session.injectException(vcpu, {
      vector: body["nr"] as number,
      errorCode: body["error_code"] as number,
      address: body["address"] as bigint,
    });
    return ok();
  },
  GET_MAX_GFN: async (ctx) => {
    try {
      return { gfn: await ctx.session.getMaxGfn() };
    } catch (error) {
      // v12 kernels have no GET_MAX_GFN; their QEMU sends max_gpa (one past the highest guest
      // address) in the handshake, which the bridge keeps on the Vm resource (docs/protocol/v12.md).
      // libkvmi tools need the answer: the first inaccessible GFN, as GET_MAX_GFN reports it.
      const maxGpa = ctx.session.vm.maxGpa;
      if (isKvmiBridgeError(error) && error.reason === "NOT_IN_DIALECT" && maxGpa !== undefined && maxGpa > 0n) {
        return { gfn: (maxGpa + 0xfffn) >> 12n };
      }
      throw error;
    }
  },
  GET_XCR: async (ctx, body, vcpu) => ({ value: await ctx.session.getXcr(vcpu, body["xcr"] as number) }),
  GET_XSAVE: async (ctx, _body, vcpu) => ({ region: await ctx.session.getXsave(vcpu) }),
  SET_XSAVE: async (ctx, body, vcpu) => {
    await ctx.session.setXsave(vcpu, body["region"] as Uint8Array);
    return ok();
  },
  GET_MTRR_TYPE: async (ctx, body, vcpu) => ({ type: (await ctx.session.getMtrrType(vcpu, body["gpa"] as bigint)).rawType }),
  CONTROL_MSR: async (ctx, body, vcpu) => {
    await ctx.session.controlMsr(vcpu, body["msr"] as number, body["enable"] === 1);
    return ok();
  },
  SET_PAGE_ACCESS: async (ctx, body) => {
    // Only the default EPT view exists behind kvmi.v1.
    if (((body["view"] as number | undefined) ?? 0) !== 0) throw new KernelRefusal(-errno.KVM_EOPNOTSUPP);
    const entries = body["entries"] as { gpa: bigint; access: number; visible?: number }[];
    await ctx.session.setPageAccess(entries.map((e) => ({ gpa: e.gpa, access: e.access, visible: e.visible === 1 })));
    return ok();
  },
  CONTROL_SINGLESTEP: async (ctx, body, vcpu) => {
    await ctx.session.controlSingleStep(vcpu, body["enable"] === 1);
    return ok();
  },
  TRANSLATE_GVA: async (ctx, body, vcpu) => ({ gpa: (await ctx.session.translateGva(vcpu, body["gva"] as bigint)) ?? (1n << 64n) - 1n }),
  // Handled by the relay's reply switch; listed so CHECK_COMMAND reports it.
  CONTROL_CMD_RESPONSE: () => ok(),
  GET_EPT_VIEW: () => ({ view: 0 }),
};

/** Runs one tool command; never throws. */
export async function runCommand(ctx: KernelContext, op: CommandOp, body: Value, vcpu: number): Promise<KernelResult> {
  const handler = HANDLERS[op];
  if (handler === undefined) return { err: -errno.KVM_EOPNOTSUPP };
  try {
    return { err: 0, value: await handler(ctx, body, vcpu) };
  } catch (error) {
    if (error instanceof KernelRefusal) return { err: error.err };
    return { err: kernelErrorOf(error) };
  }
}
