// SPDX-License-Identifier: Apache-2.0
/**
 * VmHost against a fake channel (no socket): the controller check of every command the facts
 * table marks as changing the guest, sessions, events answered by the controller or by the bridge
 * (no controller, deadline, controller gone, unhook), the hook ledger undone on release, and a
 * closed channel ending every session.
 */
import { silentLogger } from "@kvmi/kvm-bridge";
import { KvmiRemoteError } from "@kvmi/kvm-bridge";
import type { KvmiEvent, KvmiTransportError } from "@kvmi/kvm-bridge";
import { V9_COMMANDS, v9Ids } from "@kvmi/kvm-bridge/wire";
import type { V9CommandName } from "@kvmi/kvm-bridge/wire";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { BridgeError } from "../mapping/bridge-error.js";
import { MUTATING_COMMANDS } from "../mapping/command-facts.js";
import { FakeChannel, fakeRegistry } from "./fake-channel.js";
import { VmHost } from "./vm-host.js";
import type { SessionSink, UnhookCause, VmHostOptions } from "./vm-host.js";

const UUID = "5f0e3c52-1111-4b8e-9a57-0b7c1f7e2a10";
const CONTINUE = 0;
const RETRY = 1;

let channel: FakeChannel;
let registry: ReturnType<typeof fakeRegistry>;

function host(options: Partial<VmHostOptions> = {}): VmHost {
  return new VmHost(registry, channel.asChannel, registry.get(UUID)!, {
    eventDeadlineMs: 10_000,
    unhookDeadlineMs: 10_000,
    controllerGonePolicy: "release",
    logger: silentLogger,
    ...options,
  });
}

/** A session sink that keeps what it was told; `accept` false plays a client that cannot keep up. */
class RecordingSink implements SessionSink {
  readonly events: Array<{ event: KvmiEvent; deadline: Date | undefined }> = [];
  readonly unhooks: Array<{ deadline: Date; cause: UnhookCause }> = [];
  ended: Error | undefined;
  constructor(private readonly accept = true) {}
  event(event: KvmiEvent, deadline: Date | undefined): boolean {
    this.events.push({ event, deadline });
    return this.accept;
  }
  unhook(deadline: Date, cause: UnhookCause): void {
    this.unhooks.push({ deadline, cause });
  }
  end(error: Error): void {
    this.ended = error;
  }
}

beforeEach(() => {
  channel = new FakeChannel();
  registry = fakeRegistry(UUID);
});

afterEach(() => {
  vi.useRealTimers();
});

