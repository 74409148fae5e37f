// SPDX-License-Identifier: Apache-2.0
/**
 * vCPU-scoped v9 commands (kvmi-abi §4). They run as jobs on the target vCPU, except
 * KVMI_VCPU_PAUSE which the receive thread handles. Check order follows the v9 handlers; the
 * selftest (kvmi-abi §8) asserts the resulting errno for requests with several faults.
 */
import {
  KVM_EBUSY,
  KVM_EINVAL,
  KVM_ENOENT,
  KVM_EOPNOTSUPP,
  KVM_EPERM,
} from "../../wire/dialects/errno.js";
import {
  KVMI_EVENT_BREAKPOINT,
  KVMI_EVENT_DESCRIPTOR,
  KVMI_EVENT_PAUSE_VCPU,
  KVMI_EVENT_SINGLESTEP,
  KVMI_EVENT_TRAP,
  KVMI_MSG_SIZE,
  V9_MAX_XSAVE_BYTES,
} from "../../wire/dialects/v9.js";
import { kvmiErrorCode } from "../../wire/layouts/common.js";
import { kvmiVcpuGetRegistersReply } from "../../wire/layouts/commands.js";
import { kvmMsrEntry } from "../../wire/layouts/x86.js";
import type { VcpuCommandHandler } from "./command-context.js";
import { fail, ok, whenReady } from "./command-context.js";
import type { KvmRegs } from "./guest-port.js";

/** v9 refuses a pause when this many are already pending (kvmi-abi §4 id 9). */
const MAX_PENDING_PAUSES = 1001;
const UNMAPPED_GPA = (1n << 64n) - 1n;
/** CRs KVMI_VCPU_CONTROL_CR accepts (kvmi-abi §4 id 15). */
const CONTROLLABLE_CRS = new Set([0, 3, 4]);

type Fields = Readonly<Record<string, unknown>>;
const num = (value: Fields, name: string): number => value[name] as number;

/** MSR ranges KVMI_VCPU_CONTROL_MSR accepts: the low and high ranges of the MSR bitmaps. */
function isControllableMsr(msr: number): boolean {
  return msr <= 0x1fff || (msr >= 0xc0000000 && msr <= 0xc0001fff);
}

