// SPDX-License-Identifier: Apache-2.0
/**
 * The VMs this bridge knows, by UUID: identity from the handshake, what the kernel said at hook
 * time, lifecycle state, and a generation that increases each time the same VM hooks again (a
 * reconnect after a guest reset, a QEMU restart, a resume), so clients can tell a fresh hook from
 * the one they were talking to.
 */
import { KvmiProtocolError, KvmiRemoteError } from "../errors.js";
import type { Logger } from "../logger.js";
import { silentLogger } from "../logger.js";
import { eventByKind } from "../wire/dialect.js";
import type { CommandOp, EventKind } from "../wire/ops.js";
import type { E820Entry, HandshakeVariant } from "../wire/handshake.js";
import type { KvmiChannel } from "./channel.js";
import type { AcceptedVm, VmOrigin } from "./listener.js";

/** Lifecycle of a VM in the registry. */
export type VmState =
  | "hooked"
  /** UNHOOK announced: the controller is removing its hooks before the deadline. */
  | "unhook-pending"
  /** The bridge is undoing what is left and closing the socket. */
  | "releasing"
  | "unhooked"
  /** Announced by its forwarder ({@link VmRegistry.expect}); QEMU has not connected yet. */
  | "awaiting-connection"
  /** Announced, and QEMU did not connect before the deadline; `problem` says why. */
  | "not-connected";

/** A VM as the registry knows it (immutable snapshot; a new one is made on every change). */
export interface VmRecord {
  readonly uuid: string;
  readonly name: string;
  /** Seconds since the epoch, from the handshake (changes on guest reset). */
  readonly startTime: bigint;
  readonly vcpuCount: number;
  readonly variant: HandshakeVariant;
  readonly dialect: string;
  readonly kvmiVersion: number;
  /**
   * The kernel can single-step (GET_VERSION features; false in kvmi-v7, whose features do not
   * report it; ask CHECK_COMMAND there).
   */
  readonly singlestep: boolean;
  /**
   * The commands (ops) and events (kinds) this VM really offers: those of its dialect's table that
   * the kernel accepted with CHECK_COMMAND / CHECK_EVENT at hook time (the device manager's allow
   * masks, docs/protocol/), in table order.
   */
  readonly commands: readonly CommandOp[];
  readonly events: readonly EventKind[];
  readonly state: VmState;
  /** 1 on the first hook, +1 on every later hook of the same UUID. */
  readonly generation: number;
  readonly maxGpa?: bigint;
  readonly cpuType?: number;
  readonly e820?: readonly E820Entry[];
  readonly hookedAt: Date;
  /** When the UNHOOK event arrived, with the deadline the bridge honours. */
  readonly unhookDeadline?: Date;
  /** The UNHOOK event could be enabled (it is allowed by the device manager). */
  readonly unhookEventEnabled: boolean;
  readonly peer: string;
  /** The workload (KubeVirt VMI) this VM belongs to, from its forwarder. */
  readonly origin?: VmOrigin;
  /** Why the VM is `not-connected`. */
  readonly problem?: string;
}

/** A VM a forwarder announced before its QEMU connects ({@link VmRegistry.expect}). */
export interface VmExpectation {
  /** The UUID QEMU will send in its handshake (KubeVirt: the domain's `<uuid>`). */
  readonly uuid: string;
  /** Display name until the handshake brings QEMU's `-name`. */
  readonly name: string;
  readonly origin?: VmOrigin;
  /** How long QEMU has to connect before the VM is reported `not-connected`. */
  readonly deadlineMs: number;
  /** What `problem` says when the deadline passes. */
  readonly problem: string;
  /** Who announced it, for logs. */
  readonly peer: string;
}

/** A change, in the order it happened. */
export interface VmChange {
  readonly type: "hooked" | "rehooked" | "unhooked" | "state";
  readonly vm: VmRecord;
}

/** A hooked VM: its record and its channel. */
export interface HookedVm {
  readonly record: VmRecord;
  readonly channel: KvmiChannel;
}

/** Options of {@link createVmRegistry}. */
export interface VmRegistryOptions {
  readonly logger?: Logger;
  /** Unhooked VMs remembered for listing, oldest forgotten first. Default 1000. */
  readonly maxRemembered?: number;
  /** Deadline of the hook-time commands. Default 10 s. */
  readonly hookTimeoutMs?: number;
}

