// SPDX-License-Identifier: Apache-2.0
/**
 * VM-scoped commands, answered in order on the receive thread (docs/protocol/README.md, "Threads"),
 * keyed by the dialect-neutral op so that one handler serves v9, v12 and kvmi-v7: ids, layouts and
 * limits come from the VM's dialect table. The order of the checks in each handler is the kernel's:
 * it decides which errno a request with several faults gets, and the selftests assert it.
 */
import { findNonZeroPadding, withZeroDefaults } from "../../wire/codec.js";
import type { Layout } from "../../wire/layout.js";
import { commandById, eventById, requireCommand } from "../../wire/dialect.js";
import { KVM_EINVAL, KVM_ENOENT, KVM_EOPNOTSUPP, KVM_EPERM } from "../../wire/dialects/errno.js";
import type { CommandOp } from "../../wire/ops.js";
import type { CommandResult, KernelContext, VmCommandHandler } from "./command-context.js";
import { fail, ok, whenReady } from "./command-context.js";
import { isPromise, type MaybePromise } from "./guest-port.js";

const PAGE_BYTES = 4096;
const PAGE_SHIFT = 12n;

interface Fields {
  readonly [name: string]: unknown;
}
const num = (value: Fields, name: string): number => value[name] as number;
const big = (value: Fields, name: string): bigint => value[name] as bigint;

/** gpa/size validation of READ/WRITE_PHYSICAL: 1..max bytes inside one page (docs/protocol/v9.md). */
function invalidPhysicalRange(ctx: KernelContext, gpa: bigint, size: number): boolean {
  const inPage = Number(gpa & BigInt(PAGE_BYTES - 1));
  return size === 0 || size > ctx.dialect.limits.maxPhysicalBytes || inPage + size > PAGE_BYTES;
}

function isVmEvent(ctx: KernelContext, id: number): boolean {
  return eventById(ctx.dialect, id)?.scope === "vm";
}

/**
 * A command id the kernel knows (CHECK_COMMAND answers ENOENT otherwise): a command of the table, or
 * the event-reply id, which v9 counts as a command too (docs/protocol/v9.md, "Permissions" quirk).
 */
function isKnownCommandId(ctx: KernelContext, id: number): boolean {
  if (id >= ctx.dialect.numMessages) return false;
  return commandById(ctx.dialect, id) !== undefined || id === ctx.dialect.eventFraming.replyMessageId;
}

