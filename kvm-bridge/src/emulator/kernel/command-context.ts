// SPDX-License-Identifier: Apache-2.0
/** What command handlers of the emulated kernel see of the VM (kvmi-abi §4). */
import type { Dialect } from "../../wire/dialect.js";
import type { DecodedCommand } from "../../wire/message.js";
import type { AllowMasks } from "./allow-masks.js";
import type { GuestPort, HostFeatures, MaybePromise } from "./guest-port.js";
import { isPromise } from "./guest-port.js";
import type { VcpuIntrospection } from "./vcpu-introspection.js";

/** A handler's answer: a positive KVM errno, or 0 with the reply data. */
export type CommandResult = { readonly err: 0; readonly value: Record<string, unknown> } | { readonly err: number };

/** Success with reply data (or an empty body). */
export const ok = (value: Record<string, unknown> = {}): CommandResult => ({ err: 0, value });
/** Failure with a positive KVM errno. */
export const fail = (err: number): CommandResult => ({ err });

/** The per-VM view a handler works with. */
export interface KernelContext {
  readonly dialect: Dialect;
  readonly guest: GuestPort;
  readonly features: HostFeatures;
  masks(): AllowMasks;
  /** Enabled VM-scoped events (only UNHOOK in v9). */
  vmEvents(): Set<number>;
  setCleanup(enable: boolean): void;
  vcpuCount(): number;
  vcpu(index: number): VcpuIntrospection | undefined;
}

/**
 * A VM-scoped handler, run on the receive thread. `raw` is the undecoded body. A promise (a guest
 * behind QEMU) holds the receive thread until it settles, as the kernel's thread blocks on a command.
 */
export type VmCommandHandler = (ctx: KernelContext, cmd: DecodedCommand, raw: Uint8Array) => MaybePromise<CommandResult>;
/** A vCPU-scoped handler, run as a job on the target vCPU (or on the receive thread for VCPU_PAUSE). */
export type VcpuCommandHandler = (ctx: KernelContext, cmd: DecodedCommand, vcpu: VcpuIntrospection) => MaybePromise<CommandResult>;

/** Applies `map` to a port answer now or when it arrives (no promise on the synchronous path). */
export function whenReady<T>(value: MaybePromise<T>, map: (value: T) => CommandResult): MaybePromise<CommandResult> {
  return isPromise(value) ? value.then(map) : map(value);
}
