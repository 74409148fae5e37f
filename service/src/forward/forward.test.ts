// SPDX-License-Identifier: Apache-2.0
// One node bridge, VMs behind in-pod forwarders: emulated QEMUs connect to a forwarder's socket,
// the forwarder carries the bytes to the bridge's forward listener (UNIX, and TCP with mTLS), and
// the bridge lists each VM with its VMI namespace/name. Covers the per-pod cookie, a bridge
// restart under a hooked VM, and an announced VM whose QEMU never connects.
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, describe, expect, it, vi } from "vitest";
import { createSimulator } from "@kvmi/kvm-bridge/emulator";
import type { Simulator } from "@kvmi/kvm-bridge/emulator";
import { silentLogger } from "@kvmi/kvm-bridge";
import { startBridge } from "../bridge.js";
import type { Bridge } from "../bridge.js";
import { loadConfigOrThrow } from "../config/index.js";
import { createTestPki } from "../testing.js";
import { encodeHello } from "./hello.js";
import { startForwarder } from "./forwarder.js";
import type { Forwarder, Upstream } from "./forwarder.js";
import { connect } from "node:net";

const root = mkdtempSync(join(tmpdir(), "kvmi-forward-"));
const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

async function nodeBridge(name: string, extra: string[] = []): Promise<Bridge> {
  const config = loadConfigOrThrow({
    argv: ["--grpc-listen", `unix:${join(root, `${name}-grpc.sock`)}`, "--kvmi-listen", `unix:${join(root, `${name}-kvmi.sock`)}`, "--metrics-listen", "off", "--log-level", "error", ...extra],
    env: {},
    cwd: root,
  });
  const bridge = await startBridge({ config, logger: silentLogger });
  cleanups.push(() => bridge.stop());
  return bridge;
}

async function forwarder(name: string, upstream: Upstream, cookie: string | undefined, origin = { namespace: "team-a", name: name, pod: `virt-launcher-${name}-abcde` }): Promise<Forwarder> {
  const f = await startForwarder({
    listenPath: join(root, name, "kvmi.sock"),
    socketMode: 0o666,
    upstream,
    ...(cookie !== undefined && { cookieHash: createHash("sha1").update(cookie).digest("hex") }),
    origin: () => origin,
    logger: silentLogger,
  });
  cleanups.push(() => f.close());
  return f;
}

function qemu(path: string, secret: string, extra: { namePrefix?: string } = {}): Simulator {
  const sim = createSimulator({ endpoint: { kind: "unix", path }, vms: 1, secret: new TextEncoder().encode(secret), reconnectMs: 100, workload: false, ...extra });
  cleanups.push(() => sim.stop());
  sim.start();
  return sim;
}

const hooked = (bridge: Bridge) => bridge.registry.list().filter((r) => r.state === "hooked");

