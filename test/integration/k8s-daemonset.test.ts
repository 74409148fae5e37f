// SPDX-License-Identifier: Apache-2.0
// The DaemonSet of each overlay, run by Docker as the kubelet would run its pod: the host-dirs and
// doctor init containers, then the bridge with the overlay's environment, user, read-only root
// filesystem, dropped capabilities and volumes (ConfigMap and Secrets projected as files, the host
// socket directory as a volume). QEMU is played by kvmi-sim as another user in the QEMU group,
// with the cookie of the Secret. Probes are run as the kubelet runs them: gRPC health on the pod
// port for tls-off, the exec command inside the container for tls-on.
import { randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { Wait } from "testcontainers";
import type { StartedTestContainer } from "testcontainers";
import { State } from "@kvmi/proto";
import { LoopbackContainer, OPT_OUT_REASON, SIM_BIN, TEST_LABEL, docker, dockerStatus, inspect, logsOf, removeLeftovers, requireDockerAndImage, stopAll } from "./support/containers.js";
import { connectKvmi } from "./support/kvmi-client.js";
import type { ClientTls, KvmiClient } from "./support/kvmi-client.js";
import { REPO, find, renderKustomization } from "./support/kustomize.js";
import type { K8sObject } from "./support/kustomize.js";
import { createPki } from "./support/pki.js";
import type { Pki } from "./support/pki.js";
import { createPodRuntime, podContainer } from "./support/pod.js";
import type { PodContainer, PodRuntime, PodSpec } from "./support/pod.js";

type Probe = { grpc?: { port: number }; exec?: { command: string[] } };
type Container = PodContainer & { readinessProbe: Probe; livenessProbe: Probe; startupProbe: Probe; ports: Array<{ name: string; containerPort: number }> };
type DaemonSet = K8sObject & { spec: { template: { spec: PodSpec & { initContainers: Container[]; containers: Container[] } } } };

const status = dockerStatus();

if (status.kind === "opted-out") {
  describe("container tests", () => {
    it.skip(OPT_OUT_REASON, () => undefined);
  });
}

describe.skipIf(status.kind === "opted-out").each(["tls-off", "tls-on"] as const)("the %s DaemonSet pod in Docker", (overlay) => {
  const objects = renderKustomization(join(REPO, "deploy/k8s/overlays", overlay));
  // The ConfigMap's policy names the cluster's introspection tools; here the one client is this
  // test: its certificate's CN under mTLS, `anonymous` in plaintext behind the NetworkPolicy.
  (find(objects, "ConfigMap", "kvmi-bridge-policy").data as Record<string, string>)["policy.yaml"] =
    "version: 1\ngrants:\n  - identities: [introspection-tool, anonymous]\n    verbs: [admin]\n    vms: all\n";
  const spec = find<DaemonSet>(objects, "DaemonSet", "kvmi-bridge").spec.template.spec;
  const qemuGid = Number((find(objects, "ConfigMap", "kvmi-bridge-config").data as Record<string, string>)["qemu-gid"]);
  const cookie = randomBytes(24).toString("base64");
  let pki: Pki | undefined;
  let runtime: PodRuntime | undefined;
  let bridge: StartedTestContainer;
  const clients: KvmiClient[] = [];
  let tls: ClientTls | undefined;

  beforeAll(async () => {
    await requireDockerAndImage();
    removeLeftovers();
    const secretFiles: Record<string, Record<string, string | Buffer>> = { "kvmi-bridge-cookie": { cookie } };
    if (overlay === "tls-on") {
      pki = createPki();
      const f = (path: string): Buffer => readFileSync(path);
      secretFiles["kvmi-bridge-tls"] = {
        "tls.crt": f(pki.serverCert),
        "tls.key": f(pki.serverKey),
        "ca.crt": f(pki.caCert),
        "client-ca.crt": f(pki.caCert),
        // A CA of its own in production; the same one is enough to start the pod here.
        "forward-client-ca.crt": f(pki.caCert),
        "probe.crt": f(pki.probeCert),
        "probe.key": f(pki.probeKey),
      };
      tls = { ca: f(pki.caCert), cert: f(pki.clientCert), key: f(pki.clientKey), serverName: "kvmi-bridge.kvmi-system.svc" };
    }
    runtime = createPodRuntime(objects, spec, secretFiles);

    // Init containers, in order, each to completion.
    for (const init of spec.initContainers) {
      const container = await podContainer(runtime, init).withWaitStrategy(Wait.forOneShotStartup()).withStartupTimeout(60_000).start();
      const state = inspect(container).State;
      expect(state.ExitCode, `${init.name}:\n${logsOf(container)}`).toBe(0);
    }
    bridge = await podContainer(runtime, spec.containers.find((c) => c.name === "kvmi-bridge")!)
      .withWaitStrategy(Wait.forLogMessage(/"msg":"kvmi-bridge is serving"/))
      .withStartupTimeout(60_000)
      .start();

    // QEMU on the node: another user, in the QEMU group, with the cookie from QEMU's secret file.
    const cookieDir = join(runtime.scratch, "qemu");
    mkdirSync(cookieDir, { mode: 0o755 });
    writeFileSync(join(cookieDir, "secret"), cookie, { mode: 0o644 });
    const sim = new LoopbackContainer()
      .withLabels({ [`${TEST_LABEL}.role`]: "qemu" })
      .withUser(`107:${qemuGid}`)
      .withEntrypoint(["node", SIM_BIN])
      .withCommand(["--connect", "unix:/run/kvmi-bridge/kvmi.sock", "--secret-file", "/etc/qemu-kvmi/secret", "--vms", "1", "--reconnect-ms", "300", "--no-workload"])
      .withBindMounts([
        { source: runtime.hostPaths.get("/run/kvmi-bridge")!, target: "/run/kvmi-bridge", mode: "rw" },
        { source: cookieDir, target: "/etc/qemu-kvmi", mode: "ro" },
      ])
      .withWaitStrategy(Wait.forLogMessage(/"msg":"hooked"/))
      .withStartupTimeout(60_000);
    try {
      await sim.start();
    } catch (error) {
      throw new Error(`the emulated QEMU did not hook: ${(error as Error).message}\n--- bridge log:\n${logsOf(bridge).slice(-3000)}\n--- QEMU log:\n${logsOf(docker(["ps", "-aq", "--latest", "--filter", `label=${TEST_LABEL}.role=qemu`]).trim()).slice(-3000)}`);
    }
  });

  afterAll(async () => {
    for (const c of clients) c.close();
    await stopAll();
    runtime?.dispose();
    pki?.dispose();
  });

  /** A client with the overlay's TLS (a client certificate for tls-on), plaintext, or given TLS options. */
  const connect = (how: "as-configured" | "plaintext" | ClientTls = "as-configured"): KvmiClient => {
    const withTls = how === "as-configured" ? tls : how === "plaintext" ? undefined : how;
    const c = connectKvmi(`127.0.0.1:${bridge.getMappedPort(50051)}`, withTls);
    clients.push(c);
    return c;
  };

  it("prepared the host socket directory for the bridge (owner) and QEMU (setgid group)", async () => {
    const script =
      "const fs = require('fs'); const d = fs.statSync('/run/kvmi-bridge'); const s = fs.statSync('/run/kvmi-bridge/kvmi.sock');" +
      "console.log(JSON.stringify({ dir: [d.uid, d.gid, (d.mode & 0o7777).toString(8)], sock: [s.uid, s.gid, (s.mode & 0o777).toString(8)] }))";
    const result = await bridge.exec(["node", "-e", script]);
    expect(result.exitCode, result.output).toBe(0);
    expect(JSON.parse(result.stdout)).toEqual({ dir: [65532, qemuGid, "2770"], sock: [65532, qemuGid, "660"] });
  });

  it("prepared the host state directory for the bridge alone, and journals the hooked VM's ledger there", async () => {
    const script =
      "const fs = require('fs'); const d = fs.statSync('/var/lib/kvmi-bridge');" +
      "console.log(JSON.stringify({ dir: [d.uid, d.gid, (d.mode & 0o7777).toString(8)], journals: fs.readdirSync('/var/lib/kvmi-bridge/ledger').filter((f) => f.endsWith('.journal')).length }))";
    const result = await bridge.exec(["node", "-e", script]);
    expect(result.exitCode, result.output).toBe(0);
    expect(JSON.parse(result.stdout)).toEqual({ dir: [65532, 65532, "700"], journals: 1 });
  });

  it("passes its probes the way the kubelet runs them", async () => {
    const container = spec.containers.find((c) => c.name === "kvmi-bridge")!;
    for (const probe of [container.startupProbe, container.readinessProbe, container.livenessProbe]) {
      if (probe.grpc) {
        // The kubelet dials the pod IP on the port; here the same port, published on loopback.
        expect(probe.grpc.port).toBe(50051);
        expect(await connect("plaintext").health()).toBe("SERVING");
      } else {
        const result = await bridge.exec(probe.exec!.command);
        expect(result.exitCode, result.output).toBe(0);
        expect(result.stdout).toBe("127.0.0.1:50051: SERVING\n");
      }
    }
  });

  it("serves the VM QEMU hooked through the host socket, with the cookie from the Secret", async () => {
    const client = connect();
    const list = await vi.waitFor(
      async () => {
        const vms = await client.call("listVms", {});
        expect(vms.vms.map((vm) => [vm.displayName, vm.state])).toEqual([["emu-0", State.HOOKED]]);
        return vms;
      },
      { timeout: 20_000, interval: 200 },
    );
    expect(list.vms).toHaveLength(1);
  });

  it(overlay === "tls-on" ? "refuses clients without a certificate from the client CA" : "answers plaintext clients (the NetworkPolicy is the only gate)", async () => {
    if (overlay === "tls-on") {
      await expect(connect("plaintext").call("listVms", {})).rejects.toMatchObject({ code: 14 });
      await expect(connect({ ...tls!, cert: undefined, key: undefined }).call("listVms", {})).rejects.toMatchObject({ code: 14 });
    } else {
      expect((await connect().call("listVms", {})).vms).toHaveLength(1);
    }
  });
});
