// SPDX-License-Identifier: Apache-2.0
/**
 * Two VMs whose dialects have different kernel limits, side by side behind one bridge: the
 * mapping's pre-checks (through `runCommand`, as every command RPC runs them) and the hook ledger's
 * undo follow each VM's own dialect table, never v9's numbers or the other VM's.
 *
 * The three real dialects share KVMI_MSG_SIZE and so every limit derived from it (docs/protocol/),
 * so the narrow VM speaks kvmi-v7 with the limits a kernel built with half the message size would
 * have: a check or a batch size that still read v9's constants would let its requests through.
 */
import { create } from "@bufbuild/protobuf";
import { KvmiArgumentError, silentLogger } from "@kvmi/kvm-bridge";
import { kvmiV7, v9 } from "@kvmi/kvm-bridge/wire";
import type { Dialect } from "@kvmi/kvm-bridge/wire";
import { describe, expect, it } from "vitest";
import { NO_AUDIT } from "../audit/audit-log.js";
import { COMMAND_MAPPINGS } from "../mapping/commands.js";
import type { AnyCommandMapping } from "../mapping/commands.js";
import type { RpcDeps } from "../rpc/call-context.js";
import { runCommand } from "../rpc/command-rpcs.js";
import { FakeChannel, fakeRegistry } from "./fake-channel.js";
import { VmHost } from "./vm-host.js";
import type { VmHosts } from "./vm-hosts.js";

const WIDE_UUID = "5f0e3c52-1111-4b8e-9a57-0b7c1f7e2a10";
const NARROW_UUID = "5f0e3c52-2222-4b8e-9a57-0b7c1f7e2a10";

/** kvmi-v7 with every message-size-derived limit halved (a 4 KiB KVMI_MSG_SIZE build). */
const NARROW: Dialect = Object.freeze({
  ...kvmiV7,
  maxMessageBytes: 4088,
  limits: Object.freeze({ ...kvmiV7.limits, maxPhysicalBytes: 2048, maxPageAccessEntries: 255, maxGetRegistersMsrs: 240 }),
});

interface Vm {
  readonly channel: FakeChannel;
  readonly host: VmHost;
  readonly name: string;
}

function vm(uuid: string, dialect: Dialect): Vm {
  const channel = new FakeChannel(dialect);
  const registry = fakeRegistry(uuid);
  const host = new VmHost(registry, channel.asChannel, registry.get(uuid)!, {
    eventDeadlineMs: 10_000,
    unhookDeadlineMs: 10_000,
    controllerGonePolicy: "release",
    logger: silentLogger,
  });
  return { channel, host, name: `vms/${uuid}` };
}

/** Both VMs behind one bridge's RPC dependencies. */
function bridge(): { wide: Vm; narrow: Vm; deps: RpcDeps } {
  const wide = vm(WIDE_UUID, v9);
  const narrow = vm(NARROW_UUID, NARROW);
  const byUuid = new Map([
    [WIDE_UUID, wide.host],
    [NARROW_UUID, narrow.host],
  ]);
  const hosts = {
    require: (uuid: string) => {
      const host = byUuid.get(uuid);
      if (host === undefined) throw new Error(`no VM ${uuid}`);
      return host;
    },
  } as unknown as VmHosts;
  const deps = { hosts, audit: NO_AUDIT, logger: silentLogger, requestTimeoutMs: 5_000 } as unknown as RpcDeps;
  return { wide, narrow, deps };
}

function request(name: keyof typeof COMMAND_MAPPINGS, init: Record<string, unknown>): { mapping: AnyCommandMapping; message: unknown } {
  const mapping = COMMAND_MAPPINGS[name] as AnyCommandMapping;
  return { mapping, message: create(mapping.requestSchema, init as never) };
}

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => new Error("unexpectedly fulfilled"),
    (err: unknown) => err,
  );
}

