// SPDX-License-Identifier: Apache-2.0
/**
 * kvmi-relay end to end (docs/decisions/0100-kvmi-relay.md): a libkvmi-like tool
 * (test/support/libkvmi-tool.ts) listens, the relay connects to it as QEMU does and serves it from a
 * Session on a bridge whose emulated VMs speak v9, kvmi-v7 or v12. The tool always speaks kvmi-v7,
 * as libkvmi and LibVMI do: version, vCPU count, memory, registers, the pause batch, CR events with
 * replies, product-only commands, unhook, a tool that dies mid-event, garbage, and a bridge restart
 * under --reconnect.
 */
import net from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { connect } from "@kvmi/clients";
import type { BridgeClient } from "@kvmi/clients";
import { runRelay } from "@kvmi/clients/relay";
import type { RelayOptions, RelayResult } from "@kvmi/clients/relay";
import { silentLogger } from "@kvmi/kvm-bridge";
import { commandByOp, encodeCommand, kvmiV7, v12, v9 } from "@kvmi/kvm-bridge/codec";
import type { Dialect } from "@kvmi/kvm-bridge/codec";
import { loadConfigOrThrow, startBridge } from "@kvmi/service";
import type { Bridge } from "@kvmi/service";
import { startHarness, waitUntil, withTimeout } from "../support/bridge-harness.js";
import type { Harness } from "../support/bridge-harness.js";
import { startLibkvmiTool, ToolCommandError } from "../support/libkvmi-tool.js";
import type { LibkvmiConnection, LibkvmiTool } from "../support/libkvmi-tool.js";

const LIBVMI_MSRS = [0x174, 0x175, 0x176, 0xc0000080, 0xc0000081, 0xc0000082, 0xc0000084];
const EOPNOTSUPP = -95;
const EPERM = -1;
const eventId = (kind: string): number => kvmiV7.events.find((e) => e.kind === kind)!.id;

interface Running {
  harness: Harness;
  client: BridgeClient;
  tool: LibkvmiTool;
  relay: Promise<RelayResult>;
  conn: LibkvmiConnection;
  logs: string[];
}

let running: Running | undefined;
const extraBridges: Bridge[] = [];

afterEach(async () => {
  const r = running;
  running = undefined;
  if (r !== undefined) {
    r.conn.close();
    await withTimeout(r.relay.catch(() => undefined), 10_000, "relay end").catch(() => undefined);
    await r.tool.close();
    r.client.close();
    await r.harness.stop();
  }
  for (const b of extraBridges.splice(0)) await b.stop();
});

async function freePort(): Promise<number> {
  const server = net.createServer().listen(0, "127.0.0.1");
  await new Promise((resolve) => server.once("listening", resolve));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

async function startRelay(
  node: Dialect,
  extra: Partial<RelayOptions> & { bridgeArgs?: string[]; workload?: boolean; toolSecret?: Uint8Array; toolDialect?: Dialect } = {},
): Promise<Running> {
  const harness = await startHarness({
    vms: 1,
    // max-gpa: the handshake v12's QEMU sends (GET_MAX_GFN is answered from it on v12 nodes).
    vmDefaults: { dialect: node, workload: extra.workload ?? false, handshake: "max-gpa" },
    bridgeArgs: ["--kvmi-dialect", node.name, ...(extra.bridgeArgs ?? [])],
  });
  const client = connect({ target: harness.bridge.grpcTarget, retry: { maxAttempts: 1 } });
  const toolDialect = extra.toolDialect ?? kvmiV7;
  const tool = await startLibkvmiTool(toolDialect, { ...(extra.toolSecret && { secret: extra.toolSecret }) });
  const logs: string[] = [];
  const relay = runRelay({
    client,
    vm: harness.vms[0]!.uuid,
    toolPath: tool.path,
    dialect: toolDialect,
    log: { info: (m, f) => logs.push(`${m} ${JSON.stringify(f ?? {})}`), warn: (m, f) => logs.push(`WARN ${m} ${JSON.stringify(f ?? {})}`) },
    ...extra,
  });
  relay.catch(() => undefined);
  const conn = await tool.nextConnection();
  running = { harness, client, tool, relay, conn, logs };
  return running;
}

async function errOf(promise: Promise<unknown>): Promise<number> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(ToolCommandError);
  return (error as ToolCommandError).err;
}