/** The registry. */
export interface VmRegistry {
  /** Admits a VM after its handshake: asks its version and vCPU count and enables UNHOOK. */
  admit(accepted: AcceptedVm): Promise<HookedVm>;
  get(uuid: string): VmRecord | undefined;
  /** The channel of a hooked VM. */
  channel(uuid: string): KvmiChannel | undefined;
  list(): VmRecord[];
  /** Records a state change (e.g. UNHOOK received, with its deadline). */
  update(uuid: string, patch: Partial<Pick<VmRecord, "state" | "unhookDeadline" | "origin" | "problem">>): VmRecord | undefined;
  /** Subscribes to changes; returns the unsubscribe function. */
  watch(listener: (change: VmChange) => void): () => void;
  /**
   * Lists a VM before its QEMU connects, so that a VM whose KVMI arguments were lost (another hook
   * dropped them, a QEMU without introspection) shows up as `not-connected` with the reason
   * instead of not at all. A VM already known keeps its state and only learns its origin.
   * @param onMissed called once if the deadline passes without a connection.
   * @throws RangeError when `maxRemembered` announced VMs are awaiting their QEMU already.
   */
  expect(expectation: VmExpectation, onMissed?: (record: VmRecord) => void): VmRecord;
}

/**
 * Asks the kernel, one CHECK_COMMAND / CHECK_EVENT per table entry (sent together), which commands
 * and events it allows. A refusal (ENOENT, EPERM) leaves the entry out; any other failure (the
 * socket closed, a deadline) fails the hook. Always-allowed commands need no check.
 */
async function offeredByKernel(channel: KvmiChannel, timeoutMs: number): Promise<{ commands: CommandOp[]; events: EventKind[] }> {
  const allowed = async (ask: () => Promise<unknown>): Promise<boolean> => {
    try {
      await ask();
      return true;
    } catch (err) {
      if (err instanceof KvmiRemoteError) return false;
      throw err;
    }
  };
  const { commands: commandSpecs, events: eventSpecs } = channel.dialect;
  const [commandOk, eventOk] = await Promise.all([
    Promise.all(
      commandSpecs.map((spec) =>
        spec.alwaysAllowed ? true : allowed(() => channel.command("CHECK_COMMAND", { id: spec.id }, undefined, { timeoutMs })),
      ),
    ),
    Promise.all(eventSpecs.map((spec) => allowed(() => channel.command("CHECK_EVENT", { id: spec.id }, undefined, { timeoutMs })))),
  ]);
  return {
    commands: commandSpecs.filter((_, i) => commandOk[i]).map((spec) => spec.op),
    events: eventSpecs.filter((_, i) => eventOk[i]).map((spec) => spec.kind),
  };
}

/** Creates an empty registry. */
export function createVmRegistry(options: VmRegistryOptions = {}): VmRegistry {
  return new Registry(options);
}

class Registry implements VmRegistry {
  private readonly records = new Map<string, VmRecord>();
  private readonly channels = new Map<string, KvmiChannel>();
  private readonly generations = new Map<string, number>();
  private readonly listeners = new Set<(change: VmChange) => void>();
  private readonly deadlines = new Map<string, NodeJS.Timeout>();
  private readonly log: Logger;

  constructor(private readonly options: VmRegistryOptions) {
    this.log = options.logger ?? silentLogger;
  }

  async admit(accepted: AcceptedVm): Promise<HookedVm> {
    const { identity, channel, peer } = accepted;
    const timeoutMs = this.options.hookTimeoutMs ?? 10_000;
    // What libkvmi does right after the handshake (kvmi-abi §2.2 step 7).
    const version = await channel.command("GET_VERSION", {}, undefined, { timeoutMs });
    const info = await channel.command("GET_VM_INFO", {}, undefined, { timeoutMs });
    // Enable UNHOOK so that PREUNHOOK always reaches us (and through us the remote controller).
    let unhookEventEnabled = false;
    const unhook = eventByKind(channel.dialect, "UNHOOK");
    if (unhook !== undefined) {
      try {
        await channel.command("CONTROL_VM_EVENTS", { event_id: unhook.id, enable: 1 }, undefined, { timeoutMs });
        unhookEventEnabled = true;
      } catch (err) {
        if (!(err instanceof KvmiRemoteError)) throw err;
        this.log.warn({ vm: identity.uuid, errno: err.errno }, "UNHOOK event not allowed; unhook will not be announced");
      }
    }
    const { commands, events } = await offeredByKernel(channel, timeoutMs);
    const previous = this.channels.get(identity.uuid);
    if (previous !== undefined && previous !== channel) previous.close("the VM hooked again on a new connection");
    const earlier = this.records.get(identity.uuid);
    const origin = accepted.origin ?? earlier?.origin;
    clearTimeout(this.deadlines.get(identity.uuid));
    this.deadlines.delete(identity.uuid);
    const generation = (this.generations.get(identity.uuid) ?? 0) + 1;
    this.generations.set(identity.uuid, generation);
    const record: VmRecord = {
      uuid: identity.uuid,
      name: identity.name,
      startTime: identity.startTime,
      vcpuCount: info.vcpu_count,
      variant: identity.variant,
      dialect: channel.dialect.name,
      kvmiVersion: version.version,
      singlestep: version.features.singlestep === 1,
      commands,
      events,
      state: "hooked",
      generation,
      ...(identity.maxGpa !== undefined && { maxGpa: identity.maxGpa }),
      ...(identity.cpuType !== undefined && { cpuType: identity.cpuType }),
      ...(identity.e820 !== undefined && { e820: identity.e820 }),
      hookedAt: new Date(),
      unhookEventEnabled,
      peer,
      ...(origin && { origin }),
    };
    this.records.delete(identity.uuid);
    this.records.set(identity.uuid, record);
    this.channels.set(identity.uuid, channel);
    this.forgetOld();
    channel.onClose(() => {
      if (this.channels.get(identity.uuid) !== channel) return;
      this.channels.delete(identity.uuid);
      const current = this.records.get(identity.uuid);
      if (current === undefined) return;
      const closed: VmRecord = { ...current, state: "unhooked" };
      this.records.set(identity.uuid, closed);
      this.emit({ type: "unhooked", vm: closed });
    });
    this.emit({ type: generation === 1 ? "hooked" : "rehooked", vm: record });
    return { record, channel };
  }

