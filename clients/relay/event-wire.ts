// SPDX-License-Identifier: Apache-2.0
/**
 * kvmi.v1 events as the tool's dialect carries them: the dialect-neutral kind of each SDK event
 * type and its payload in the field names every dialect table uses (docs/decisions/0010-dialect-model.md).
 */
import type { Regs, Sregs, EventMsrs, VcpuEvent } from "@kvmi/clients";
import type { EventKind } from "@kvmi/kvm-bridge/codec";

/** SDK event type -> dialect-neutral kind. */
export const KIND_BY_TYPE: Readonly<Record<VcpuEvent["type"], EventKind>> = {
  breakpoint: "BREAKPOINT",
  pageFault: "PF",
  descriptor: "DESCRIPTOR",
  cr: "CR",
  msr: "MSR",
  singleStep: "SINGLESTEP",
  pauseVcpu: "PAUSE_VCPU",
  trap: "TRAP",
  hypercall: "HYPERCALL",
  xsetbv: "XSETBV",
  cpuid: "CPUID",
};

/** The dialect-neutral payload of an SDK event (EventPayloads); PF and TRAP in v9's names. */
export function payloadOf(event: VcpuEvent): Record<string, unknown> | undefined {
  switch (event.type) {
    case "breakpoint":
      return { gpa: event.gpa, insn_len: event.insnLen };
    case "pageFault":
      return { gva: event.gva, gpa: event.gpa, access: event.access, view: 0 };
    case "descriptor":
      return { descriptor: event.descriptor, write: event.write ? 1 : 0 };
    case "cr":
      return { cr: event.cr, old_value: event.oldValue, new_value: event.newValue };
    case "msr":
      return { msr: event.msr, old_value: event.oldValue, new_value: event.newValue };
    case "singleStep":
      return { failed: event.failed ? 1 : 0 };
    case "trap":
      return { nr: event.vector, error_code: event.errorCode, address: event.address };
    case "xsetbv":
      return { xcr: event.xcr, old_value: event.oldValue, new_value: event.newValue };
    case "cpuid":
      return { function: event.function, index: event.index, insn_length: event.insnLength };
    default:
      return undefined;
  }
}

/** The all-zero vCPU state of a VM event (UNHOOK) where the dialect sends a common part. */
export const ZERO_ARCH: { mode: number; regs: Regs; sregs: Sregs; msrs: EventMsrs } = {
  mode: 0,
  regs: undefined as never,
  sregs: undefined as never,
  msrs: undefined as never,
};