describe.each([
  ["v9", v9],
  ["kvmi-v7", kvmiV7],
  ["v12", v12],
] as const)("a kvmi-v7 tool through kvmi-relay to a %s node", (_name, node) => {
  it("gets the VM's identity, version, vCPU count, memory and registers, and EOPNOTSUPP for product-only commands", async () => {
    const { conn, harness } = await startRelay(node);
    const vm = harness.vms[0]!;
    expect(conn.identity.uuid).toBe(vm.uuid);
    expect(conn.identity.name).toBe("e2e-0");
    expect(conn.version["version"]).toBe(kvmiV7.kvmiVersion);
    expect(conn.version["features"]).toEqual({ spp: 0, vmfunc: 0, eptp: 0, ve: 0 });
    expect((await conn.command("GET_VM_INFO", {}))["vcpu_count"]).toBe(2);
    expect((await conn.command("GET_MAX_GFN", {}))["gfn"]).toBe(vm.guest.memory.maxGfn());
    const pattern = Uint8Array.from({ length: 64 }, (_, i) => (i * 5 + 1) & 0xff);
    await conn.command("WRITE_PHYSICAL", { gpa: 0x7000n, size: 64, data: pattern });
    expect((await conn.command("READ_PHYSICAL", { gpa: 0x7000n, size: 64 }))["data"]).toEqual(pattern);
    // A read crossing a page is the kernel's EINVAL, carried back from the node's errno.
    expect(await errOf(conn.command("READ_PHYSICAL", { gpa: 0x7ff0n, size: 64 }))).toBe(-22);
    // GET_REGISTERS needs a paused vCPU in KVMI; the pause batch first.
    await conn.pauseAll(2);
    const event = await conn.nextEventOf("PAUSE_VCPU");
    const regs = await conn.command("GET_REGISTERS", { msrs_idx: LIBVMI_MSRS }, event.vcpu);
    expect((regs["entries"] as unknown[]).length).toBe(7);
    expect((regs["regs"] as { rip: bigint }).rip).toBe((event.arch["regs"] as { rip: bigint }).rip);
    conn.reply(event, "CONTINUE");
    const second = await conn.nextEventOf("PAUSE_VCPU");
    expect(second.vcpu).not.toBe(event.vcpu);
    conn.reply(second, "CONTINUE");
    // Ids inside CHECK_COMMAND are the tool's: kvmi-v7 READ_PHYSICAL exists, SWITCH_EPT_VIEW does not remotely.
    await conn.command("CHECK_COMMAND", { id: commandByOp(kvmiV7, "READ_PHYSICAL")!.id });
    expect(await errOf(conn.command("CHECK_COMMAND", { id: commandByOp(kvmiV7, "SWITCH_EPT_VIEW")!.id }))).toBe(EOPNOTSUPP);
    expect(await errOf(conn.command("SWITCH_EPT_VIEW", { view: 1 }, 0))).toBe(EOPNOTSUPP);
    expect(await errOf(conn.command("QUERY_PHYSICAL", { gfn: 1n }))).toBe(EOPNOTSUPP);
    await conn.command("CHECK_EVENT", { id: eventId("CR") });
    expect(conn.problems).toEqual([]);
  });

  it("delivers CR3 writes as kvmi-v7 CR events and applies new_val from the tool's reply", async () => {
    const { conn } = await startRelay(node, { workload: true });
    await conn.command("CONTROL_VCPU_EVENTS", { event_id: eventId("CR"), enable: 1 }, 0);
    await conn.command("CONTROL_CR", { cr: 3, enable: 1 }, 0);
    for (let i = 0; i < 3; i++) {
      const event = await conn.nextEventOf("CR", 15_000);
      expect(event.eventId).toBe(eventId("CR"));
      expect(event.vcpu).toBe(0);
      expect(event.payload!["cr"]).toBe(3);
      expect(event.arch["view"]).toBe(0);
      conn.reply(event, "CONTINUE", { new_val: event.payload!["new_value"] as bigint });
    }
    await conn.command("CONTROL_CR", { cr: 3, enable: 0 }, 0);
    expect(conn.problems).toEqual([]);
  });
});

