// SPDX-License-Identifier: Apache-2.0
/**
 * The two per-VM allow bitmaps the device manager controls through KVM_INTROSPECTION_COMMAND and
 * KVM_INTROSPECTION_EVENT (kvmi-abi §2.4, §9). The tool can only query them (CHECK_COMMAND/EVENT).
 */
import { KVM_EINVAL, KVM_EPERM } from "../../wire/dialects/errno.js";
import type { Dialect } from "../../wire/dialect.js";

/** Linux errno returned by the ioctl, or 0. Same numbers as KVM_E* for the ones used here. */
export type IoctlResult = 0 | typeof KVM_EINVAL | typeof KVM_EPERM;

/** Validates a `kvm_introspection_feature` (EINVAL: id < -1, id ≥ limit, allow > 1; kvmi-abi §2.4). */
export function validateFeature(allow: number, id: number, limit: number): IoctlResult {
  return id < -1 || id >= limit || allow > 1 || allow < 0 ? KVM_EINVAL : 0;
}

/** The allow masks of one hooked VM. */
export class AllowMasks {
  private commands: Set<number>;
  private events = new Set<number>();
  private readonly alwaysAllowed: ReadonlySet<number>;

  constructor(private readonly dialect: Dialect) {
    this.alwaysAllowed = new Set(dialect.commands.filter((c) => c.alwaysAllowed).map((c) => c.id));
    // At hook time only GET_VERSION, VM_CHECK_COMMAND and VM_CHECK_EVENT are allowed (kvmi-abi §2.5).
    this.commands = new Set(this.alwaysAllowed);
  }

  /**
   * KVM_INTROSPECTION_COMMAND after argument validation. Disallowing an always-allowed command
   * one by one is EPERM; "disallow all" resets to the always-allowed set; "allow all" sets every
   * bit, including bit 0 (kvmi-abi §9 quirk).
   */
  setCommand(allow: number, id: number): IoctlResult {
    if (id === -1) {
      this.commands = allow === 1 ? new Set(range(this.dialect.numMessages)) : new Set(this.alwaysAllowed);
      return 0;
    }
    if (allow === 1) {
      this.commands.add(id);
      return 0;
    }
    if (this.alwaysAllowed.has(id)) return KVM_EPERM;
    this.commands.delete(id);
    return 0;
  }

  /** KVM_INTROSPECTION_EVENT after argument validation. */
  setEvent(allow: number, id: number): IoctlResult {
    if (id === -1) {
      this.events = allow === 1 ? new Set(range(this.dialect.numEvents)) : new Set();
      return 0;
    }
    if (allow === 1) this.events.add(id);
    else this.events.delete(id);
    return 0;
  }

  isCommandAllowed(id: number): boolean {
    return this.commands.has(id);
  }

  isEventAllowed(id: number): boolean {
    return this.events.has(id);
  }
}

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}
