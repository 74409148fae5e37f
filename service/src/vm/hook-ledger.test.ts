// SPDX-License-Identifier: Apache-2.0
/**
 * HookLedger against a fake channel (no socket): what it records for each kind of change, what
 * its undo sends and in which order, memory originals captured once and forgotten when a tool puts
 * the bytes back, and failures that neither record nor stop the undo.
 */
import { KvmiRemoteError, KvmiTransportError } from "@kvmi/kvm-bridge";
import { errno, v9Ids, V9_COMMANDS } from "@kvmi/kvm-bridge/wire";
import type { V9CommandName, V9CommandRequest as CommandRequest } from "@kvmi/kvm-bridge/wire";
import { beforeEach, describe, expect, it } from "vitest";
import { FakeChannel } from "./fake-channel.js";
import { HookLedger } from "./hook-ledger.js";

const PAGE = 0x5000n;
const EVENT_CR = v9Ids.KVMI_EVENT_CR;
const EVENT_BREAKPOINT = v9Ids.KVMI_EVENT_BREAKPOINT;
const EVENT_UNHOOK = v9Ids.KVMI_EVENT_UNHOOK;
const MSR_LSTAR = 0xc000_0082;

let channel: FakeChannel;
let ledger: HookLedger;
/** Guest memory behind the fake channel: READ_PHYSICAL answers from it, WRITE_PHYSICAL changes it. */
let memory: Map<bigint, number>;

const byteAt = (gpa: bigint): number => memory.get(gpa) ?? 0;

beforeEach(() => {
  channel = new FakeChannel();
  ledger = new HookLedger();
  memory = new Map([0x10, 0x11, 0x12, 0x13].map((b, i) => [PAGE + BigInt(i), b]));
  channel.answer = (c) => {
    const r = c.request as { gpa?: bigint; size?: number; data?: Uint8Array };
    if (c.name === "KVMI_VM_READ_PHYSICAL") return { data: Uint8Array.from({ length: r.size! }, (_, i) => byteAt(r.gpa! + BigInt(i))) };
    if (c.name === "KVMI_VM_WRITE_PHYSICAL") r.data!.forEach((b, i) => memory.set(r.gpa! + BigInt(i), b));
    return {};
  };
});

/** Runs a controller command through the ledger, the way VmHost does. */
function run<N extends V9CommandName>(name: N, request: CommandRequest<N>, vcpu?: number): Promise<unknown> {
  return ledger.run(channel.asChannel, name, request, vcpu, () => channel.command(V9_COMMANDS[name].op, request as Record<string, unknown>, vcpu) as never);
}

/** What an undo sends, as `name vcpu request` lines, sorted (the order within a stage is free). */
function undoCommands(from: number): string[] {
  return channel.commands.slice(from).map((c) => `${c.name} ${c.vcpu ?? "-"} ${JSON.stringify(c.request, (_k, v: unknown) => (typeof v === "bigint" ? `0x${v.toString(16)}` : v instanceof Uint8Array ? [...v] : v))}`);
}

