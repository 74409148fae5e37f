// SPDX-License-Identifier: Apache-2.0
/**
 * vCPU-scoped commands, keyed by the dialect-neutral op (docs/decisions/0010-dialect-model.md).
 * They run as jobs on the target vCPU, except PAUSE_VCPU which the receive thread handles. Check
 * order follows the kernel's handlers; the selftests assert the resulting errno for requests with
 * several faults.
 */
import { eventByKind, requireCommand } from "../../wire/dialect.js";
import { KVM_EBUSY, KVM_EINVAL, KVM_ENOENT, KVM_EOPNOTSUPP, KVM_EPERM } from "../../wire/dialects/errno.js";
import { kvmMsrEntry } from "../../wire/layouts/x86.js";
import type { CommandOp, EventKind } from "../../wire/ops.js";
import type { KernelContext, VcpuCommandHandler } from "./command-context.js";
import { fail, ok, whenReady } from "./command-context.js";
import type { KvmRegs } from "./guest-port.js";

const UNMAPPED_GPA = (1n << 64n) - 1n;
/** CRs KVMI_VCPU_CONTROL_CR accepts (kvmi-abi §4 id 15). */
const CONTROLLABLE_CRS = new Set([0, 3, 4]);

type Fields = Readonly<Record<string, unknown>>;
const num = (value: Fields, name: string): number => value[name] as number;

/** MSR ranges KVMI_VCPU_CONTROL_MSR accepts: the low and high ranges of the MSR bitmaps. */
function isControllableMsr(msr: number): boolean {
  return msr <= 0x1fff || (msr >= 0xc0000000 && msr <= 0xc0001fff);
}

/** The wire id of event `kind` in this VM's dialect; -1 when the dialect has no such event. */
function eventId(ctx: KernelContext, kind: EventKind): number {
  return eventByKind(ctx.dialect, kind)?.id ?? -1;
}

