// SPDX-License-Identifier: Apache-2.0
// The KubeVirt hook sidecar in a simulated virt-launcher pod. The pod's hook-socket emptyDir is a
// host directory, mounted as KubeVirt mounts it: whole at /var/run/kubevirt-hooks in the compute
// container, and with subPath hook-sidecar-0 at the same path in the sidecar, which runs the image
// with the command and args of deploy/kubevirt/examples/vmi.yaml. The test plays virt-launcher on
// the hook socket (messages encoded here from the vendored protos' field numbers, independently of
// the generated code), then starts the "compute container": kvmi-sim as QEMU, with the chardev path
// and secret file OnDefineDomain put into the domain XML. A tool on the host then sees the VM through
// the sidecar's gRPC port, published on 127.0.0.1.
import { execFile, execFileSync } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { BinaryReader, BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import { Client, Metadata, credentials } from "@grpc/grpc-js";
import type { ServiceError } from "@grpc/grpc-js";
import { Network, Wait } from "testcontainers";
import type { StartedNetwork, StartedTestContainer } from "testcontainers";
import { State } from "@kvmi/proto";
import { LoopbackContainer, OPT_OUT_REASON, SIM_BIN, dockerStatus, inspect, logsOf, removeLeftovers, requireDockerAndImage, stopAll } from "./support/containers.js";
import { connectKvmi } from "./support/kvmi-client.js";
import { REPO, readYamlDocuments } from "./support/kustomize.js";

const execFileAsync = promisify(execFile);
const HOOKS = "/var/run/kubevirt-hooks";
/** The firmware UUID KubeVirt put in the fixture domain's sysinfo: QEMU's -uuid. */
const DOMAIN_UUID = "5b8a3c7e-1d2f-4e6a-9b0c-7d8e9f0a1b2c";

// kubevirt.hooks.info.InfoResult {name = 1; repeated HookPoint hookPoints = 3; repeated string versions = 4}
// HookPoint {name = 1; int32 priority = 2}
type InfoResult = { name: string; hookPoints: Array<{ name: string; priority: number }>; versions: string[] };
function decodeInfo(bytes: Buffer): InfoResult {
  const r = new BinaryReader(bytes);
  const out: InfoResult = { name: "", hookPoints: [], versions: [] };
  while (r.pos < r.len) {
    const [field, wt] = r.tag();
    if (field === 1) out.name = r.string();
    else if (field === 4) out.versions.push(r.string());
    else if (field === 3) {
      const p = new BinaryReader(r.bytes());
      const point = { name: "", priority: 0 };
      while (p.pos < p.len) {
        const [f, w] = p.tag();
        if (f === 1) point.name = p.string();
        else if (f === 2) point.priority = p.int32();
        else p.skip(w);
      }
      out.hookPoints.push(point);
    } else r.skip(wt);
  }
  return out;
}
// kubevirt.hooks.v1alpha3.OnDefineDomainParams {bytes domainXML = 1; bytes vmi = 2} / Result {bytes domainXML = 1}
const encodeDefine = ({ xml, vmi }: { xml: string; vmi: string }): Buffer =>
  Buffer.from(new BinaryWriter().tag(1, WireType.LengthDelimited).bytes(Buffer.from(xml)).tag(2, WireType.LengthDelimited).bytes(Buffer.from(vmi)).finish());
function decodeDefine(bytes: Buffer): string {
  const r = new BinaryReader(bytes);
  let xml = "";
  while (r.pos < r.len) {
    const [field, wt] = r.tag();
    if (field === 1) xml = Buffer.from(r.bytes()).toString("utf8");
    else r.skip(wt);
  }
  return xml;
}

/** One unary call on the hook socket, the way virt-launcher makes it (insecure gRPC over UNIX). */
function hookCall<Req, Res>(socket: string, path: string, request: Req, encode: (r: Req) => Buffer, decode: (b: Buffer) => Res): Promise<Res> {
  const client = new Client(`unix:${socket}`, credentials.createInsecure());
  return new Promise<Res>((resolve, reject) => {
    client.makeUnaryRequest(path, encode, decode, request, new Metadata(), { deadline: Date.now() + 10_000 }, (error: ServiceError | null, value?: Res) => {
      client.close();
      if (error) reject(error);
      else resolve(value!);
    });
  });
}
const empty = (): Buffer => Buffer.alloc(0);

const status = dockerStatus();

if (status.kind === "opted-out") {
  describe("container tests", () => {
    it.skip(OPT_OUT_REASON, () => undefined);
  });
}

// KubeVirt runs the sidecars of non-root VMIs as the qemu user, 107, with every capability dropped;
// those of root VMIs as root.
describe.skipIf(status.kind === "opted-out").each([
  { uid: 107, hardened: true },
  { uid: 0, hardened: false },
])("the KubeVirt hook sidecar (pod mode) in a simulated virt-launcher pod, as uid $uid", ({ uid, hardened }) => {
  const [vmiDoc] = readYamlDocuments(join(REPO, "deploy/kubevirt/examples/vmi.yaml"));
  // virt-launcher sends the VMI as the API server stored it: with its namespace.
  const vmiJson = JSON.stringify({ ...vmiDoc, metadata: { ...vmiDoc!.metadata, namespace: "default" } });
  const [hookSidecar] = JSON.parse((vmiDoc!.metadata as unknown as { annotations: Record<string, string> }).annotations["hooks.kubevirt.io/hookSidecars"]!) as Array<{ command: string[]; args: string[] }>;
  let root: string;
  let volume: string; // the emptyDir
  let sidecarDir: string; // its subPath for container hook-sidecar-0
  let hookSocket: string;
  let sidecar: StartedTestContainer;
  let domainXml = "";

  beforeAll(async () => {
    await requireDockerAndImage();
    removeLeftovers();
    root = mkdtempSync(join(tmpdir(), "kvmi-virt-launcher-"));
    volume = join(root, "hook-sidecar-sockets");
    sidecarDir = join(volume, "hook-sidecar-0");
    hookSocket = join(sidecarDir, "kvmi-bridge-hook-sidecar-0.sock");
    for (const dir of [root, volume, sidecarDir]) {
      mkdirSync(dir, { recursive: true });
      chmodSync(dir, dir === root ? 0o755 : 0o777); // emptyDir: world-writable
    }
    const base = new LoopbackContainer().withUser(`${uid}:${uid}`);
    sidecar = await (hardened ? base.withDroppedCapabilities("ALL").withNoNewPrivileges() : base)
      // What KubeVirt sets in every hook sidecar (template.go).
      .withEnvironment({ CONTAINER_NAME: "hook-sidecar-0" })
      .withEntrypoint(hookSidecar!.command)
      .withCommand(hookSidecar!.args)
      .withBindMounts([{ source: sidecarDir, target: HOOKS, mode: "rw" }])
      .withExposedPorts(50051, 9464)
      .withWaitStrategy(Wait.forLogMessage(/"msg":"hook server listening"/))
      .withStartupTimeout(60_000)
      .start();
  });

  afterAll(async () => {
    await stopAll();
    if (root) rmSync(root, { recursive: true, force: true });
  });

  it("leaves exactly one socket where virt-launcher looks for hook servers; the KVMI socket and cookie are nested", () => {
    // virt-launcher (pkg/hooks/manager.go): every directory of the volume, every non-directory in it.
    const candidates = readdirSync(volume, { withFileTypes: true })
      .filter((e) => e.isDirectory())
      .flatMap((dir) => readdirSync(join(volume, dir.name), { withFileTypes: true }).filter((e) => !e.isDirectory()).map((e) => `${dir.name}/${e.name}`));
    expect(candidates).toEqual(["hook-sidecar-0/kvmi-bridge-hook-sidecar-0.sock"]);
    expect(statSync(hookSocket).uid).toBe(uid);
    expect(statSync(hookSocket).isSocket()).toBe(true);
    expect(readdirSync(join(sidecarDir, "kvmi")).sort()).toEqual(["cookie", "kvmi.sock"]);
  });

  it("answers Info with the v1alpha3 OnDefineDomain and Shutdown hook points", async () => {
    const info = await hookCall(hookSocket, "/kubevirt.hooks.info.Info/Info", undefined, empty, decodeInfo);
    expect(info).toEqual({ name: "kvmi-bridge", hookPoints: [{ name: "OnDefineDomain", priority: 0 }, { name: "Shutdown", priority: 0 }], versions: ["v1alpha3"] });
  });

  it("OnDefineDomain points QEMU at the bridge in this pod, by the compute container's paths", async () => {
    const input = readFileSync(join(REPO, "service/src/kubevirt/testdata/kubevirt-domain.xml"), "utf8");
    domainXml = await hookCall(hookSocket, "/kubevirt.hooks.v1alpha3.Callbacks/OnDefineDomain", { xml: input, vmi: vmiJson }, encodeDefine, decodeDefine);
    const args = [...domainXml.matchAll(/<qemu:arg value="([^"]*)"/g)].map((m) => m[1]);
    expect(args).toEqual([
      "-chardev",
      `socket,id=kvmi-bridge-chardev,path=${HOOKS}/hook-sidecar-0/kvmi/kvmi.sock,reconnect=1`,
      "-object",
      `secret,id=kvmi-bridge-secret,file=${HOOKS}/hook-sidecar-0/kvmi/cookie`,
      "-object",
      "introspection,id=kvmi-bridge,chardev=kvmi-bridge-chardev,key=kvmi-bridge-secret,handshake_timeout=10,unhook_timeout=60,async_unhook=on",
    ]);
    expect(domainXml.slice(0, input.lastIndexOf("\n</domain>"))).toBe(input.slice(0, input.lastIndexOf("\n</domain>")));
  });

  it("serves the VM whose QEMU (another user, in the compute container) follows those arguments", async () => {
    const args = [...domainXml.matchAll(/<qemu:arg value="([^"]*)"/g)].map((m) => m[1]!);
    const path = /(?:^|,)path=([^,]+)/.exec(args[args.indexOf("-chardev") + 1]!)![1]!;
    const secret = /(?:^|,)file=([^,]+)/.exec(args.find((a) => a.startsWith("secret,"))!)![1]!;
    await new LoopbackContainer()
      .withUser("1001:1001")
      .withEntrypoint(["node", SIM_BIN])
      .withCommand(["--connect", `unix:${path}`, "--secret-file", secret, "--vms", "1", "--reconnect-ms", "1000", "--uuid", DOMAIN_UUID])
      .withBindMounts([{ source: volume, target: HOOKS, mode: "rw" }])
      .withWaitStrategy(Wait.forLogMessage(/"msg":"hooked"/))
      .withStartupTimeout(60_000)
      .start();
    const client = connectKvmi(`127.0.0.1:${sidecar.getMappedPort(50051)}`);
    try {
      await vi.waitFor(
        async () => {
          const list = await client.call("listVms", {});
          expect(list.vms.map((vm) => [vm.displayName, vm.state, vm.vcpuCount, vm.origin?.name])).toEqual([["emu-0", State.HOOKED, 2, "vmi-introspected"]]);
        },
        { timeout: 20_000, interval: 200 },
      );
      expect(await client.health()).toBe("SERVING");
    } finally {
      client.close();
    }
    // What a sidecar needs (deploy/kubevirt/kubevirt-cr.yaml sizes supportContainerResources by it).
    const { stdout } = await execFileAsync("docker", ["stats", "--no-stream", "--format", "{{.MemUsage}}", sidecar.getId()]);
    const usage = stdout.split("/")[0]!.trim(); // "86.9MiB / 7.6GiB": usage / limit
    const mib = Number.parseFloat(usage) * (usage.endsWith("GiB") ? 1024 : usage.endsWith("KiB") ? 1 / 1024 : 1);
    expect(mib, usage).toBeLessThan(256);
  });

  it("stops when virt-launcher calls Shutdown: the VM is released and the container exits 0", async () => {
    await hookCall(hookSocket, "/kubevirt.hooks.v1alpha3.Callbacks/Shutdown", undefined, empty, empty);
    await vi.waitFor(() => expect(inspect(sidecar).State).toMatchObject({ Running: false, ExitCode: 0 }), { timeout: 30_000, interval: 250 });
    const log = logsOf(sidecar);
    expect(log).toContain('"msg":"virt-launcher announced shutdown"');
    expect(log).toContain('"msg":"shutting down: hook server, then the bridge releases the VM"');
    expect(log).toMatch(/"reason":"the bridge is shutting down".*"msg":"unhook pending"/);
    expect(existsSync(hookSocket)).toBe(false);
  });
});

// Node mode: one bridge on the node (a container on the node's network, reached under the name of
// the node-local Service of deploy/k8s) and, in the VM's pod, the sidecar with only the forwarder,
// started exactly as deploy/kubevirt/examples/vmi-node-bridge.yaml asks.
describe.skipIf(status.kind === "opted-out")("node mode: a VM's KVMI session reaches the node's bridge through the forwarder", () => {
  const [vmiDoc] = readYamlDocuments(join(REPO, "deploy/kubevirt/examples/vmi-node-bridge.yaml"));
  const vmiJson = JSON.stringify({ ...vmiDoc, metadata: { ...vmiDoc!.metadata, namespace: "team-a" } });
  const [hookSidecar] = JSON.parse((vmiDoc!.metadata as unknown as { annotations: Record<string, string> }).annotations["hooks.kubevirt.io/hookSidecars"]!) as Array<{ command: string[]; args: string[] }>;
  const origin = { namespace: "team-a", name: "vmi-node-bridge", pod: "virt-launcher-vmi-node-bridge-x7k2p" };
  let root: string;
  let volume: string;
  let network: StartedNetwork;
  let nodeBridge: StartedTestContainer;
  let sidecar: StartedTestContainer;
  let hookSocket: string;

  beforeAll(async () => {
    await requireDockerAndImage();
    removeLeftovers();
    root = mkdtempSync(join(tmpdir(), "kvmi-node-mode-"));
    volume = join(root, "hook-sidecar-sockets");
    const sidecarDir = join(volume, "hook-sidecar-0");
    hookSocket = join(sidecarDir, "kvmi-bridge-hook-sidecar-0.sock");
    for (const dir of [root, volume, sidecarDir]) {
      mkdirSync(dir, { recursive: true });
      chmodSync(dir, dir === root ? 0o755 : 0o777);
    }
    network = await new Network().start();
    nodeBridge = await new LoopbackContainer()
      .withNetwork(network)
      .withNetworkAliases("kvmi-bridge-forward.kvmi-system.svc")
      .withExposedPorts(50051)
      .withEnvironment({ KVMI_BRIDGE_ALLOW_INSECURE: "true", KVMI_BRIDGE_AUTHORIZATION: "none", KVMI_BRIDGE_FORWARD_LISTEN: "tcp:0.0.0.0:7001", KVMI_BRIDGE_METRICS_LISTEN: "off" })
      .withWaitStrategy(Wait.forLogMessage(/"msg":"listening for KVMI forwarders"/))
      .withStartupTimeout(60_000)
      .start();
    sidecar = await new LoopbackContainer()
      .withNetwork(network)
      .withUser("107:107")
      .withDroppedCapabilities("ALL")
      .withNoNewPrivileges()
      .withEnvironment({ CONTAINER_NAME: "hook-sidecar-0", POD_NAME: origin.pod })
      .withEntrypoint(hookSidecar!.command)
      .withCommand(hookSidecar!.args)
      .withBindMounts([{ source: sidecarDir, target: HOOKS, mode: "rw" }])
      .withWaitStrategy(Wait.forLogMessage(/"msg":"hook server listening"/))
      .withStartupTimeout(60_000)
      .start();
  });

  afterAll(async () => {
    await stopAll();
    await network?.stop();
    if (root) rmSync(root, { recursive: true, force: true });
  });

  it("lists the VM on the node's bridge with its VMI from the hook call on, hooked once QEMU connects, disconnected when the sidecar is killed", async () => {
    const input = readFileSync(join(REPO, "service/src/kubevirt/testdata/kubevirt-domain.xml"), "utf8");
    const xml = await hookCall(hookSocket, "/kubevirt.hooks.v1alpha3.Callbacks/OnDefineDomain", { xml: input, vmi: vmiJson }, encodeDefine, decodeDefine);
    const args = [...xml.matchAll(/<qemu:arg value="([^"]*)"/g)].map((m) => m[1]!);
    const path = /(?:^|,)path=([^,]+)/.exec(args[args.indexOf("-chardev") + 1]!)![1]!;
    const secret = /(?:^|,)file=([^,]+)/.exec(args.find((a) => a.startsWith("secret,"))!)![1]!;
    expect(path).toBe(`${HOOKS}/hook-sidecar-0/kvmi/kvmi.sock`);
    const client = connectKvmi(`127.0.0.1:${nodeBridge.getMappedPort(50051)}`);
    try {
      await vi.waitFor(
        async () => {
          const list = await client.call("listVms", {});
          expect(list.vms.map((vm) => [vm.uuid, vm.state, vm.origin])).toEqual([[DOMAIN_UUID, State.AWAITING_CONNECTION, expect.objectContaining(origin)]]);
        },
        { timeout: 20_000, interval: 200 },
      );
      // The compute container: QEMU (another uid) follows the domain's arguments into the forwarder.
      await new LoopbackContainer()
        .withUser("1001:1001")
        .withEntrypoint(["node", SIM_BIN])
        .withCommand(["--connect", `unix:${path}`, "--secret-file", secret, "--vms", "1", "--reconnect-ms", "1000", "--uuid", DOMAIN_UUID, "--no-workload"])
        .withBindMounts([{ source: volume, target: HOOKS, mode: "rw" }])
        .withWaitStrategy(Wait.forLogMessage(/"msg":"hooked"/))
        .withStartupTimeout(60_000)
        .start();
      await vi.waitFor(
        async () => {
          const list = await client.call("listVms", {});
          expect(list.vms.map((vm) => [vm.uuid, vm.state, vm.generation, vm.vcpuCount, vm.origin])).toEqual([[DOMAIN_UUID, State.HOOKED, 1n, 2, expect.objectContaining(origin)]]);
        },
        { timeout: 20_000, interval: 200 },
      );
      // KubeVirt never restarts a dead sidecar: the node's bridge shows the VM disconnected (QEMU
      // keeps reconnecting into nothing until the pod goes).
      execFileSync("docker", ["kill", sidecar.getId()]);
      await vi.waitFor(
        async () => {
          const list = await client.call("listVms", {});
          expect(list.vms.map((vm) => [vm.uuid, vm.state])).toEqual([[DOMAIN_UUID, State.DISCONNECTED]]);
        },
        { timeout: 20_000, interval: 200 },
      );
      expect(await client.health()).toBe("SERVING");
    } finally {
      client.close();
    }
    expect(logsOf(nodeBridge)).toMatch(/"msg":"forwarder announced a VM"/);
  });
});