describe("HookLedger: recording", () => {
  it("starts empty and records every kind of interception and restriction", async () => {
    expect(ledger.isEmpty).toBe(true);
    await run("KVMI_VCPU_CONTROL_EVENTS", { event_id: EVENT_CR, enable: 1 }, 1);
    await run("KVMI_VCPU_CONTROL_CR", { cr: 3, enable: 1 }, 0);
    await run("KVMI_VCPU_CONTROL_MSR", { msr: MSR_LSTAR, enable: 1 }, 1);
    await run("KVMI_VCPU_CONTROL_SINGLESTEP", { enable: 1 }, 0);
    await run("KVMI_VM_SET_PAGE_ACCESS", { entries: [{ gpa: PAGE + 0x10n, access: 1, visible: 0 }] });
    await run("KVMI_VM_CONTROL_EVENTS", { event_id: EVENT_UNHOOK, enable: 0 });
    expect(ledger.isEmpty).toBe(false);
    const before = channel.commands.length;
    const report = await ledger.undo(channel.asChannel, 1000);
    expect(report).toEqual({ commands: 6, failures: 0, restoredBytes: 0 });
    expect(undoCommands(before).sort()).toEqual(
      [
        `KVMI_VCPU_CONTROL_EVENTS 1 {"event_id":${EVENT_CR},"enable":0}`,
        `KVMI_VCPU_CONTROL_CR 0 {"cr":3,"enable":0}`,
        `KVMI_VCPU_CONTROL_MSR 1 {"msr":${MSR_LSTAR},"enable":0}`,
        `KVMI_VCPU_CONTROL_SINGLESTEP 0 {"enable":0}`,
        // Page restrictions go back to full access, for the whole page.
        `KVMI_VM_SET_PAGE_ACCESS - {"entries":[{"gpa":"0x5000","access":7,"visible":0}]}`,
        // UNHOOK goes back to the bridge's baseline: enabled.
        `KVMI_VM_CONTROL_EVENTS - {"event_id":${EVENT_UNHOOK},"enable":1}`,
      ].sort(),
    );
    expect(ledger.isEmpty).toBe(true);
  });

  it("forgets a change the controller took back itself", async () => {
    await run("KVMI_VCPU_CONTROL_CR", { cr: 4, enable: 1 }, 0);
    await run("KVMI_VCPU_CONTROL_CR", { cr: 4, enable: 0 }, 0);
    await run("KVMI_VM_SET_PAGE_ACCESS", { entries: [{ gpa: PAGE, access: 0, visible: 0 }] });
    await run("KVMI_VM_SET_PAGE_ACCESS", { entries: [{ gpa: PAGE + 8n, access: 7, visible: 0 }] });
    await run("KVMI_VM_CONTROL_EVENTS", { event_id: EVENT_UNHOOK, enable: 0 });
    await run("KVMI_VM_CONTROL_EVENTS", { event_id: EVENT_UNHOOK, enable: 1 });
    expect(ledger.isEmpty).toBe(true);
  });

  it("records nothing for changes it cannot undo (pause, injection, registers)", async () => {
    await run("KVMI_VCPU_PAUSE", { wait: 0 }, 0);
    await run("KVMI_VCPU_INJECT_EXCEPTION", { nr: 3, error_code: 0, address: 0n }, 0);
    expect(ledger.isEmpty).toBe(true);
  });

  it("records nothing the kernel refused", async () => {
    channel.answer = () => {
      throw new KvmiRemoteError(errno.KVM_EINVAL, {});
    };
    await expect(run("KVMI_VCPU_CONTROL_CR", { cr: 8, enable: 1 }, 0)).rejects.toBeInstanceOf(KvmiRemoteError);
    expect(ledger.isEmpty).toBe(true);
  });
});

describe("HookLedger: guest memory", () => {
  it("captures the original bytes once, restores them on undo and reports what it put back", async () => {
    await run("KVMI_VM_WRITE_PHYSICAL", { gpa: PAGE + 1n, data: Uint8Array.of(0xcc) });
    await run("KVMI_VM_WRITE_PHYSICAL", { gpa: PAGE + 1n, data: Uint8Array.of(0xcd, 0xce) });
    // The second write covers a byte not seen before (+2), so its range is read again; +1 keeps the
    // original captured first (0x11), not the 0xcc the first write left.
    expect(channel.sent("KVMI_VM_READ_PHYSICAL").map((c) => c.request)).toEqual([
      { gpa: PAGE + 1n, size: 1 },
      { gpa: PAGE + 1n, size: 2 },
    ]);
    expect(ledger.modifiedBytes).toBe(2);
    expect([byteAt(PAGE + 1n), byteAt(PAGE + 2n)]).toEqual([0xcd, 0xce]);
    const report = await ledger.undo(channel.asChannel, 1000);
    expect(report).toEqual({ commands: 1, failures: 0, restoredBytes: 2 });
    expect([byteAt(PAGE), byteAt(PAGE + 1n), byteAt(PAGE + 2n), byteAt(PAGE + 3n)]).toEqual([0x10, 0x11, 0x12, 0x13]);
    expect(ledger.wasRestored(PAGE + 1n)).toBe(true);
    expect(ledger.wasRestored(PAGE + 3n)).toBe(false);
  });

  it("forgets bytes a tool put back itself (a breakpoint removed)", async () => {
    await run("KVMI_VM_WRITE_PHYSICAL", { gpa: PAGE + 2n, data: Uint8Array.of(0xcc) });
    expect(ledger.modifiedBytes).toBe(1);
    await run("KVMI_VM_WRITE_PHYSICAL", { gpa: PAGE + 2n, data: Uint8Array.of(0x12) });
    expect(ledger.modifiedBytes).toBe(0);
    expect(ledger.isEmpty).toBe(true);
  });

  it("lets a write to unbacked memory fail with its own error and records nothing", async () => {
    channel.answer = (c) => {
      throw new KvmiRemoteError(errno.KVM_ENOENT, { command: c.name });
    };
    await expect(run("KVMI_VM_WRITE_PHYSICAL", { gpa: 0x9_0000_0000n, data: Uint8Array.of(1) })).rejects.toMatchObject({
      errno: errno.KVM_ENOENT,
      context: { command: "KVMI_VM_WRITE_PHYSICAL" },
    });
    expect(ledger.isEmpty).toBe(true);
  });
});

