// SPDX-License-Identifier: Apache-2.0
// The QMP client against answers recorded from Debian's QEMU 7.2 (fixtures/), replayed by a
// scripted monitor that also sends events and errors.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { QmpCommandError, connectQmp, type QmpEvent } from "./qmp-client.js";

const recorded = JSON.parse(readFileSync(new URL("./fixtures/qemu-7.2-qmp.json", import.meta.url), "utf8")) as {
  greeting: unknown;
  exchanges: Array<[string, Record<string, unknown> | null, unknown]>;
};

const cleanups: Array<() => void> = [];
afterEach(() => cleanups.splice(0).forEach((cleanup) => cleanup()));

async function fakeMonitor(): Promise<{ path: string; received: Array<Record<string, unknown>>; socket: () => Socket }> {
  const dir = mkdtempSync(join(tmpdir(), "kvmi-qmp-test-"));
  const path = join(dir, "qmp.sock");
  const received: Array<Record<string, unknown>> = [];
  let last: Socket | undefined;
  const server = createServer((socket) => {
    last = socket;
    socket.write(`${JSON.stringify({ QMP: recorded.greeting })}\r\n`);
    let buffer = "";
    socket.on("data", (chunk) => {
      buffer += chunk.toString();
      for (let nl = buffer.indexOf("\n"); nl >= 0; nl = buffer.indexOf("\n")) {
        const message = JSON.parse(buffer.slice(0, nl)) as { execute: string; arguments?: Record<string, unknown>; id: string };
        buffer = buffer.slice(nl + 1);
        received.push(message);
        const match = recorded.exchanges.find(([command, args]) => command === message.execute && JSON.stringify(args ?? undefined) === JSON.stringify(message.arguments));
        if (message.execute === "migrate") {
          socket.write(`${JSON.stringify({ id: message.id, error: { class: "GenericError", desc: "no migration here" } })}\r\n`);
        } else {
          socket.write(`${JSON.stringify({ return: match ? match[2] : {}, id: message.id })}\r\n`);
        }
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  cleanups.push(() => {
    server.close();
    last?.destroy();
    rmSync(dir, { recursive: true, force: true });
  });
  return { path, received, socket: () => last! };
}

describe("QmpClient against QEMU 7.2's recorded answers", () => {
  it("negotiates capabilities and answers the identity queries", async () => {
    const monitor = await fakeMonitor();
    const qmp = await connectQmp({ kind: "unix", path: monitor.path });
    expect(monitor.received[0]!.execute).toBe("qmp_capabilities");
    expect(qmp.greeting.version?.qemu?.major).toBe(7);
    expect(await qmp.name()).toBe("linux-rec");
    expect(await qmp.uuid()).toBe("5c3a1e52-0e1f-4b7e-9a51-7f0e4b8d2c11");
    const cpus = await qmp.cpus();
    expect(cpus.map((cpu) => cpu.cpuIndex)).toEqual([0, 1]);
    expect(await qmp.memorySize()).toBe(512n << 20n);
    qmp.close();
  });

  it("reads the RAM map from the flat view and translates through HMP gva2gpa on a vCPU", async () => {
    const monitor = await fakeMonitor();
    const qmp = await connectQmp({ kind: "unix", path: monitor.path });
    const ranges = await qmp.ramRanges();
    expect(ranges[0]!.start).toBe(0n);
    expect(ranges).toEqual([{ start: 0n, end: 0x20000000n }, { start: 0xfffc0000n, end: 0x100000000n }]); // RAM + ROM merged, the BIOS ROM below 4 GiB
    expect(await qmp.gva2gpa(0, 0xffffffff82a1aa40n)).toBe(0x2a1aa40n);
    expect(monitor.received.at(-1)).toMatchObject({ arguments: { "cpu-index": 0 } });
    qmp.close();
  });

  it("turns error replies into QmpCommandError and delivers events", async () => {
    const monitor = await fakeMonitor();
    const qmp = await connectQmp({ kind: "unix", path: monitor.path });
    await expect(qmp.execute("migrate", { uri: "exec:true" })).rejects.toBeInstanceOf(QmpCommandError);
    const event = new Promise<QmpEvent>((resolve) => qmp.onEvent(resolve));
    monitor.socket().write(`${JSON.stringify({ event: "SHUTDOWN", data: { guest: true, reason: "guest-shutdown" }, timestamp: { seconds: 1, microseconds: 2 } })}\r\n`);
    expect(await event).toMatchObject({ event: "SHUTDOWN", data: { reason: "guest-shutdown" } });
    qmp.close();
  });

  it("fails in-flight commands when QEMU goes away", async () => {
    const monitor = await fakeMonitor();
    const qmp = await connectQmp({ kind: "unix", path: monitor.path });
    const closed = new Promise<void>((resolve) => qmp.onClose(resolve));
    monitor.socket().destroy();
    await closed;
    await expect(qmp.status()).rejects.toThrow(/closed/);
  });
});
