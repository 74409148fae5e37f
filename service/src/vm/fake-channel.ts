// SPDX-License-Identifier: Apache-2.0
/**
 * TEST-ONLY: a KVMI channel without a socket, for the unit tests of `HookLedger` and `VmHost`. It
 * records every command and event reply the code under test sends, answers commands with a
 * handler the test chooses (default: an empty success), delivers events to the sink the host set,
 * and closes like the real channel (every close listener gets a KvmiTransportError).
 */
import { KvmiRemoteError, KvmiTransportError } from "@kvmi/kvm-bridge";
import type { KvmiChannel, KvmiEvent, VmRecord, VmRegistry } from "@kvmi/kvm-bridge";
import type { Dialect } from "@kvmi/kvm-bridge/wire";
import { v9, V9_COMMANDS, V9_EVENTS } from "@kvmi/kvm-bridge/wire";

/** One command as the fake channel received it. */
export interface SentCommand {
  readonly name: string;
  readonly request: Record<string, unknown>;
  readonly vcpu: number | undefined;
}

/** One event reply as the fake channel received it. */
export interface SentReply {
  readonly event: string;
  readonly vcpu: number;
  readonly seq: number;
  readonly action: number;
  readonly data: Record<string, unknown> | undefined;
}

type Answer = (command: SentCommand) => unknown;

/** The v9 kernel name of a command op (`READ_PHYSICAL` -> `KVMI_VM_READ_PHYSICAL`). */
function v9NameOf(op: string): string {
  const spec = Object.values(V9_COMMANDS).find((c) => c.op === op);
  if (spec === undefined) throw new Error(`no v9 command has op ${op}`);
  return spec.name;
}

/** A KVMI channel that talks to no kernel. */
export class FakeChannel {
  readonly commands: SentCommand[] = [];
  readonly replies: SentReply[] = [];
  /** How commands are answered: return the reply, or throw (e.g. a KvmiRemoteError). */
  answer: Answer = () => ({});
  private open = true;
  private sink: ((event: KvmiEvent) => boolean) | undefined;
  private readonly closeListeners: Array<(err: KvmiTransportError) => void> = [];
  private seq = 0;

  /**
   * @param dialect - the kernel's dialect table (v9 by default, whose requests the service's mapping
   *   builds unchanged); a test gives another to check that limits and ids come from the VM's own table.
   */
  constructor(readonly dialect: Dialect = v9) {}

  get isOpen(): boolean {
    return this.open;
  }

  setEventSink(sink: (event: KvmiEvent) => boolean): void {
    this.sink = sink;
  }

  onClose(listener: (err: KvmiTransportError) => void): void {
    this.closeListeners.push(listener);
  }

  /** Takes the dialect-neutral op, as KvmiChannel does, and records the v9 kernel name. */
  async command(op: string, request: Record<string, unknown>, vcpu?: number): Promise<unknown> {
    const name = v9NameOf(op);
    if (!this.open) throw new KvmiTransportError("the channel is closed", { command: name });
    const sent = { name, request, vcpu };
    this.commands.push(sent);
    await Promise.resolve();
    return this.answer(sent);
  }

  async commandBatch(op: string, requests: readonly Record<string, unknown>[], vcpu?: number): Promise<unknown[]> {
    return Promise.all(requests.map((r) => this.command(op, r, vcpu).catch((err: unknown) => err as Error)));
  }

  async replyEvent(event: Pick<KvmiEvent, "seq" | "vcpu" | "spec">, action: number, data?: Record<string, unknown>): Promise<void> {
    if (!this.open) throw new KvmiTransportError("the channel is closed");
    this.replies.push({ event: event.spec.name, vcpu: event.vcpu, seq: event.seq, action, data });
  }

  close(reason: string): void {
    if (!this.open) return;
    this.open = false;
    const err = new KvmiTransportError(reason);
    for (const listener of this.closeListeners.splice(0)) listener(err);
  }

  /** Delivers an event as the kernel would send it; returns what the sink answered. */
  emit(name: keyof typeof V9_EVENTS, vcpu: number, payload?: Record<string, unknown>, arch: Record<string, unknown> = {}): KvmiEvent {
    const event: KvmiEvent = {
      seq: ++this.seq,
      vcpu,
      kind: V9_EVENTS[name].kind,
      spec: V9_EVENTS[name],
      arch,
      payload,
      receivedAt: process.hrtime.bigint(),
      receivedAtMs: Date.now(),
    };
    this.sink?.(event);
    return event;
  }

  /** The commands sent so far with `name`, in order. */
  sent(name: string): SentCommand[] {
    return this.commands.filter((c) => c.name === name);
  }

  /** This fake as the channel type the code under test takes. */
  get asChannel(): KvmiChannel {
    return this as unknown as KvmiChannel;
  }
}

/** A registry holding one VM record, recording the state changes the host makes. */
export function fakeRegistry(uuid: string): VmRegistry & { readonly states: string[]; readonly updates: number } {
  let record: VmRecord = {
    uuid,
    name: "unit",
    startTime: 1n,
    vcpuCount: 2,
    variant: "base",
    dialect: "v9",
    kvmiVersion: 1,
    singlestep: true,
    state: "hooked",
    generation: 1,
    hookedAt: new Date(),
    unhookEventEnabled: true,
    peer: "unit",
  } as VmRecord;
  const states: string[] = [];
  let updates = 0;
  return {
    states,
    get updates() {
      return updates;
    },
    admit: () => Promise.reject(new Error("not used")),
    get: (id) => (id === uuid ? record : undefined),
    channel: () => undefined,
    expect: () => {
      throw new Error("not used");
    },
    list: () => [record],
    update: (id, patch) => {
      if (id !== uuid) return undefined;
      updates++;
      record = { ...record, ...patch };
      if (patch.state !== undefined) states.push(patch.state);
      return record;
    },
    watch: () => () => undefined,
  };
}

/** An answer handler that fails `name` with errno `errno` and answers everything else with `{}`. */
export function failing(name: string, errno: number): Answer {
  return (c) => {
    if (c.name === name) throw new KvmiRemoteError(errno, { command: name });
    return {};
  };
}
