// SPDX-License-Identifier: Apache-2.0
// The gdbstub client against exchanges recorded from Debian's QEMU 7.2 (fixtures/, recorded with the
// test guest of test/guest/), replayed by a scripted stub; plus the RSP framing edge cases.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { connectGdb } from "./gdb-client.js";
import { RspParser, decodePayload, encodePacket, parseStopReply } from "./rsp-packets.js";

const recorded = JSON.parse(readFileSync(new URL("./fixtures/qemu-7.2-gdbstub.json", import.meta.url), "utf8")) as { exchanges: Array<[string, string]> };

interface FakeStub {
  readonly path: string;
  readonly received: string[];
  socket?: Socket;
  close(): void;
}

/** A stub answering each packet from the recording; `c` runs until 0x03 (then T02), `vCont;s` stops at once. */
async function fakeStub(options: { greetWithStop?: boolean } = {}): Promise<FakeStub> {
  const dir = mkdtempSync(join(tmpdir(), "kvmi-gdb-test-"));
  const path = join(dir, "gdb.sock");
  const replies = new Map<string, string>();
  for (const [request, reply] of recorded.exchanges) if (!replies.has(request)) replies.set(request, reply);
  const threadReplies = ["mp01.01", "mp01.02", "l"];
  const stub: FakeStub = { path, received: [], close: () => undefined };
  const server: Server = createServer((socket) => {
    stub.socket = socket;
    if (options.greetWithStop) socket.write(encodePacket("T02thread:01;"));
    const parser = new RspParser();
    let threadIndex = 0;
    socket.on("data", (chunk: Buffer) => {
      if (chunk.includes(0x03)) socket.write(encodePacket("T02thread:p01.02;"));
      for (const item of parser.push(chunk)) {
        if (item.kind !== "packet") continue;
        socket.write("+");
        stub.received.push(item.payload);
        const request = item.payload;
        if (request === "c") continue;
        if (request.startsWith("vCont;s:")) socket.write(encodePacket(`T05thread:${request.slice(8)};`));
        else if (request === "qfThreadInfo" || request === "qsThreadInfo") socket.write(encodePacket(threadReplies[threadIndex++] ?? "l"));
        else if (/^[Zz][0-4],/.test(request) || request.startsWith("Hg") || request.startsWith("M") || request.startsWith("P")) socket.write(encodePacket("OK"));
        else socket.write(encodePacket(replies.get(request) ?? ""));
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  stub.close = () => {
    server.close();
    stub.socket?.destroy();
    rmSync(dir, { recursive: true, force: true });
  };
  return stub;
}

const stubs: FakeStub[] = [];
afterEach(() => stubs.splice(0).forEach((stub) => stub.close()));

describe("RSP framing", () => {
  it("checksums and escapes the four special characters", () => {
    expect(encodePacket("g").toString()).toBe("$g#67");
    expect(encodePacket("a#b").toString("latin1")).toBe(`$a}\x03b#${((0x61 + 0x7d + 0x03 + 0x62) & 0xff).toString(16)}`);
  });

  it("parses packets split across chunks, acks, run-length encoding and bad checksums", () => {
    const parser = new RspParser();
    expect(parser.push(Buffer.from("+$O"))).toEqual([{ kind: "ack" }]);
    expect(parser.push(Buffer.from("K#9a"))).toEqual([{ kind: "packet", payload: "OK" }]);
    expect(decodePayload("0* ")).toBe("0000");
    expect(parser.push(Buffer.from("-$OK#00"))).toEqual([{ kind: "nack" }, { kind: "bad-checksum", payload: "OK" }]);
  });

  it("refuses a packet that never ends instead of growing without bound", () => {
    const parser = new RspParser(64);
    expect(() => parser.push(Buffer.from(`$${"a".repeat(100)}`))).toThrow(/over 64 bytes/);
  });

  it("decodes stop replies with thread and watchpoint", () => {
    expect(parseStopReply("T05thread:p01.02;watch:ffff888000001000;")).toMatchObject({
      kind: "signal",
      signal: 5,
      thread: "p01.02",
      watch: { kind: "watch", address: 0xffff888000001000n },
    });
    expect(parseStopReply("W00").kind).toBe("exited");
  });
});

describe("GdbClient against QEMU 7.2's recorded answers", () => {
  it("sets PhyMemMode on connect and learns the register file and one thread per vCPU", async () => {
    const stub = await fakeStub();
    stubs.push(stub);
    const gdb = await connectGdb({ kind: "unix", path: stub.path });
    expect(stub.received).toContain("Qqemu.PhyMemMode:1");
    expect(gdb.threads).toEqual(["p01.01", "p01.02"]);
    const names = gdb.registers.map((r) => r.name);
    expect(names.slice(0, 3)).toEqual(["rax", "rbx", "rcx"]);
    expect(names).toContain("cr3");
    expect(names).not.toContain("ss_base"); // commented out in QEMU's XML
    expect(gdb.registers.find((r) => r.name === "cr3")).toMatchObject({ bitsize: 64, regnum: 29 }); // rax..r15, rip, eflags, 6 selectors, 3 bases, cr0, cr2
    gdb.close();
  });

  it("splits the g packet into registers, control registers included", async () => {
    const stub = await fakeStub();
    stubs.push(stub);
    const gdb = await connectGdb({ kind: "unix", path: stub.path });
    const regs = await gdb.readRegisters(1);
    expect(stub.received).toContain("Hgp01.02");
    expect(regs.get("rip")).toBe(0xffffffff819df56bn);
    expect(regs.get("cr0")).toBe(0x80050033n);
    expect(regs.get("cr3")).toBe(0x516c000n);
    expect(regs.get("efer")).toBe(0xd01n);
    expect(regs.get("gs_base")).toBe(0xffff88801f300000n);
    expect(regs.get("cs")).toBe(0x10n);
    gdb.close();
  });

  it("never lets one vCPU's thread selection fall between another's Hg and its g, p or P", async () => {
    const stub = await fakeStub();
    stubs.push(stub);
    const gdb = await connectGdb({ kind: "unix", path: stub.path });
    const from = stub.received.length;
    await Promise.all([gdb.readRegisters(0), gdb.readRegisters(1), gdb.writeRegister(0, "rax", 1n), gdb.readRegisters(1)]);
    const sent = stub.received.slice(from);
    // Each Hg is followed by its own sequence up to the next Hg: one g (plus its p's), or one P.
    const sequences = sent.join(" ").split(/(?=Hg)/).map((s) => s.trim().split(" "));
    expect(sequences.map((s) => s[0])).toEqual(["Hgp01.01", "Hgp01.02", "Hgp01.01", "Hgp01.02"]);
    expect(sequences.map((s) => s[1]![0])).toEqual(["g", "g", "P", "g"]);
    gdb.close();
  });

  it("reads memory with m and writes with M", async () => {
    const stub = await fakeStub();
    stubs.push(stub);
    const gdb = await connectGdb({ kind: "unix", path: stub.path });
    const bytes = await gdb.readMemory(0x2a1aa40n, 32);
    expect(bytes[1]).toBe(0x40);
    await gdb.writeMemory(0x1000n, new Uint8Array([0xcc, 0x90]));
    expect(stub.received).toContain("M1000,2:cc90");
    gdb.close();
  });

  it("takes the stop QEMU announces on connect for what it is, not for the first reply", async () => {
    const stub = await fakeStub({ greetWithStop: true });
    stubs.push(stub);
    const gdb = await connectGdb({ kind: "unix", path: stub.path });
    expect(gdb.threads).toHaveLength(2);
    expect(gdb.state).toBe("stopped");
    gdb.close();
  });

  it("refuses requests while running, interrupts with 0x03 and steps one vCPU", async () => {
    const stub = await fakeStub();
    stubs.push(stub);
    const gdb = await connectGdb({ kind: "unix", path: stub.path });
    await gdb.insertPoint(0, 0xffffffff810be3a0n);
    expect(stub.received).toContain("Z0,ffffffff810be3a0,1");
    await gdb.resume();
    expect(gdb.state).toBe("running");
    await expect(gdb.readMemory(0n, 8)).rejects.toThrow(/while the VM runs/);
    const stop = await gdb.interrupt();
    expect(stop).toMatchObject({ signal: 2, thread: "p01.02" });
    expect(gdb.vcpuOf(stop)).toBe(1);
    const step = await gdb.step(0);
    expect(step.thread).toBe("p01.01");
    expect(gdb.state).toBe("stopped");
    gdb.close();
  });

  it("fails pending requests when the stub goes away", async () => {
    const stub = await fakeStub();
    stubs.push(stub);
    const gdb = await connectGdb({ kind: "unix", path: stub.path, }, { requestTimeoutMs: 2000 });
    stub.socket!.destroy();
    await expect(gdb.readMemory(0n, 8)).rejects.toThrow(/closed|failed/);
  });
});
