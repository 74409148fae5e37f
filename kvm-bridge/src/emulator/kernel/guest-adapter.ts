// SPDX-License-Identifier: Apache-2.0
/**
 * Presents the guest model as the narrow {@link GuestPort} the emulated kernel uses: the same
 * reach real KVM has into `struct kvm` and `struct kvm_vcpu`, and nothing more.
 */
import type { Guest } from "../guest/guest.js";
import type { Vcpu } from "../guest/vcpu.js";
import type { GuestPort, VcpuPort } from "./guest-port.js";

function vcpuPort(guest: Guest, vcpu: Vcpu): VcpuPort {
  const { state } = vcpu;
  return {
    index: vcpu.index,
    get initialized() {
      return state.initialized;
    },
    get running() {
      return vcpu.runState === "running";
    },
    getRegs: () => ({ ...state.regs }),
    setRegs: (regs) => {
      state.regs = regs;
    },
    getSregs: () => state.sregs,
    mode: () => state.mode(),
    readMsr: (index) => state.msrs.read(index),
    cpuid: (fn, index) => state.cpuid.get(fn, index),
    xcr0: () => state.xsave.xcr0,
    getXsave: () => state.xsave.getArea(),
    setXsave: (region) => state.xsave.setArea(region).ok,
    mtrrType: (gpa) => state.mtrrType(gpa),
    tscHz: () => state.tscHz,
    translate: (gva) => vcpu.translateGva(gva) ?? undefined,
    queueException: (vector, errorCode, address) => {
      vcpu.queueException({ nr: vector, error_code: errorCode, address });
    },
    pendingException: () => {
      const pending = state.pendingException;
      return pending === null ? undefined : { vector: pending.nr, errorCode: pending.error_code, address: pending.address };
    },
    setSinglestep: (enabled) => {
      state.singlestep = enabled;
    },
    kick: () => vcpu.kick(),
    onResume: (listener) => guest.onLifecycle((event) => event.type === "resumed" && listener()),
  };
}

/** Wraps a guest for the emulated kernel. */
export function createGuestPort(guest: Guest): GuestPort {
  const { memory } = guest;
  return {
    vcpus: guest.vcpus.map((vcpu) => vcpuPort(guest, vcpu)),
    readPhysical: (gpa, size) => {
      const inOneSlot = memory.peek(gpa, size);
      if (inOneSlot !== undefined) return inOneSlot;
      const result = memory.read(gpa, size);
      return result.ok ? result.bytes : undefined;
    },
    writePhysical: (gpa, data) => memory.write(gpa, data).ok,
    maxGfn: () => memory.maxGfn(),
    isGfnVisible: (gfn) => memory.isMapped(gfn),
    setPageAccess: (gfn, access) => {
      memory.setPageAccess(gfn, access);
    },
    pageAccess: (gfn) => memory.restrictions().get(gfn) ?? 7,
    clearPageAccess: () => memory.clearAllRestrictions(),
    crash: (reason) => guest.crash(reason),
  };
}