export const VCPU_COMMAND_HANDLERS: Readonly<Record<string, VcpuCommandHandler>> = {
  KVMI_VCPU_GET_INFO: (_ctx, _cmd, vcpu) => ok({ tsc_speed: vcpu.port.tscHz() }),

  // Handled by the receive thread: it only records the request and kicks the vCPU.
  KVMI_VCPU_PAUSE: (ctx, { value, nonZeroPadding }, vcpu) => {
    if (nonZeroPadding !== undefined || num(value, "wait") > 1) return fail(KVM_EINVAL);
    if (!ctx.masks().isEventAllowed(KVMI_EVENT_PAUSE_VCPU)) return fail(KVM_EPERM);
    if (vcpu.pausePending >= MAX_PENDING_PAUSES) return fail(KVM_EBUSY);
    vcpu.pausePending++;
    vcpu.kick();
    return ok();
  },

  // Ids 1..10 are accepted; enabling PAUSE_VCPU, TRAP or SINGLESTEP has no effect (kvmi-abi §4 id 10).
  KVMI_VCPU_CONTROL_EVENTS: (ctx, { value, nonZeroPadding }, vcpu) => {
    const id = num(value, "event_id");
    const enable = num(value, "enable");
    const isVcpuEvent = ctx.dialect.events.some((e) => e.id === id && e.scope === "vcpu");
    if (nonZeroPadding !== undefined || enable > 1 || !isVcpuEvent) return fail(KVM_EINVAL);
    if (!ctx.masks().isEventAllowed(id)) return fail(KVM_EPERM);
    if (enable === 1 && id === KVMI_EVENT_DESCRIPTOR && !ctx.features.descriptorExits) return fail(KVM_EOPNOTSUPP);
    if (enable === 1 && id === KVMI_EVENT_BREAKPOINT && ctx.features.userspaceBreakpoints) return fail(KVM_EBUSY);
    if (enable === 1) vcpu.enabledEvents.add(id);
    else vcpu.enabledEvents.delete(id);
    return ok();
  },

  KVMI_VCPU_GET_REGISTERS: (_ctx, { value, nonZeroPadding }, vcpu) => {
    if (nonZeroPadding !== undefined) return fail(KVM_EINVAL);
    const indices = value["msrs_idx"] as number[];
    // The kernel refuses to build a reply larger than KVMI_MSG_SIZE (kvmi-abi §3.1).
    const replyBytes = kvmiErrorCode.size + kvmiVcpuGetRegistersReply.size + indices.length * kvmMsrEntry.size;
    if (replyBytes > KVMI_MSG_SIZE) return fail(KVM_EINVAL);
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
  KVMI_VCPU_SET_REGISTERS: (_ctx, { value }, vcpu) =>
    vcpu.stashRegisters(value as unknown as KvmRegs) ? ok() : fail(KVM_EOPNOTSUPP),

  KVMI_VCPU_GET_CPUID: (_ctx, { value }, vcpu) => {
    const leaf = vcpu.port.cpuid(num(value, "function"), num(value, "index"));
    return leaf === undefined ? fail(KVM_ENOENT) : ok({ ...leaf });
  },

  KVMI_VCPU_CONTROL_CR: (_ctx, { value, nonZeroPadding }, vcpu) => {
    const cr = num(value, "cr");
    const enable = num(value, "enable");
    if (nonZeroPadding !== undefined || enable > 1 || !CONTROLLABLE_CRS.has(cr)) return fail(KVM_EINVAL);
    if (enable === 1) vcpu.crMask.add(cr);
    else vcpu.crMask.delete(cr);
    return ok();
  },

  KVMI_VCPU_INJECT_EXCEPTION: (ctx, { value, nonZeroPadding }, vcpu) => {
    if (!ctx.masks().isEventAllowed(KVMI_EVENT_TRAP)) return fail(KVM_EPERM);
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

  KVMI_VCPU_GET_XCR: (_ctx, { value, nonZeroPadding }, vcpu) => {
    if (nonZeroPadding !== undefined || num(value, "xcr") !== 0) return fail(KVM_EINVAL);
    return ok({ value: vcpu.port.xcr0() });
  },

  KVMI_VCPU_GET_XSAVE: (_ctx, _cmd, vcpu) => ok({ region: vcpu.port.getXsave() }),

  // Shorter areas are zero-extended; larger ones or a state KVM rejects are EINVAL (kvmi-abi §4 id 20).
  KVMI_VCPU_SET_XSAVE: (_ctx, { value }, vcpu) => {
    const region = value["region"] as Uint8Array;
    if (region.length > V9_MAX_XSAVE_BYTES) return fail(KVM_EINVAL);
    const full = new Uint8Array(V9_MAX_XSAVE_BYTES);
    full.set(region);
    return vcpu.port.setXsave(full) ? ok() : fail(KVM_EINVAL);
  },

  KVMI_VCPU_GET_MTRR_TYPE: (_ctx, { value }, vcpu) => ok({ type: vcpu.port.mtrrType(value["gpa"] as bigint) }),

  KVMI_VCPU_CONTROL_MSR: (_ctx, { value, nonZeroPadding }, vcpu) => {
    const msr = num(value, "msr");
    const enable = num(value, "enable");
    if (nonZeroPadding !== undefined || enable > 1 || !isControllableMsr(msr)) return fail(KVM_EINVAL);
    if (enable === 1) vcpu.msrWrites.add(msr);
    else vcpu.msrWrites.delete(msr);
    return ok();
  },

  KVMI_VCPU_CONTROL_SINGLESTEP: (ctx, { value, nonZeroPadding }, vcpu) => {
    if (!ctx.masks().isEventAllowed(KVMI_EVENT_SINGLESTEP)) return fail(KVM_EPERM);
    const enable = num(value, "enable");
    if (nonZeroPadding !== undefined || enable > 1) return fail(KVM_EINVAL);
    if (!ctx.features.singlestep) return fail(KVM_EOPNOTSUPP);
    vcpu.singlestep = enable === 1;
    return ok();
  },

  KVMI_VCPU_TRANSLATE_GVA: (_ctx, { value }, vcpu) =>
    whenReady(vcpu.port.translate(value["gva"] as bigint), (gpa) => ok({ gpa: gpa ?? UNMAPPED_GPA })),
};