describe.each([
  ["v9", v9],
  ["v12", v12],
] as const)("a %s tool through kvmi-relay --dialect to a kvmi-v7 node", (_name, toolDialect) => {
  it("gets its own dialect's version, memory and CR events with replies", async () => {
    const { conn, harness } = await startRelay(kvmiV7, { workload: true, toolDialect });
    expect(conn.version["version"]).toBe(toolDialect.kvmiVersion);
    expect((await conn.command("GET_VM_INFO", {}))["vcpu_count"]).toBe(2);
    const data = await conn.command("READ_PHYSICAL", { gpa: 0x7000n, size: 16 });
    const truth = harness.vms[0]!.guest.memory.read(0x7000n, 16);
    expect(truth).toEqual({ ok: true, bytes: data["data"] });
    const cr = toolDialect.events.find((e) => e.kind === "CR")!.id;
    await conn.command("CONTROL_VCPU_EVENTS", { event_id: cr, enable: 1 }, 0);
    await conn.command("CONTROL_CR", { cr: 3, enable: 1 }, 0);
    for (let i = 0; i < 2; i++) {
      const event = await conn.nextEventOf("CR", 15_000);
      expect(event.eventId).toBe(cr);
      conn.reply(event, "CONTINUE", { new_val: event.payload!["new_value"] as bigint });
    }
    expect(conn.problems).toEqual([]);
  });
});

describe("kvmi-relay on the wire (node speaks v9)", () => {
  it("keeps pipelined page reads pipelined and answers each at its own seq, in one write each", async () => {
    const { conn, harness } = await startRelay(v9);
    const spec = commandByOp(kvmiV7, "READ_PHYSICAL")!;
    const pages = 16;
    for (let i = 0; i < pages; i++) {
      const data = new Uint8Array(4096).fill(i + 1);
      await conn.command("WRITE_PHYSICAL", { gpa: BigInt(0x10000 + i * 4096), size: 4096, data });
    }
    // The tool's socket is taken over: sixteen requests in one write, replies collected by seq.
    const replies = new Map<number, Buffer>();
    let buffered = Buffer.alloc(0);
    conn.socket.removeAllListeners("data");
    conn.socket.on("data", (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      while (buffered.length >= 8 && buffered.length >= 8 + buffered.readUInt16LE(2)) {
        const size = buffered.readUInt16LE(2);
        replies.set(buffered.readUInt32LE(4), buffered.subarray(0, 8 + size));
        buffered = buffered.subarray(8 + size);
      }
    });
    const seqs = Array.from({ length: pages }, (_, i) => 5000 + i);
    conn.socket.write(Buffer.concat(seqs.map((seq, i) => encodeCommand(kvmiV7, spec, seq, { gpa: BigInt(0x10000 + i * 4096), size: 4096 }))));
    await waitUntil(() => replies.size === pages || undefined, "every pipelined reply");
    seqs.forEach((seq, i) => {
      const reply = replies.get(seq)!;
      expect(reply.readUInt16LE(0)).toBe(spec.id);
      expect(reply.readInt32LE(8)).toBe(0);
      expect(reply.subarray(16)).toEqual(Buffer.alloc(4096, i + 1));
    });
    // Every tool command went over the session: no unary RPC per message.
    const metrics = await harness.metrics();
    // The control: the relay's one lookup of the VM (GetVm or ListVms) is counted under this label.
    const lookups = ["GetVm", "ListVms"].map((m) => metrics.value("kvmi_bridge_grpc_requests_total", { method: `/kvmi.v1.IntrospectionService/${m}` }));
    expect(lookups[0]! + lookups[1]!).toBeGreaterThan(0);
    for (const method of ["ReadPhysicalMemory", "WritePhysicalMemory", "GetVmInfo", "GetVersion"]) {
      expect(metrics.value("kvmi_bridge_grpc_requests_total", { method: `/kvmi.v1.IntrospectionService/${method}` }), method).toBe(0);
    }
    expect(metrics.value("kvmi_bridge_commands_total", { command: "KVMI_VM_READ_PHYSICAL" })).toBeGreaterThanOrEqual(pages);
  });

  it("answers a command id the dialect does not have with ENOSYS and goes on", async () => {
    const { conn } = await startRelay(v9);
    const replies: Buffer[] = [];
    conn.socket.removeAllListeners("data");
    conn.socket.on("data", (chunk: Buffer) => replies.push(chunk));
    const unknown = Buffer.alloc(8);
    unknown.writeUInt16LE(999, 0);
    unknown.writeUInt32LE(77, 4);
    conn.socket.write(unknown);
    await waitUntil(() => Buffer.concat(replies).length >= 16 || undefined, "the ENOSYS reply");
    const reply = Buffer.concat(replies);
    expect([reply.readUInt16LE(0), reply.readUInt16LE(2), reply.readUInt32LE(4), reply.readInt32LE(8)]).toEqual([999, 8, 77, -1000]);
  });

  it("refuses a tool whose cookie hash does not match --secret-file, and releases the VM", async () => {
    const harness = await startHarness({ vms: 1, vmDefaults: { dialect: v9 }, bridgeArgs: ["--kvmi-dialect", "v9"] });
    const client = connect({ target: harness.bridge.grpcTarget });
    const tool = await startLibkvmiTool(kvmiV7, { secret: new TextEncoder().encode("tool-secret") });
    try {
      await expect(
        runRelay({ client, vm: harness.vms[0]!.uuid, toolPath: tool.path, dialect: kvmiV7, secret: new TextEncoder().encode("other") }),
      ).rejects.toThrow(/cookie hash mismatch/);
      const host = harness.bridge.hosts.all()[0]!;
      await waitUntil(() => host.sessions.length === 0 || undefined, "the VM released");
      const ok = runRelay({ client, vm: harness.vms[0]!.uuid, toolPath: tool.path, dialect: kvmiV7, secret: new TextEncoder().encode("tool-secret") });
      const conn = await tool.nextConnection();
      expect(conn.identity.uuid).toBe(harness.vms[0]!.uuid);
      conn.close();
      await expect(ok).resolves.toMatchObject({ end: "tool-closed" });
    } finally {
      await tool.close();
      client.close();
      await harness.stop();
    }
  });
});