  get(uuid: string): VmRecord | undefined {
    return this.records.get(uuid);
  }

  channel(uuid: string): KvmiChannel | undefined {
    return this.channels.get(uuid);
  }

  list(): VmRecord[] {
    return [...this.records.values()].sort((a, b) => a.uuid.localeCompare(b.uuid));
  }

  update(uuid: string, patch: Partial<Pick<VmRecord, "state" | "unhookDeadline" | "origin" | "problem">>): VmRecord | undefined {
    const current = this.records.get(uuid);
    if (current === undefined) return undefined;
    const next: VmRecord = { ...current, ...patch };
    this.records.set(uuid, next);
    this.emit({ type: "state", vm: next });
    return next;
  }

  expect(expectation: VmExpectation, onMissed?: (record: VmRecord) => void): VmRecord {
    const { uuid } = expectation;
    const known = this.records.get(uuid);
    if (known !== undefined && known.state !== "unhooked" && known.state !== "not-connected") {
      if (expectation.origin === undefined || known.origin !== undefined) return known;
      return this.update(uuid, { origin: expectation.origin })!;
    }
    // Announcements are peer input: at most maxRemembered may wait at once, so that no forwarder
    // can make the registry grow without bound (they stay up to their deadline).
    let awaiting = 0;
    for (const r of this.records.values()) if (r.state === "awaiting-connection") awaiting++;
    if (awaiting >= (this.options.maxRemembered ?? 1000)) throw new KvmiProtocolError(`${awaiting} announced VMs are awaiting their QEMU already`);
    const record: VmRecord = {
      uuid,
      name: known?.name ?? expectation.name,
      startTime: known?.startTime ?? 0n,
      vcpuCount: known?.vcpuCount ?? 0,
      // Until a handshake: the service shows generation 0 as HANDSHAKE_VARIANT_NONE.
      variant: known?.variant ?? "base",
      dialect: known?.dialect ?? "",
      kvmiVersion: known?.kvmiVersion ?? 0,
      singlestep: known?.singlestep ?? false,
      state: "awaiting-connection",
      generation: this.generations.get(uuid) ?? 0,
      hookedAt: known?.hookedAt ?? new Date(0),
      unhookEventEnabled: false,
      peer: expectation.peer,
      commands: known?.commands ?? [],
      events: known?.events ?? [],
      ...((expectation.origin ?? known?.origin) && { origin: expectation.origin ?? known!.origin! }),
    };
    this.records.delete(uuid);
    this.records.set(uuid, record);
    this.forgetOld();
    clearTimeout(this.deadlines.get(uuid));
    const timer = setTimeout(() => {
      this.deadlines.delete(uuid);
      if (this.records.get(uuid)?.state !== "awaiting-connection") return;
      const missed = this.update(uuid, { state: "not-connected", problem: expectation.problem })!;
      this.log.warn({ vm: uuid, origin: missed.origin, problem: expectation.problem }, "QEMU did not connect before the deadline");
      onMissed?.(missed);
    }, expectation.deadlineMs);
    timer.unref();
    this.deadlines.set(uuid, timer);
    this.emit({ type: "state", vm: record });
    return record;
  }

  watch(listener: (change: VmChange) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private emit(change: VmChange): void {
    for (const listener of this.listeners) {
      try {
        listener(change);
      } catch (err) {
        this.log.error({ err }, "VM watcher failed");
      }
    }
  }

  /** Keeps memory bounded: unhooked VMs beyond the limit are forgotten, oldest first. */
  private forgetOld(): void {
    const limit = this.options.maxRemembered ?? 1000;
    for (const [uuid, record] of this.records) {
      if (this.records.size <= limit) break;
      if (record.state === "unhooked" || record.state === "not-connected") {
        this.records.delete(uuid);
        this.generations.delete(uuid);
      }
    }
  }
}