export const VM_COMMAND_HANDLERS: Readonly<Partial<Record<CommandOp, VmCommandHandler>>> = {
  GET_VERSION: (ctx) =>
    ok(
      // GET_VERSION replies differ per dialect (v12's `max_msg_size`, kvmi-v7's feature bytes): one
      // description, completed with zeros for whatever else the table's layout declares.
      withZeroDefaults(requireCommand(ctx.dialect, "GET_VERSION").reply.layout, {
        version: ctx.dialect.kvmiVersion,
        max_msg_size: ctx.dialect.maxMessageBytes,
        // The emulated host has neither EPT views, #VE nor SPP (kvmi-v7's feature bytes stay 0).
        features: { singlestep: ctx.features.singlestep ? 1 : 0 },
      }),
    ),

  // EINVAL padding, then ENOENT unknown id, then EPERM disallowed.
  CHECK_COMMAND: (ctx, { value, nonZeroPadding }) => {
    if (nonZeroPadding !== undefined) return fail(KVM_EINVAL);
    const id = num(value, "id");
    if (!isKnownCommandId(ctx, id)) return fail(KVM_ENOENT);
    return ctx.masks().isCommandAllowed(id) ? ok() : fail(KVM_EPERM);
  },

  CHECK_EVENT: (ctx, { value, nonZeroPadding }) => {
    if (nonZeroPadding !== undefined) return fail(KVM_EINVAL);
    const id = num(value, "id");
    if (eventById(ctx.dialect, id) === undefined) return fail(KVM_ENOENT);
    return ctx.masks().isEventAllowed(id) ? ok() : fail(KVM_EPERM);
  },

  GET_VM_INFO: (ctx) => ok({ vcpu_count: ctx.vcpuCount() }),

  // Only UNHOOK is a VM event; a vCPU event id here is EINVAL.
  CONTROL_VM_EVENTS: (ctx, { value, nonZeroPadding }) => {
    const id = num(value, "event_id");
    const enable = num(value, "enable");
    if (nonZeroPadding !== undefined || enable > 1 || !isVmEvent(ctx, id)) return fail(KVM_EINVAL);
    if (!ctx.masks().isEventAllowed(id)) return fail(KVM_EPERM);
    if (enable === 1) ctx.vmEvents().add(id);
    else ctx.vmEvents().delete(id);
    return ok();
  },

  READ_PHYSICAL: (ctx, { value, nonZeroPadding }) => {
    const gpa = big(value, "gpa");
    const size = num(value, "size");
    if (nonZeroPadding !== undefined || invalidPhysicalRange(ctx, gpa, size)) return fail(KVM_EINVAL);
    return whenReady(ctx.guest.readPhysical(gpa, size), (data) => (data === undefined ? fail(KVM_ENOENT) : ok({ data })));
  },

  WRITE_PHYSICAL: (ctx, { value, nonZeroPadding }) => {
    const gpa = big(value, "gpa");
    const size = num(value, "size");
    if (nonZeroPadding !== undefined || invalidPhysicalRange(ctx, gpa, size)) return fail(KVM_EINVAL);
    return whenReady(ctx.guest.writePhysical(gpa, value["data"] as Uint8Array), (written) => (written ? ok() : fail(KVM_ENOENT)));
  },

  CONTROL_CLEANUP: (ctx, { value, nonZeroPadding }) => {
    const enable = num(value, "enable");
    if (nonZeroPadding !== undefined || enable > 1) return fail(KVM_EINVAL);
    ctx.setCleanup(enable === 1);
    return ok();
  },

  GET_MAX_GFN: (ctx) => ok({ gfn: ctx.guest.maxGfn() }),

  // Every entry is attempted; the first error is returned and the tool must roll back itself. A
  // count larger than the message carries is EINVAL, not a close: the dispatcher answers that first.
  SET_PAGE_ACCESS: (ctx, { value }, raw) => {
    const header = requireCommand(ctx.dialect, "SET_PAGE_ACCESS").request;
    const fixed = header.layout!;
    const element = header.tail!.element as Layout;
    const count = num(value, "count");
    const entries = value["entries"] as Fields[];
    const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
    if (findNonZeroPadding(fixed, view) !== undefined) return fail(KVM_EINVAL);
    if (count > ctx.dialect.limits.maxPageAccessEntries) return fail(KVM_EINVAL);
    // kvmi-v7 names an EPT view; this host has only the default one (no EPTP switching).
    if ((value["view"] as number | undefined ?? 0) !== 0) return fail(KVM_EOPNOTSUPP);
    const errs = entries.map((entry, i) => applyPageAccess(ctx, entry, findNonZeroPadding(element, view, fixed.size + i * element.size) !== undefined));
    const firstError = (all: readonly number[]): CommandResult => {
      const first = all.find((err) => err !== 0);
      return first === undefined ? ok() : fail(first);
    };
    // A guest that applies restrictions asynchronously (QEMU's watchpoints) answers once all are in place.
    return errs.some(isPromise) ? Promise.all(errs).then(firstError) : firstError(errs as number[]);
  },

  // kvmi-v7: one access byte per requested gpa, in the default view.
  GET_PAGE_ACCESS: (ctx, { value, nonZeroPadding }) => {
    if (nonZeroPadding !== undefined) return fail(KVM_EINVAL);
    if (num(value, "view") !== 0) return fail(KVM_EOPNOTSUPP);
    const gpas = value["gpa"] as bigint[];
    const access = new Uint8Array(gpas.length);
    for (const [i, gpa] of gpas.entries()) {
      const gfn = gpa >> PAGE_SHIFT;
      if (!ctx.guest.isGfnVisible(gfn)) return fail(KVM_EINVAL);
      access[i] = ctx.guest.pageAccess(gfn);
    }
    return ok({ access });
  },
};

function applyPageAccess(ctx: KernelContext, entry: Fields, badPadding: boolean): MaybePromise<number> {
  const access = num(entry, "access");
  // Only v9 entries carry `visible`; the others behave as visible = 0 (skip invisible gfns).
  const visible = (entry["visible"] as number | undefined) ?? 0;
  if (badPadding || access > 7 || visible > 1) return KVM_EINVAL;
  const gfn = big(entry, "gpa") >> PAGE_SHIFT;
  if (!ctx.guest.isGfnVisible(gfn)) return visible === 1 ? KVM_EINVAL : 0;
  const applied = ctx.guest.setPageAccess(gfn, access);
  return isPromise(applied) ? applied.then((err) => err || 0) : applied || 0;
}