describe("VMs behind in-pod forwarders, one node bridge", () => {
  it("lists every VM with its VMI; each pod's own cookie is checked end to end", async () => {
    const bridge = await nodeBridge("node", ["--forward-listen", `unix:${join(root, "forward.sock")}`]);
    expect(bridge.forwardAddresses).toEqual([`unix:${join(root, "forward.sock")}`]);
    const upstream: Upstream = { kind: "unix", path: join(root, "forward.sock") };
    const a = await forwarder("vm-a", upstream, "cookie-a");
    const b = await forwarder("vm-b", upstream, "cookie-b");
    const simA = qemu(a.listenPath, "cookie-a");
    const simB = qemu(b.listenPath, "cookie-b");
    // A QEMU whose cookie is not its pod's refuses the bridge's answer and is never hooked.
    const impostor = qemu(a.listenPath, "cookie-b", { namePrefix: "impostor" });
    await vi.waitFor(() => expect(hooked(bridge)).toHaveLength(2), { timeout: 10_000, interval: 50 });
    const byUuid = new Map(bridge.registry.list().map((r) => [r.uuid, r]));
    expect(byUuid.get(simA.vms[0]!.uuid)).toMatchObject({ state: "hooked", origin: { namespace: "team-a", name: "vm-a", pod: "virt-launcher-vm-a-abcde" } });
    expect(byUuid.get(simB.vms[0]!.uuid)).toMatchObject({ state: "hooked", origin: { namespace: "team-a", name: "vm-b" } });
    expect(byUuid.has(impostor.vms[0]!.uuid)).toBe(false);
    expect(bridge.registry.get(simA.vms[0]!.uuid)!.peer).toBe(`forwarder:unix:${join(root, "forward.sock")}`);
  }, 20_000);

  it("a bridge restart under a hooked VM: QEMU reconnects through the forwarder and is hooked again", async () => {
    const forwardPath = join(root, "restart-forward.sock");
    const first = await nodeBridge("restart-1", ["--forward-listen", `unix:${forwardPath}`]);
    const f = await forwarder("vm-r", { kind: "unix", path: forwardPath }, "cookie-r");
    const sim = qemu(f.listenPath, "cookie-r");
    await vi.waitFor(() => expect(hooked(first)).toHaveLength(1), { timeout: 10_000, interval: 50 });
    await first.stop();
    // The bridge released the VM; the forwarder closed QEMU's side with it.
    await vi.waitFor(() => expect(f.activeConnections).toBe(0), { timeout: 10_000, interval: 50 });
    const second = await nodeBridge("restart-2", ["--forward-listen", `unix:${forwardPath}`]);
    await vi.waitFor(() => expect(hooked(second).map((r) => [r.uuid, r.origin?.name])).toEqual([[sim.vms[0]!.uuid, "vm-r"]]), { timeout: 15_000, interval: 50 });
    expect(f.totalConnections).toBeGreaterThanOrEqual(2);
  }, 30_000);

  it("a forwarder restart in the same pod: QEMU reconnects to the new one and is hooked again, the old hooks undone", async () => {
    const forwardPath = join(root, "frestart-forward.sock");
    const bridge = await nodeBridge("frestart", ["--forward-listen", `unix:${forwardPath}`]);
    const upstream: Upstream = { kind: "unix", path: forwardPath };
    const first = await forwarder("vm-f", upstream, "cookie-f");
    const sim = qemu(first.listenPath, "cookie-f");
    await vi.waitFor(() => expect(hooked(bridge).map((r) => [r.uuid, r.generation])).toEqual([[sim.vms[0]!.uuid, 1]]), { timeout: 10_000, interval: 50 });
    await first.close();
    await vi.waitFor(() => expect(bridge.registry.get(sim.vms[0]!.uuid)?.state).toBe("unhooked"), { timeout: 10_000, interval: 50 });
    await forwarder("vm-f", upstream, "cookie-f"); // same socket path, same pod cookie
    await vi.waitFor(() => expect(hooked(bridge).map((r) => [r.uuid, r.generation, r.origin?.name])).toEqual([[sim.vms[0]!.uuid, 2, "vm-f"]]), { timeout: 15_000, interval: 50 });
  }, 30_000);

  it("an announced VM whose QEMU never connects is reported not-connected with the reason, in the registry and the metrics", async () => {
    const forwardPath = join(root, "expect-forward.sock");
    const bridge = await nodeBridge("expect", ["--forward-listen", `unix:${forwardPath}`]);
    const f = await forwarder("vm-x", { kind: "unix", path: forwardPath }, "cookie-x");
    const uuid = "0b6c2e4a-51f4-4f3b-9d3e-6f1f2d4c8a10";
    expect(await f.announce({ uuid, name: "team-a_vm-x", origin: { namespace: "team-a", name: "vm-x", pod: "" }, deadlineSeconds: 1 })).toBe(true);
    expect(bridge.registry.get(uuid)).toMatchObject({ state: "awaiting-connection", origin: { name: "vm-x" }, generation: 0 });
    await vi.waitFor(() => expect(bridge.registry.get(uuid)).toMatchObject({ state: "not-connected", problem: expect.stringMatching(/did not connect.*qemu:commandline/) }), { timeout: 5_000, interval: 50 });
    const text = await bridge.metrics.registry.metrics();
    expect(text).toMatch(/kvmi_bridge_vms_not_connected\{state="missed",reason="qemu_never_connected"\} 1/);
    expect(text).toMatch(/kvmi_bridge_vms_hooked 0/);
    // QEMU connecting late turns it into a normal hooked VM.
    const sim = createSimulator({ endpoint: { kind: "unix", path: f.listenPath }, vms: 1, secret: new TextEncoder().encode("cookie-x"), reconnectMs: 100, workload: false });
    cleanups.push(() => sim.stop());
    // The emulator picks its own UUID; announce that one too, as a forwarder would for its VM.
    await f.announce({ uuid: sim.vms[0]!.uuid, name: "x", deadlineSeconds: 60 });
    sim.start();
    await vi.waitFor(() => expect(bridge.registry.get(sim.vms[0]!.uuid)).toMatchObject({ state: "hooked", generation: 1, origin: { name: "vm-x" } }), { timeout: 10_000, interval: 50 });
  }, 20_000);

  it("bounds the announced VMs that wait for their QEMU (peer input)", async () => {
    const { createVmRegistry } = await import("@kvmi/kvm-bridge");
    const registry = createVmRegistry({ maxRemembered: 2 });
    const expectVm = (i: number) => registry.expect({ uuid: `00000000-0000-4000-8000-00000000000${i}`, name: "x", deadlineMs: 60_000, problem: "p", peer: "test" });
    expectVm(1);
    expectVm(2);
    expect(() => expectVm(3)).toThrow(/2 announced VMs are awaiting/);
    expect(registry.list()).toHaveLength(2);
  });

  it("refuses what is not a hello, and bad hellos with the reason", async () => {
    const forwardPath = join(root, "bad-forward.sock");
    await nodeBridge("bad", ["--forward-listen", `unix:${forwardPath}`]);
    const answer = (bytes: Buffer): Promise<string> =>
      new Promise((resolve) => {
        const socket = connect(forwardPath, () => socket.end(bytes));
        let text = "";
        socket.setEncoding("utf8").on("data", (c: string) => (text += c)).on("close", () => resolve(text)).on("error", () => resolve(text));
      });
    expect(await answer(Buffer.alloc(96))).toMatch(/^ERR not a forwarder hello/);
    expect(await answer(encodeHello({ kind: "expect", uuid: "nope", name: "n", deadlineSeconds: 5 }))).toMatch(/^ERR uuid must be/);
    expect(await answer(encodeHello({ kind: "vm", origin: { namespace: "Bad_NS", name: "x", pod: "" } }))).toMatch(/^ERR origin.namespace/);
  });

  it("TCP across the pod network: TLS with client certificates; plaintext is refused at start", async () => {
    const pki = createTestPki();
    cleanups.push(() => pki.dispose());
    await expect(nodeBridge("plain", ["--forward-listen", "tcp:0.0.0.0:0"])).rejects.toThrow(/plaintext from the pod network/);
    const bridge = await nodeBridge("tls", [
      "--forward-listen", "tcp:127.0.0.1:0",
      "--tls-cert", pki.server.cert, "--tls-key", pki.server.key, "--tls-client-ca", pki.ca.cert,
    ]);
    const port = Number(bridge.forwardAddresses[0]!.split(":").at(-1));
    const tls = { ca: readFileSync(pki.ca.cert), serverName: "localhost" };
    const good = await forwarder("vm-t", { kind: "tcp", host: "127.0.0.1", port, tls: { ...tls, cert: readFileSync(pki.client.cert), key: readFileSync(pki.client.key) } }, "cookie-t");
    const rogue = await forwarder("vm-rogue", { kind: "tcp", host: "127.0.0.1", port, tls: { ...tls, cert: readFileSync(pki.rogueClient.cert), key: readFileSync(pki.rogueClient.key) } }, "cookie-u");
    const sim = qemu(good.listenPath, "cookie-t");
    const rogueSim = qemu(rogue.listenPath, "cookie-u");
    await vi.waitFor(() => expect(hooked(bridge).map((r) => [r.uuid, r.origin?.name])).toEqual([[sim.vms[0]!.uuid, "vm-t"]]), { timeout: 10_000, interval: 50 });
    expect(await rogue.announce({ uuid: rogueSim.vms[0]!.uuid, name: "r", deadlineSeconds: 5 }, 0)).toBe(false);
    expect(bridge.registry.get(rogueSim.vms[0]!.uuid)).toBeUndefined();
  }, 30_000);

  it("TCP with --forward-client-ca: forwarders need that CA, and a gRPC client's certificate no longer passes", async () => {
    const pki = createTestPki();
    cleanups.push(() => pki.dispose());
    // The rogue client's certificate is self-signed: as its own CA it stands for a forwarder CA
    // apart from the gRPC clients' CA.
    const bridge = await nodeBridge("fwd-ca", [
      "--forward-listen", "tcp:127.0.0.1:0",
      "--tls-cert", pki.server.cert, "--tls-key", pki.server.key, "--tls-client-ca", pki.ca.cert,
      "--forward-client-ca", pki.rogueClient.cert,
    ]);
    const port = Number(bridge.forwardAddresses[0]!.split(":").at(-1));
    const tls = { ca: readFileSync(pki.ca.cert), serverName: "localhost" };
    const forwarderCert = await forwarder("vm-f", { kind: "tcp", host: "127.0.0.1", port, tls: { ...tls, cert: readFileSync(pki.rogueClient.cert), key: readFileSync(pki.rogueClient.key) } }, "cookie-f");
    const clientCert = await forwarder("vm-c", { kind: "tcp", host: "127.0.0.1", port, tls: { ...tls, cert: readFileSync(pki.client.cert), key: readFileSync(pki.client.key) } }, "cookie-c");
    const sim = qemu(forwarderCert.listenPath, "cookie-f");
    const clientSim = qemu(clientCert.listenPath, "cookie-c");
    await vi.waitFor(() => expect(hooked(bridge).map((r) => [r.uuid, r.origin?.name])).toEqual([[sim.vms[0]!.uuid, "vm-f"]]), { timeout: 10_000, interval: 50 });
    expect(await clientCert.announce({ uuid: clientSim.vms[0]!.uuid, name: "c", deadlineSeconds: 5 }, 0)).toBe(false);
    expect(bridge.registry.get(clientSim.vms[0]!.uuid)).toBeUndefined();
  }, 30_000);
});