describe("kvmi-relay lifecycle (node speaks v9)", () => {
  it("forwards the bridge's unhook notice as UNHOOK, and releases the VM when the tool closes", async () => {
    const { conn, harness, relay } = await startRelay(v9);
    await conn.command("CONTROL_VM_EVENTS", { event_id: eventId("UNHOOK"), enable: 1 });
    const outcome = harness.vms[0]!.runAction("pause");
    const unhook = await conn.nextEventOf("UNHOOK");
    expect(unhook.eventId).toBe(eventId("UNHOOK"));
    conn.close();
    await expect(withTimeout(relay, 10_000, "relay end")).resolves.toMatchObject({ end: "tool-closed" });
    await outcome;
  });

  it("applies SET_REGISTERS sent while the tool holds an event", async () => {
    const { conn } = await startRelay(v9);
    await conn.pauseAll(2);
    const first = await conn.nextEventOf("PAUSE_VCPU");
    const regs = first.arch["regs"] as Record<string, bigint>;
    await conn.command("SET_REGISTERS", { ...regs, rax: 0x1234n }, first.vcpu);
    conn.reply(first, "CONTINUE");
    conn.reply(await conn.nextEventOf("PAUSE_VCPU"), "CONTINUE");
    await conn.pauseAll(2);
    const raxByVcpu = new Map<number, bigint>();
    for (let i = 0; i < 2; i++) {
      const again = await conn.nextEventOf("PAUSE_VCPU");
      raxByVcpu.set(again.vcpu, (again.arch["regs"] as { rax: bigint }).rax);
      conn.reply(again, "CONTINUE");
    }
    expect(raxByVcpu.get(first.vcpu)).toBe(0x1234n);
  });

  it("answers EPERM to an observer's commands that change the guest", async () => {
    const { conn } = await startRelay(v9, { role: "observer" });
    expect((await conn.command("GET_VM_INFO", {}))["vcpu_count"]).toBe(2);
    expect(await errOf(conn.command("WRITE_PHYSICAL", { gpa: 0x7000n, size: 1, data: new Uint8Array([1]) }))).toBe(EPERM);
    expect(await errOf(conn.command("CONTROL_CR", { cr: 3, enable: 1 }, 0))).toBe(EPERM);
  });

  it("a tool that dies mid-event: the relay releases the VM and the bridge's deadline lets the vCPU go", async () => {
    const { conn, harness, relay, client } = await startRelay(v9, { workload: true, eventDeadlineMs: 500 });
    await conn.command("CONTROL_VCPU_EVENTS", { event_id: eventId("CR"), enable: 1 }, 0);
    await conn.command("CONTROL_CR", { cr: 3, enable: 1 }, 0);
    await conn.nextEventOf("CR", 15_000);
    conn.close("the tool crashed");
    await expect(withTimeout(relay, 10_000, "relay end")).resolves.toMatchObject({ end: "tool-closed" });
    const host = harness.bridge.hosts.all()[0]!;
    await waitUntil(() => host.sessions.length === 0 || undefined, "the relay's session detached");
    // The vCPU runs again: its RIP moves between two looks of another session.
    const h = client.vm(harness.vms[0]!.uuid);
    const rip = async () => {
      const s = await client.attach(harness.vms[0]!.uuid, { role: "controller" });
      await s.pauseVcpu(0, { wait: true });
      for await (const item of s.events()) {
        if (item.kind === "event" && item.type === "pauseVcpu") {
          const value = item.arch.regs.rip;
          await item.continue();
          await s.release();
          return value;
        }
      }
      throw new Error("no pause event");
    };
    const first = await rip();
    await waitUntil(async () => ((await rip()) !== first) || undefined, "the guest runs on");
    expect(h.uuid).toBe(harness.vms[0]!.uuid);
  });

  it("a tool that stops answering: the bridge's deadline answers the vCPU, which runs on to the next event", async () => {
    const { conn, logs } = await startRelay(v9, { workload: true, eventDeadlineMs: 300 });
    await conn.command("CONTROL_VCPU_EVENTS", { event_id: eventId("CR"), enable: 1 }, 0);
    await conn.command("CONTROL_CR", { cr: 3, enable: 1 }, 0);
    const first = await conn.nextEventOf("CR", 15_000);
    // No reply: the next CR event of the same vCPU can only come once the deadline answered the first.
    const second = await conn.nextEvent(10_000);
    expect(second?.kind).toBe("CR");
    expect(second!.seq).not.toBe(first.seq);
    // The late reply to the first is dropped by the relay, and the tool stays connected.
    conn.reply(first, "CONTINUE", { new_val: first.payload!["new_value"] as bigint });
    await waitUntil(() => logs.some((l) => l.startsWith("event reply for no pending event")) || undefined, "the late reply logged");
    conn.reply(second!, "CONTINUE", { new_val: second!.payload!["new_value"] as bigint });
    expect((await conn.command("GET_VM_INFO", {}))["vcpu_count"]).toBe(2);
    expect(conn.closed).toBeUndefined();
  });

  it("closes the socket of a tool that sends garbage, with a logged reason, and releases the VM", async () => {
    const { conn, harness, relay, logs } = await startRelay(v9);
    const garbage = Buffer.alloc(8);
    garbage.writeUInt16LE(commandByOp(kvmiV7, "GET_VM_INFO")!.id, 0);
    garbage.writeUInt16LE(0xffff, 2); // a body larger than KVMI_MSG_SIZE
    conn.socket.write(garbage);
    const result = await withTimeout(relay, 10_000, "relay end");
    expect(result.end).toBe("protocol-error");
    expect(logs.some((l) => l.startsWith("WARN closing the tool's socket"))).toBe(true);
    await waitUntil(() => conn.closed !== undefined || undefined, "the tool's socket closed");
    const host = harness.bridge.hosts.all()[0]!;
    await waitUntil(() => host.sessions.length === 0 || undefined, "the VM released");
  });

  it("with --reconnect keeps serving the tool across a bridge restart, with its events turned back on", async () => {
    const port = await freePort();
    const listen = ["--grpc-listen", `127.0.0.1:${port}`];
    const { conn, harness, relay, logs } = await startRelay(v9, { reconnect: true, workload: true, bridgeArgs: listen });
    await conn.command("CONTROL_VCPU_EVENTS", { event_id: eventId("CR"), enable: 1 }, 0);
    await conn.command("CONTROL_CR", { cr: 3, enable: 1 }, 0);
    conn.reply(await conn.nextEventOf("CR", 15_000), "CONTINUE", { new_val: 0n });
    await harness.stopBridge();
    const config = loadConfigOrThrow({
      argv: [...listen, "--kvmi-dialect", "v9", "--kvmi-listen", `unix:${harness.kvmiPath}`, "--event-timeout-ms", "5000"],
      env: {},
      cwd: harness.dir,
    });
    extraBridges.push(await startBridge({ config, logger: silentLogger }));
    // Same tool socket: commands work again and the CR interception was replayed on the new session.
    await waitUntil(async () => (await conn.command("GET_VM_INFO", {}).catch(() => undefined))?.["vcpu_count"] === 2 || undefined, "served again");
    const event = await conn.nextEventOf("CR", 20_000);
    expect(event.payload!["cr"]).toBe(3);
    conn.reply(event, "CONTINUE", { new_val: event.payload!["new_value"] as bigint });
    expect(logs.filter((l) => l.includes("re-attached"))).toHaveLength(1);
    expect(logs.filter((l) => l.includes("could not turn"))).toEqual([]);
    expect(conn.closed).toBeUndefined();
    conn.close();
    await expect(withTimeout(relay, 10_000, "relay end")).resolves.toMatchObject({ end: "tool-closed" });
  });
});