describe("HookLedger: undo", () => {
  it("stops new events first: vCPU events and single-step are undone before anything else is sent", async () => {
    await run("KVMI_VCPU_CONTROL_CR", { cr: 0, enable: 1 }, 0);
    await run("KVMI_VCPU_CONTROL_EVENTS", { event_id: EVENT_BREAKPOINT, enable: 1 }, 0);
    await run("KVMI_VM_WRITE_PHYSICAL", { gpa: PAGE, data: Uint8Array.of(0xcc) });
    await run("KVMI_VCPU_CONTROL_SINGLESTEP", { enable: 1 }, 1);
    const before = channel.commands.length;
    await ledger.undo(channel.asChannel, 1000);
    const order = channel.commands.slice(before).map((c) => c.name);
    expect(order.slice(0, 2).sort()).toEqual(["KVMI_VCPU_CONTROL_EVENTS", "KVMI_VCPU_CONTROL_SINGLESTEP"]);
    expect(order.slice(2).sort()).toEqual(["KVMI_VCPU_CONTROL_CR", "KVMI_VM_WRITE_PHYSICAL"]);
  });

  it("splits page restrictions into messages of at most the dialect's entry limit", async () => {
    const count = v9Ids.V9_MAX_PAGE_ACCESS_ENTRIES + 2;
    const entries = Array.from({ length: count }, (_, i) => ({ gpa: BigInt(i) * 4096n, access: 1, visible: 0 }));
    await run("KVMI_VM_SET_PAGE_ACCESS", { entries });
    const before = channel.commands.length;
    await ledger.undo(channel.asChannel, 1000);
    const sizes = channel.commands.slice(before).map((c) => (c.request["entries"] as unknown[]).length);
    expect(sizes).toEqual([v9Ids.V9_MAX_PAGE_ACCESS_ENTRIES, 2]);
  });

  it("counts a failed undo command and still sends the rest; the ledger is empty afterwards", async () => {
    await run("KVMI_VCPU_CONTROL_CR", { cr: 3, enable: 1 }, 0);
    await run("KVMI_VCPU_CONTROL_MSR", { msr: MSR_LSTAR, enable: 1 }, 0);
    channel.answer = (c) => {
      if (c.name === "KVMI_VCPU_CONTROL_CR") throw new KvmiTransportError("gone");
      return {};
    };
    const report = await ledger.undo(channel.asChannel, 1000);
    expect(report).toEqual({ commands: 2, failures: 1, restoredBytes: 0 });
    expect(channel.sent("KVMI_VCPU_CONTROL_MSR")).toHaveLength(2);
    expect(ledger.isEmpty).toBe(true);
  });

  it("clear() forgets without sending anything", async () => {
    await run("KVMI_VCPU_CONTROL_CR", { cr: 3, enable: 1 }, 0);
    const before = channel.commands.length;
    ledger.clear();
    expect(ledger.isEmpty).toBe(true);
    expect(await ledger.undo(channel.asChannel, 1000)).toEqual({ commands: 0, failures: 0, restoredBytes: 0 });
    expect(channel.commands.length).toBe(before);
  });
});