describe("kernel limits per VM: mapping pre-checks", () => {
  it("lets a 4096-byte read through on the v9 VM and refuses it on the narrow VM before its socket", async () => {
    const { wide, narrow, deps } = bridge();
    wide.channel.answer = () => ({ data: new Uint8Array(4096) });
    for (const target of [wide, narrow]) {
      const { mapping, message } = request("KVMI_VM_READ_PHYSICAL", { vm: target.name, gpa: 0x1000n, size: 4096 });
      const outcome = await rejection(runCommand(deps, mapping, message, { timeoutMs: 5_000 }));
      if (target === wide) {
        expect(outcome).toBeInstanceOf(Error);
        expect((outcome as Error).message).toBe("unexpectedly fulfilled");
      } else {
        expect(outcome).toBeInstanceOf(KvmiArgumentError);
        expect((outcome as Error).message).toMatch(/above the 2048-byte limit/);
      }
    }
    expect(wide.channel.sent("KVMI_VM_READ_PHYSICAL")).toHaveLength(1);
    expect(narrow.channel.commands).toEqual([]);
  });

  it("checks GET_REGISTERS' MSR count against each VM's own table", async () => {
    const { wide, narrow, deps } = bridge();
    wide.channel.answer = () => ({ mode: 8, regs: {}, sregs: {}, msrs: [] });
    const msrIndices = new Array(241).fill(0xc000_0082);
    const onNarrow = request("KVMI_VCPU_GET_REGISTERS", { name: `${narrow.name}/vcpus/0`, msrIndices });
    const err = await rejection(runCommand(deps, onNarrow.mapping, onNarrow.message, { timeoutMs: 5_000 }));
    expect(err).toBeInstanceOf(KvmiArgumentError);
    expect((err as Error).message).toMatch(/241 MSRs, at most 240/);
    expect(narrow.channel.commands).toEqual([]);
    const onWide = request("KVMI_VCPU_GET_REGISTERS", { name: `${wide.name}/vcpus/0`, msrIndices });
    await rejection(runCommand(deps, onWide.mapping, onWide.message, { timeoutMs: 5_000 }));
    // 241 is within v9's 481: the pre-check let it reach the VM's channel.
    expect(wide.channel.sent("KVMI_VCPU_GET_REGISTERS")).toHaveLength(1);
  });

  it("refuses a page-access batch above the narrow VM's entry limit that the v9 VM accepts", async () => {
    const { wide, narrow, deps } = bridge();
    const entries = Array.from({ length: 300 }, (_, i) => ({ gpa: BigInt(i) * 4096n, access: 1, visible: false }));
    const onNarrow = request("KVMI_VM_SET_PAGE_ACCESS", { vm: narrow.name, entries });
    const err = await rejection(runCommand(deps, onNarrow.mapping, onNarrow.message, { timeoutMs: 5_000 }));
    expect(err).toBeInstanceOf(KvmiArgumentError);
    expect((err as Error).message).toMatch(/300 pages, at most 255/);
    // On the v9 VM the same request passes the pre-check and stops only at the controller rule.
    const onWide = request("KVMI_VM_SET_PAGE_ACCESS", { vm: wide.name, entries });
    const wideErr = await rejection(runCommand(deps, onWide.mapping, onWide.message, { timeoutMs: 5_000 }));
    expect(wideErr).not.toBeInstanceOf(KvmiArgumentError);
    expect((wideErr as Error).message).toMatch(/only the controller session/);
  });
});

describe("kernel limits per VM: the hook ledger's undo", () => {
  it("batches page-access restores by each VM's own entry limit", async () => {
    const { wide, narrow } = bridge();
    const entries = Array.from({ length: 600 }, (_, i) => ({ gpa: BigInt(i) * 4096n, access: 1, visible: 0 }));
    const sizes = new Map<Vm, number[]>();
    for (const target of [wide, narrow]) {
      const controller = target.host.attach("controller", { event: () => true, unhook: () => undefined, end: () => undefined });
      const limit = target.channel.dialect.limits.maxPageAccessEntries;
      // The controller restricts 600 pages in messages its VM accepts.
      for (let i = 0; i < entries.length; i += limit) {
        await target.host.command("KVMI_VM_SET_PAGE_ACCESS", { entries: entries.slice(i, i + limit) }, undefined, { sessionId: controller.id });
      }
      const before = target.channel.commands.length;
      await target.host.detach(controller, "client gone");
      const undo = target.channel.commands.slice(before).filter((c) => c.name === "KVMI_VM_SET_PAGE_ACCESS");
      sizes.set(target, undo.map((c) => (c.request["entries"] as unknown[]).length));
      for (const c of undo) expect((c.request["entries"] as Array<{ access: number }>).every((e) => e.access === 7)).toBe(true);
    }
    expect(sizes.get(wide)).toEqual([511, 89]);
    expect(sizes.get(narrow)).toEqual([255, 255, 90]);
  });
});
