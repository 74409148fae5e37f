// SPDX-License-Identifier: Apache-2.0
/**
 * VM-scoped v9 commands, answered in order on the receive thread (kvmi-abi §2.5, §4). The order of
 * the checks in each handler is the kernel's: it decides which errno a request with several faults
 * gets, and the v9 selftest asserts it (kvmi-abi §8).
 */
import {
  KVM_EINVAL,
  KVM_ENOENT,
  KVM_EPERM,
} from "../../wire/dialects/errno.js";
import {
  KVMI_VERSION,
  V9_MAX_PAGE_ACCESS_ENTRIES,
  V9_COMMANDS,
  V9_MAX_PHYSICAL_BYTES,
} from "../../wire/dialects/v9.js";
import { findNonZeroPadding } from "../../wire/codec.js";
import type { KernelContext, VmCommandHandler } from "./command-context.js";
import { fail, ok, whenReady } from "./command-context.js";

const PAGE_BYTES = 4096;
const PAGE_SHIFT = 12n;

interface Fields {
  readonly [name: string]: unknown;
}
const num = (value: Fields, name: string): number => value[name] as number;
const big = (value: Fields, name: string): bigint => value[name] as bigint;

/** gpa/size validation of READ/WRITE_PHYSICAL: 1..4096 bytes inside one page (kvmi-abi §4 ids 6, 7). */
function invalidPhysicalRange(gpa: bigint, size: number): boolean {
  const inPage = Number(gpa & BigInt(PAGE_BYTES - 1));
  return size === 0 || size > V9_MAX_PHYSICAL_BYTES || inPage + size > PAGE_BYTES;
}

function isVmEvent(ctx: KernelContext, id: number): boolean {
  return ctx.dialect.events.some((e) => e.id === id && e.scope === "vm");
}

export const VM_COMMAND_HANDLERS: Readonly<Record<string, VmCommandHandler>> = {
  KVMI_GET_VERSION: (ctx) =>
    ok({ version: KVMI_VERSION, features: { singlestep: ctx.features.singlestep ? 1 : 0 } }),

  // EINVAL padding, then ENOENT unknown id, then EPERM disallowed (kvmi-abi §4 id 2). Id 0 counts
  // as a known command (the §9 quirk): EPERM unless bit 0 was allowed.
  KVMI_VM_CHECK_COMMAND: (ctx, { value, nonZeroPadding }) => {
    if (nonZeroPadding !== undefined) return fail(KVM_EINVAL);
    const id = num(value, "id");
    if (id >= ctx.dialect.numMessages) return fail(KVM_ENOENT);
    return ctx.masks().isCommandAllowed(id) ? ok() : fail(KVM_EPERM);
  },

  KVMI_VM_CHECK_EVENT: (ctx, { value, nonZeroPadding }) => {
    if (nonZeroPadding !== undefined) return fail(KVM_EINVAL);
    const id = num(value, "id");
    if (id >= ctx.dialect.numEvents) return fail(KVM_ENOENT);
    return ctx.masks().isEventAllowed(id) ? ok() : fail(KVM_EPERM);
  },

  KVMI_VM_GET_INFO: (ctx) => ok({ vcpu_count: ctx.vcpuCount() }),

  // Only UNHOOK is a VM event; a vCPU event id here is EINVAL (kvmi-abi §5 notes).
  KVMI_VM_CONTROL_EVENTS: (ctx, { value, nonZeroPadding }) => {
    const id = num(value, "event_id");
    const enable = num(value, "enable");
    if (nonZeroPadding !== undefined || enable > 1 || !isVmEvent(ctx, id)) return fail(KVM_EINVAL);
    if (!ctx.masks().isEventAllowed(id)) return fail(KVM_EPERM);
    if (enable === 1) ctx.vmEvents().add(id);
    else ctx.vmEvents().delete(id);
    return ok();
  },

  KVMI_VM_READ_PHYSICAL: (ctx, { value, nonZeroPadding }) => {
    const gpa = big(value, "gpa");
    const size = num(value, "size");
    if (nonZeroPadding !== undefined || invalidPhysicalRange(gpa, size)) return fail(KVM_EINVAL);
    return whenReady(ctx.guest.readPhysical(gpa, size), (data) => (data === undefined ? fail(KVM_ENOENT) : ok({ data })));
  },

  KVMI_VM_WRITE_PHYSICAL: (ctx, { value, nonZeroPadding }) => {
    const gpa = big(value, "gpa");
    const size = num(value, "size");
    if (nonZeroPadding !== undefined || invalidPhysicalRange(gpa, size)) return fail(KVM_EINVAL);
    return whenReady(ctx.guest.writePhysical(gpa, value["data"] as Uint8Array), (written) => (written ? ok() : fail(KVM_ENOENT)));
  },

  KVMI_VM_CONTROL_CLEANUP: (ctx, { value, nonZeroPadding }) => {
    const enable = num(value, "enable");
    if (nonZeroPadding !== undefined || enable > 1) return fail(KVM_EINVAL);
    ctx.setCleanup(enable === 1);
    return ok();
  },

  KVMI_VM_GET_MAX_GFN: (ctx) => ok({ gfn: ctx.guest.maxGfn() }),

  // Every entry is attempted; the first error is returned and the tool must roll back itself
  // (kvmi-abi §4 id 23). A count larger than the message carries is EINVAL, not a close: the
  // dispatcher answers that before we get here.
  KVMI_VM_SET_PAGE_ACCESS: (ctx, { value }, raw) => {
    const header = V9_COMMANDS.KVMI_VM_SET_PAGE_ACCESS.request;
    const count = num(value, "count");
    const entries = value["entries"] as Fields[];
    const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
    if (findNonZeroPadding(header.layout, view) !== undefined) return fail(KVM_EINVAL);
    if (count > V9_MAX_PAGE_ACCESS_ENTRIES) return fail(KVM_EINVAL);
    let first = 0;
    entries.forEach((entry, i) => {
      const at = header.layout.size + i * header.tail.element.size;
      const badPadding = findNonZeroPadding(header.tail.element, view, at) !== undefined;
      const err = applyPageAccess(ctx, entry, badPadding);
      if (first === 0) first = err;
    });
    return first === 0 ? ok() : fail(first);
  },
};

function applyPageAccess(ctx: KernelContext, entry: Fields, badPadding: boolean): number {
  const access = num(entry, "access");
  const visible = num(entry, "visible");
  if (badPadding || access > 7 || visible > 1) return KVM_EINVAL;
  const gfn = big(entry, "gpa") >> PAGE_SHIFT;
  if (!ctx.guest.isGfnVisible(gfn)) return visible === 1 ? KVM_EINVAL : 0;
  ctx.guest.setPageAccess(gfn, access);
  return 0;
}