export const VCPU_COMMAND_HANDLERS: Readonly<Partial<Record<CommandOp, VcpuCommandHandler>>> = {
  GET_VCPU_INFO: (_ctx, _cmd, vcpu) => ok({ tsc_speed: vcpu.port.tscHz() }),

  // Handled by the receive thread: it only records the request and kicks the vCPU.
  PAUSE_VCPU: (ctx, { value, nonZeroPadding }, vcpu) => {
    if (nonZeroPadding !== undefined || num(value, "wait") > 1) return fail(KVM_EINVAL);
    if (!ctx.masks().isEventAllowed(eventId(ctx, "PAUSE_VCPU"))) return fail(KVM_EPERM);
    // v9 refuses a pause when 1001 are pending; a dialect without a known limit never does.
    if (vcpu.pausePending >= (ctx.dialect.limits.maxPendingPauses ?? Infinity)) return fail(KVM_EBUSY);
    vcpu.pausePending++;
    vcpu.kick();
    return ok();
  },

  // Ids 1..10 are accepted; enabling PAUSE_VCPU, TRAP or SINGLESTEP has no effect (kvmi-abi §4 id 10).
  CONTROL_VCPU_EVENTS: (ctx, { value, nonZeroPadding }, vcpu) => {
    const id = num(value, "event_id");
    const enable = num(value, "enable");
    const isVcpuEvent = ctx.dialect.events.some((e) => e.id === id && e.scope === "vcpu");
    if (nonZeroPadding !== undefined || enable > 1 || !isVcpuEvent) return fail(KVM_EINVAL);
    if (!ctx.masks().isEventAllowed(id)) return fail(KVM_EPERM);
    if (enable === 1 && id === eventId(ctx, "DESCRIPTOR") && !ctx.features.descriptorExits) return fail(KVM_EOPNOTSUPP);
    if (enable === 1 && id === eventId(ctx, "BREAKPOINT") && ctx.features.userspaceBreakpoints) return fail(KVM_EBUSY);
    if (enable === 1) vcpu.enabledEvents.add(id);
    else vcpu.enabledEvents.delete(id);
    return ok();
  },

  GET_REGISTERS: (ctx, { value, nonZeroPadding }, vcpu) => {
    if (nonZeroPadding !== undefined) return fail(KVM_EINVAL);
    const indices = value["msrs_idx"] as number[];
    // The kernel refuses to build a reply larger than KVMI_MSG_SIZE (kvmi-abi §3.1).
    const replyLayout = requireCommand(ctx.dialect, "GET_REGISTERS").reply.layout!;
    const replyBytes = ctx.dialect.layouts.errorCode.size + replyLayout.size + indices.length * kvmMsrEntry.size;
    if (replyBytes > ctx.dialect.maxMessageBytes) return fail(KVM_EINVAL);
    const entries = [];
    for (const index of indices) {
      const data = vcpu.port.readMsr(index);
      if (data === undefined) return fail(KVM_EINVAL);
      entries.push({ index, data });
    }
    return ok({
      mode: vcpu.port.mode(),
      regs: vcpu.port.getRegs(),
      sregs: vcpu.port.getSregs(),
      msrs: { nmsrs: entries.length },
      entries,
    });
  },

  // Only meaningful while an event waits: the registers land when the reply is processed.
  SET_REGISTERS: (_ctx, { value }, vcpu) =>
    vcpu.stashRegisters(value as unknown as KvmRegs) ? ok() : fail(KVM_EOPNOTSUPP),

  GET_CPUID: (_ctx, { value }, vcpu) => {
    const leaf = vcpu.port.cpuid(num(value, "function"), num(value, "index"));
    return leaf === undefined ? fail(KVM_ENOENT) : ok({ ...leaf });
  },

  CONTROL_CR: (_ctx, { value, nonZeroPadding }, vcpu) => {
    const cr = num(value, "cr");
    const enable = num(value, "enable");
    if (nonZeroPadding !== undefined || enable > 1 || !CONTROLLABLE_CRS.has(cr)) return fail(KVM_EINVAL);
    if (enable === 1) vcpu.crMask.add(cr);
    else vcpu.crMask.delete(cr);
    return ok();
  },

  INJECT_EXCEPTION: (ctx, { value, nonZeroPadding }, vcpu) => {
    if (!ctx.masks().isEventAllowed(eventId(ctx, "TRAP"))) return fail(KVM_EPERM);
    if (nonZeroPadding !== undefined) return fail(KVM_EINVAL);
    if (vcpu.injection !== undefined) return fail(KVM_EBUSY);
    vcpu.injection = {
      vector: num(value, "nr"),
      errorCode: num(value, "error_code"),
      address: value["address"] as bigint,
    };
    vcpu.kick();
    return ok();
  },

  GET_XCR: (_ctx, { value, nonZeroPadding }, vcpu) => {
    if (nonZeroPadding !== undefined || num(value, "xcr") !== 0) return fail(KVM_EINVAL);
    return ok({ value: vcpu.port.xcr0() });
  },

  GET_XSAVE: (_ctx, _cmd, vcpu) => ok({ region: vcpu.port.getXsave() }),

  // Shorter areas are zero-extended; larger ones or a state KVM rejects are EINVAL (kvmi-abi §4 id 20).
  SET_XSAVE: (ctx, { value }, vcpu) => {
    const region = value["region"] as Uint8Array;
    const max = ctx.dialect.limits.maxXsaveBytes;
    if (region.length > max) return fail(KVM_EINVAL);
    const full = new Uint8Array(max);
    full.set(region);
    return vcpu.port.setXsave(full) ? ok() : fail(KVM_EINVAL);
  },

  GET_MTRR_TYPE: (_ctx, { value }, vcpu) => ok({ type: vcpu.port.mtrrType(value["gpa"] as bigint) }),

  CONTROL_MSR: (_ctx, { value, nonZeroPadding }, vcpu) => {
    const msr = num(value, "msr");
    const enable = num(value, "enable");
    if (nonZeroPadding !== undefined || enable > 1 || !isControllableMsr(msr)) return fail(KVM_EINVAL);
    if (enable === 1) vcpu.msrWrites.add(msr);
    else vcpu.msrWrites.delete(msr);
    return ok();
  },

  CONTROL_SINGLESTEP: (ctx, { value, nonZeroPadding }, vcpu) => {
    if (!ctx.masks().isEventAllowed(eventId(ctx, "SINGLESTEP"))) return fail(KVM_EPERM);
    const enable = num(value, "enable");
    if (nonZeroPadding !== undefined || enable > 1) return fail(KVM_EINVAL);
    if (!ctx.features.singlestep) return fail(KVM_EOPNOTSUPP);
    vcpu.singlestep = enable === 1;
    return ok();
  },

  TRANSLATE_GVA: (_ctx, { value }, vcpu) =>
    whenReady(vcpu.port.translate(value["gva"] as bigint), (gpa) => ok({ gpa: gpa ?? UNMAPPED_GPA })),

  // kvmi-v7: the EPT view the vCPU runs in; without EPTP switching that is always the default, 0.
  GET_EPT_VIEW: () => ok({ view: 0 }),
};
