// SPDX-License-Identifier: Apache-2.0
/**
 * Turns guest exits into KVMI events of the VM's dialect (docs/protocol/README.md, "Events"): the filtering KVM does (enable masks,
 * CONTROL_CR / CONTROL_MSR selections, "fires only when the value changes"), the event payloads,
 * and what each reply means for the guest.
 */
import type { EventKind } from "../../wire/ops.js";
import type { DescriptorKind, ExitAction, HypercallReply, NotifyAction, VcpuExitHandler, WriteReply } from "../guest/exits.js";
import { passThroughExitHandler } from "../guest/exits.js";
import type { Vcpu } from "../guest/vcpu.js";
import type { EventOutcome, VcpuIntrospection } from "./vcpu-introspection.js";

/** What the exit handler needs from the per-VM kernel state. */
export interface KvmiExitTarget {
  /** The wire id of an event kind in the VM's dialect; undefined when the dialect lacks it. */
  eventId(kind: EventKind): number | undefined;
  /** The introspection state of a vCPU while the VM is hooked. */
  vcpu(index: number): VcpuIntrospection | undefined;
  /** Every entry, hooked or not: frees the leftovers of a failed HOOK (kvmi-abi §8 step 1). */
  noteEntry(index: number): void;
}

const ACTIONS: Readonly<Record<EventOutcome["action"], ExitAction>> = {
  CONTINUE: "continue",
  RETRY: "retry",
  CRASH: "crash",
};

/** The tool went away (or never answered): the vCPU continues (kvmi-abi §2.8). */
function toExitAction(outcome: EventOutcome | undefined): ExitAction {
  return outcome === undefined ? "continue" : ACTIONS[outcome.action];
}

function toNotifyAction(outcome: EventOutcome | undefined): NotifyAction {
  return outcome?.action === "CRASH" ? "crash" : "continue";
}

/**
 * A CR/MSR reply: CONTINUE loads `new_val` (zero-filled when the tool sent less data, kvmi-abi §3.4);
 * without a reply the write goes through unchanged.
 */
function toWriteReply(outcome: EventOutcome | undefined, newValue: bigint): WriteReply {
  if (outcome === undefined) return { action: "continue", value: newValue };
  if (outcome.action === "CRASH") return { action: "crash", value: newValue };
  return { action: "continue", value: (outcome.data?.["new_val"] as bigint | undefined) ?? 0n };
}

/** Creates the exit handler the guest calls. */
export function createKvmiExitHandler(target: KvmiExitTarget): VcpuExitHandler {
  const lookup = (index: number): VcpuIntrospection | undefined => target.vcpu(index);
  const enabled = (vcpu: Vcpu, kind: EventKind): VcpuIntrospection | undefined => {
    const kvmi = lookup(vcpu.index);
    const id = target.eventId(kind);
    return id !== undefined && kvmi?.enabledEvents.has(id) === true ? kvmi : undefined;
  };

  return {
    onEntry: (vcpu) => {
      target.noteEntry(vcpu.index);
      return lookup(vcpu.index)?.onEntry();
    },

    async breakpoint(vcpu, gpa, insnLen): Promise<ExitAction> {
      const kvmi = enabled(vcpu, "BREAKPOINT");
      if (kvmi === undefined) return passThroughExitHandler.breakpoint(vcpu, gpa, insnLen) as ExitAction;
      return toExitAction(await kvmi.sendEvent("BREAKPOINT", { gpa, insn_len: insnLen }));
    },

    async crWrite(vcpu, cr, oldValue, newValue): Promise<WriteReply> {
      const kvmi = enabled(vcpu, "CR");
      if (kvmi === undefined || !kvmi.crMask.has(cr) || oldValue === newValue) {
        return { action: "continue", value: newValue };
      }
      const outcome = await kvmi.sendEvent("CR", { cr, old_value: oldValue, new_value: newValue });
      return toWriteReply(outcome, newValue);
    },

    async msrWrite(vcpu, msr, oldValue, newValue): Promise<WriteReply> {
      const kvmi = enabled(vcpu, "MSR");
      if (kvmi === undefined || !kvmi.msrWrites.has(msr) || oldValue === newValue) {
        return { action: "continue", value: newValue };
      }
      const outcome = await kvmi.sendEvent("MSR", { msr, old_value: oldValue, new_value: newValue });
      return toWriteReply(outcome, newValue);
    },

    async xsetbv(vcpu, xcr, oldValue, newValue): Promise<NotifyAction> {
      const kvmi = enabled(vcpu, "XSETBV");
      if (kvmi === undefined || oldValue === newValue) return "continue";
      return toNotifyAction(await kvmi.sendEvent("XSETBV", { xcr, old_value: oldValue, new_value: newValue }));
    },

    async descriptor(vcpu, descriptor: DescriptorKind, write): Promise<ExitAction> {
      const kvmi = enabled(vcpu, "DESCRIPTOR");
      if (kvmi === undefined) return "continue";
      return toExitAction(await kvmi.sendEvent("DESCRIPTOR", { descriptor, write: write ? 1 : 0 }));
    },

    async pageFault(vcpu, gva, gpa, access): Promise<ExitAction> {
      // Without the PF event the restriction has no listener and KVM lets the access through.
      const kvmi = enabled(vcpu, "PF");
      if (kvmi === undefined) return "continue";
      // kvmi-v7's PF names the EPT view the fault happened in: always the default view here (no
      // EPTP switching, as in the arch's `view`). Layouts without the field ignore it.
      return toExitAction(await kvmi.sendEvent("PF", { gva, gpa, access, view: 0 }));
    },

    async hypercall(vcpu): Promise<HypercallReply> {
      const kvmi = enabled(vcpu, "HYPERCALL");
      if (kvmi === undefined) return { action: "continue", consumed: false };
      const outcome = await kvmi.sendEvent("HYPERCALL", undefined);
      return { action: toNotifyAction(outcome), consumed: true };
    },

    async cpuid(vcpu, fn, index, insnLen): Promise<ExitAction> {
      // kvmi-v7 only: a dialect without the event never has it enabled (eventId is undefined).
      const kvmi = enabled(vcpu, "CPUID");
      if (kvmi === undefined) return "continue";
      return toExitAction(await kvmi.sendEvent("CPUID", { function: fn, index, insn_length: insnLen }));
    },

    async singleStep(vcpu, failed): Promise<NotifyAction> {
      const kvmi = lookup(vcpu.index);
      if (kvmi === undefined || !kvmi.singlestep) return "continue";
      return toNotifyAction(await kvmi.sendEvent("SINGLESTEP", { failed: failed ? 1 : 0 }));
    },
  };
}