const settled = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe("VmHost: who may run a command", () => {
  const all = Object.keys(V9_COMMANDS) as V9CommandName[];

  it.each([...MUTATING_COMMANDS])("%s needs the controller's session, and nothing reaches the channel otherwise", async (name) => {
    const h = host();
    const controller = h.attach("controller", new RecordingSink());
    const observer = h.attach("observer", new RecordingSink());
    for (const sessionId of [undefined, observer.id, "no-such-session"]) {
      const err = await h.command(name, {} as never, 0, { sessionId }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(BridgeError);
      expect(err).toMatchObject({ code: "NOT_CONTROLLER" });
    }
    expect(channel.commands).toEqual([]);
    channel.answer = (c) => (c.name === "KVMI_VM_READ_PHYSICAL" ? { data: new Uint8Array(1) } : {});
    const body = name === "KVMI_VM_WRITE_PHYSICAL" ? { gpa: 0n, data: Uint8Array.of(1) } : name === "KVMI_VM_SET_PAGE_ACCESS" ? { entries: [] } : {};
    await h.command(name, body as never, 0, { sessionId: controller.id });
    expect(channel.sent(name)).toHaveLength(1);
  });

  it.each(all.filter((n) => !MUTATING_COMMANDS.has(n)))("%s runs for anyone, with or without a session", async (name) => {
    const h = host();
    await h.command(name, {} as never, 0, {});
    await h.command(name, {} as never, 0, { sessionId: "whoever" });
    expect(channel.sent(name)).toHaveLength(2);
  });

  it("refuses a mutating command in a batch", async () => {
    await expect(host().commandBatch("KVMI_VM_WRITE_PHYSICAL", [], undefined, {})).rejects.toThrow(/send it with command/);
  });

  it("reports a burst that fails midway per command: each page its own outcome, counted once per burst", async () => {
    // The third and fourth pages fail in the kernel (EINVAL), the others are read.
    channel.answer = ({ request }) => {
      const gpa = request["gpa"] as bigint;
      if (gpa === 0x3000n || gpa === 0x4000n) throw new KvmiRemoteError(22, { command: "KVMI_VM_READ_PHYSICAL" });
      return { data: new Uint8Array(4096).fill(Number(gpa >> 12n)) };
    };
    const bursts: Array<{ ok: number; errors: readonly unknown[] }> = [];
    const commands = vi.fn();
    const bytes: number[] = [];
    const metrics = { command: commands, commandBurst: (_: string, ok: number, errors: readonly unknown[]) => void bursts.push({ ok, errors }), bytesRead: (n: number) => void bytes.push(n) };
    const h = host({ metrics: metrics as never });
    const reads = [1n, 2n, 3n, 4n, 5n].map((page) => ({ gpa: page << 12n, size: 4096 }));
    const results = await h.commandBatch("KVMI_VM_READ_PHYSICAL", reads, undefined, {});
    expect(results.map((r) => (r instanceof Error ? (r as KvmiRemoteError).errno : (r as { data: Uint8Array }).data[0]))).toEqual([1, 2, 22, 22, 5]);
    expect(bursts).toHaveLength(1);
    expect(bursts[0]!.ok).toBe(3);
    expect(bursts[0]!.errors).toHaveLength(2);
    expect(commands).not.toHaveBeenCalled();
    expect(bytes).toEqual([3 * 4096]);
    // Metrics without commandBurst get one observation per command, as before.
    const perCommand = vi.fn();
    await host({ metrics: { command: perCommand, bytesRead: () => undefined } as never }).commandBatch("KVMI_VM_READ_PHYSICAL", reads, undefined, {});
    expect(perCommand).toHaveBeenCalledTimes(5);
    expect(perCommand.mock.calls.filter(([, error]) => error instanceof KvmiRemoteError)).toHaveLength(2);
  });

  it("keeps the UNHOOK event enabled: disabling it succeeds without reaching the kernel", async () => {
    const h = host();
    const controller = h.attach("controller", new RecordingSink());
    await h.command("KVMI_VM_CONTROL_EVENTS", { event_id: v9Ids.KVMI_EVENT_UNHOOK, enable: 0 }, undefined, { sessionId: controller.id });
    expect(channel.commands).toEqual([]);
    expect(h.hookLedger.isEmpty).toBe(true);
  });
});

describe("VmHost: sessions", () => {
  it("allows one controller and any number of observers", () => {
    const h = host();
    h.attach("controller", new RecordingSink());
    expect(() => h.attach("controller", new RecordingSink())).toThrow(expect.objectContaining({ code: "CONTROLLER_PRESENT" }));
    h.attach("observer", new RecordingSink());
    h.attach("observer", new RecordingSink());
    expect(h.sessions.map((s) => s.role)).toEqual(["controller", "observer", "observer"]);
  });

  it("reports the sessions of one turn in at most two registry changes: the first at once, the rest at the turn's end", async () => {
    const h = host();
    h.attach("controller", new RecordingSink());
    expect(registry.updates).toBe(1);
    const observers = Array.from({ length: 50 }, () => h.attach("observer", new RecordingSink()));
    expect(registry.updates).toBe(1);
    await settled();
    expect(registry.updates).toBe(2);
    await settled();
    for (const observer of observers.slice(1)) await h.detach(observer, "client gone");
    expect(registry.updates).toBe(3);
    await settled();
    expect(registry.updates).toBe(4);
    expect(h.sessions.map((s) => s.role)).toEqual(["controller", "observer"]);
    await settled();
    await settled();
    expect(registry.updates).toBe(4);
  });

  it("ends every session when the channel closes, and refuses new ones", () => {
    const h = host();
    const sinks = [new RecordingSink(), new RecordingSink()];
    h.attach("controller", sinks[0]!);
    h.attach("observer", sinks[1]!);
    channel.close("device manager disconnected");
    for (const sink of sinks) expect((sink.ended as KvmiTransportError).message).toBe("device manager disconnected");
    expect(h.sessions).toEqual([]);
    expect(() => h.attach("observer", new RecordingSink())).toThrow(expect.objectContaining({ code: "VM_UNHOOKING" }));
  });
});

describe("VmHost: events", () => {
  it("answers an event itself with CONTINUE when no controller is attached; observers still see it", async () => {
    const h = host();
    const observer = new RecordingSink();
    h.attach("observer", observer);
    const event = channel.emit("KVMI_EVENT_PAUSE_VCPU", 1);
    await settled();
    expect(observer.events.map((e) => e.event)).toEqual([event]);
    expect(observer.events[0]!.deadline).toBeUndefined();
    expect(channel.replies).toEqual([{ event: "KVMI_EVENT_PAUSE_VCPU", vcpu: 1, seq: event.seq, action: CONTINUE, data: undefined }]);
  });

  it("hands an event to the controller with a deadline, sends its reply once, then refuses a second one", async () => {
    const h = host({ eventDeadlineMs: 5000 });
    const sink = new RecordingSink();
    const controller = h.attach("controller", sink);
    const event = channel.emit("KVMI_EVENT_CR", 0, { cr: 3, old_value: 1n, new_value: 2n });
    expect(sink.events[0]!.deadline!.getTime()).toBeGreaterThan(Date.now() + 4000);
    expect(channel.replies).toEqual([]);
    await h.replyEvent(controller, 0, event.seq, { action: CONTINUE, replyData: { new_val: 7n } });
    expect(channel.replies).toEqual([{ event: "KVMI_EVENT_CR", vcpu: 0, seq: event.seq, action: CONTINUE, data: { new_val: 7n } }]);
    await expect(h.replyEvent(controller, 0, event.seq, { action: CONTINUE, replyData: undefined })).rejects.toMatchObject({ code: "EVENT_NOT_PENDING" });
    expect(channel.replies).toHaveLength(1);
  });

  it("answers at the deadline with the value the guest wrote", async () => {
    vi.useFakeTimers();
    const h = host({ eventDeadlineMs: 200, eventDeadlines: { KVMI_EVENT_CR: 50 } });
    h.attach("controller", new RecordingSink());
    channel.emit("KVMI_EVENT_CR", 1, { cr: 4, old_value: 0n, new_value: 0x20n });
    await vi.advanceTimersByTimeAsync(49);
    expect(channel.replies).toEqual([]);
    await vi.advanceTimersByTimeAsync(1);
    expect(channel.replies).toEqual([expect.objectContaining({ vcpu: 1, action: CONTINUE, data: { new_val: 0x20n } })]);
  });

  it("answers at once when the controller cannot keep up", async () => {
    const h = host();
    h.attach("controller", new RecordingSink(false));
    channel.emit("KVMI_EVENT_PAUSE_VCPU", 0);
    await settled();
    expect(channel.replies).toEqual([expect.objectContaining({ event: "KVMI_EVENT_PAUSE_VCPU", action: CONTINUE })]);
  });

  it("when the controller leaves, undoes its hooks first and answers a breakpoint it removed with RETRY", async () => {
    const h = host();
    const controller = h.attach("controller", new RecordingSink());
    channel.answer = (c) => (c.name === "KVMI_VM_READ_PHYSICAL" ? { data: Uint8Array.of(0x90) } : {});
    await h.command("KVMI_VM_WRITE_PHYSICAL", { gpa: 0x1000n, data: Uint8Array.of(0xcc) }, undefined, { sessionId: controller.id });
    await h.command("KVMI_VCPU_CONTROL_EVENTS", { event_id: v9Ids.KVMI_EVENT_BREAKPOINT, enable: 1 }, 0, { sessionId: controller.id });
    const event = channel.emit("KVMI_EVENT_BREAKPOINT", 0, { gpa: 0x1000n, insn_len: 1 });
    const before = channel.commands.length;
    await h.detach(controller, "client gone");
    const undo = channel.commands.slice(before);
    expect(undo.map((c) => c.name).sort()).toEqual(["KVMI_VCPU_CONTROL_EVENTS", "KVMI_VM_WRITE_PHYSICAL"]);
    expect(undo.find((c) => c.name === "KVMI_VM_WRITE_PHYSICAL")!.request).toEqual({ gpa: 0x1000n, data: Uint8Array.of(0x90) });
    expect(channel.replies).toEqual([{ event: "KVMI_EVENT_BREAKPOINT", vcpu: 0, seq: event.seq, action: RETRY, data: undefined }]);
    expect(h.hookLedger.isEmpty).toBe(true);
  });

  it("keeps the hooks when the controller leaves under the keep policy", async () => {
    const h = host({ controllerGonePolicy: "keep" });
    const controller = h.attach("controller", new RecordingSink());
    await h.command("KVMI_VCPU_CONTROL_CR", { cr: 3, enable: 1 }, 0, { sessionId: controller.id });
    await h.detach(controller, "client gone");
    expect(channel.sent("KVMI_VCPU_CONTROL_CR")).toHaveLength(1);
    expect(h.hookLedger.isEmpty).toBe(false);
  });
});

describe("VmHost: unhook", () => {
  it("on UNHOOK tells every session, waits for the controller, undoes its hooks and closes the channel", async () => {
    const h = host({ unhookDeadlineMs: 10_000 });
    const sink = new RecordingSink();
    const observer = new RecordingSink();
    const controller = h.attach("controller", sink);
    h.attach("observer", observer);
    await h.command("KVMI_VCPU_CONTROL_MSR", { msr: 0xc000_0082, enable: 1 }, 1, { sessionId: controller.id });
    channel.emit("KVMI_EVENT_UNHOOK", 0);
    expect(sink.unhooks).toEqual([expect.objectContaining({ cause: "device-manager" })]);
    expect(observer.unhooks).toEqual([expect.objectContaining({ cause: "device-manager" })]);
    expect(registry.states).toEqual(["unhook-pending"]);
    expect(h.isServing).toBe(false);
    // Commands still run while the unhook is only announced.
    expect(h.acceptsCommands).toBe(true);
    expect(channel.isOpen).toBe(true);
    await h.detach(controller, "released");
    await vi.waitFor(() => expect(channel.isOpen).toBe(false));
    expect(registry.states).toEqual(["unhook-pending", "releasing"]);
    expect(channel.sent("KVMI_VCPU_CONTROL_MSR").map((c) => c.request)).toEqual([
      { msr: 0xc000_0082, enable: 1 },
      { msr: 0xc000_0082, enable: 0 },
    ]);
    // The controller left on its own; the observer's session ends with the channel.
    expect(sink.ended).toBeUndefined();
    expect(observer.ended).toBeInstanceOf(Error);
  });

  it("without a controller releases at once, answering what waits with CONTINUE", async () => {
    const h = host();
    const done = h.release("operator");
    await done;
    expect(channel.isOpen).toBe(false);
    expect(h.acceptsCommands).toBe(false);
  });
});
