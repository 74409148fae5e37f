// SPDX-License-Identifier: Apache-2.0
// The Kubernetes and KubeVirt manifests, checked structurally (no cluster here): every overlay
// renders (patches hit existing resources), selectors agree, the DaemonSet mounts what the
// configuration names, probes ask the health service the way each TLS mode allows, the bridge
// accepts the rendered configuration, and the KubeVirt examples are consistent with the sidecar.
// Runs without Docker; k8s-daemonset.test.ts runs the same pod spec in containers.
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, posix } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { parse as parseYaml } from "yaml";
import { REPO, find, readYamlDocuments, renderKustomization } from "./support/kustomize.js";
import type { K8sObject } from "./support/kustomize.js";
import { createPki } from "./support/pki.js";

const BRIDGE_BIN_IN_IMAGE = "/opt/kvmi-bridge/service/bin/kvmi-bridge.mjs";
const OVERLAYS = ["tls-off", "tls-on"] as const;

type EnvVar = { name: string; value?: string; valueFrom?: { configMapKeyRef?: { name: string; key: string }; secretKeyRef?: { name: string; key: string } } };
type Probe = { grpc?: { port: number }; exec?: { command: string[] }; periodSeconds?: number; timeoutSeconds?: number; failureThreshold?: number };
type Container = {
  name: string;
  image: string;
  command?: string[];
  args?: string[];
  env?: EnvVar[];
  ports?: Array<{ name: string; containerPort: number }>;
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
  securityContext?: { runAsUser?: number; runAsNonRoot?: boolean; allowPrivilegeEscalation?: boolean; readOnlyRootFilesystem?: boolean; capabilities?: { drop?: string[]; add?: string[] } };
  volumeMounts?: Array<{ name: string; mountPath: string; readOnly?: boolean }>;
  startupProbe?: Probe;
  readinessProbe?: Probe;
  livenessProbe?: Probe;
};
type Volume = { name: string; hostPath?: { path: string; type: string }; configMap?: { name: string; items?: Array<{ key: string; path: string }> }; secret?: { secretName: string }; emptyDir?: object };
type PodSpec = {
  securityContext: { runAsNonRoot: boolean; runAsUser: number; runAsGroup: number };
  terminationGracePeriodSeconds: number;
  initContainers: Container[];
  containers: Container[];
  volumes: Volume[];
};
type DaemonSet = K8sObject & { spec: { selector: { matchLabels: Record<string, string> }; template: { metadata: { labels: Record<string, string>; annotations: Record<string, string> }; spec: PodSpec } } };

const render = (overlay: string): K8sObject[] => renderKustomization(join(REPO, "deploy/k8s/overlays", overlay));
const daemonSetOf = (objects: K8sObject[]): DaemonSet => find<DaemonSet>(objects, "DaemonSet", "kvmi-bridge");
const bridgeOf = (ds: DaemonSet): Container => ds.spec.template.spec.containers.find((c) => c.name === "kvmi-bridge")!;
const dataOf = (o: K8sObject): Record<string, string> => ({ ...((o.data as Record<string, string>) ?? {}), ...((o.stringData as Record<string, string>) ?? {}) });
const isSubset = (small: Record<string, string>, big: Record<string, string>): boolean => Object.entries(small).every(([k, v]) => big[k] === v);

/** The volume and the key (file) a path inside the container comes from, if mounted. */
function sourceOf(spec: PodSpec, container: Container, path: string): { volume: Volume; file: string } | undefined {
  for (const mount of container.volumeMounts ?? []) {
    const rel = posix.relative(mount.mountPath, path);
    if (rel.startsWith("..") || posix.isAbsolute(rel)) continue;
    return { volume: spec.volumes.find((v) => v.name === mount.name)!, file: rel };
  }
  return undefined;
}

const scratch = mkdtempSync(join(tmpdir(), "kvmi-k8s-"));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

/** The environment variable names `kvmi-bridge --help` documents. */
const BRIDGE_ENV = new Set(
  [...execFileSync("node", [join(REPO, "service/bin/kvmi-bridge.mjs"), "--help"], { encoding: "utf8" }).matchAll(/env: (KVMI_BRIDGE_[A-Z_]+)/g)].map((m) => m[1]!),
);

describe.each(OVERLAYS)("overlay %s", (overlay) => {
  const objects = render(overlay);
  const ds = daemonSetOf(objects);
  const pod = ds.spec.template.spec;
  const bridge = bridgeOf(ds);
  const configMap = find(objects, "ConfigMap", "kvmi-bridge-config");
  const config = parseYaml(dataOf(configMap)["config.yaml"]!) as Record<string, unknown>;

  it("renders the whole application into kvmi-system, every patch on an existing resource", () => {
    const names = objects.map((o) => `${o.kind}/${o.metadata.name}`).sort();
    expect(names).toEqual(
      [
        "ConfigMap/kvmi-bridge-config",
        "DaemonSet/kvmi-bridge",
        "Namespace/kvmi-system",
        "NetworkPolicy/kvmi-bridge",
        "ConfigMap/kvmi-bridge-policy",
        "Secret/kvmi-bridge-cookie",
        "Secret/kvmi-bridge-jwks",
        "Service/kvmi-bridge",
        "Service/kvmi-bridge-forward",
        "ServiceAccount/kvmi-bridge",
        ...(overlay === "tls-on" ? ["Secret/kvmi-bridge-tls"] : []),
      ].sort(),
    );
    for (const o of objects) {
      expect(o.apiVersion, `${o.kind}/${o.metadata.name}`).toBeTruthy();
      if (o.kind !== "Namespace") expect(o.metadata.namespace, `${o.kind}/${o.metadata.name}`).toBe("kvmi-system");
    }
    expect(find(objects, "Namespace", "kvmi-system").metadata.labels).toMatchObject({ "pod-security.kubernetes.io/enforce": "privileged" });
    for (const c of [...pod.initContainers, ...pod.containers]) expect(c.image, c.name).toBe("kvmi-bridge:0.1.0");
  });

  it("gives KVMI forwarders in VM pods this node's bridge: forward listeners, a node-local Service, the policy admitting virt-launcher pods", () => {
    expect(config.forwardListen).toEqual(["unix:/run/kvmi-bridge/forward.sock", "tcp:0.0.0.0:7001"]);
    expect(bridge.ports).toEqual(expect.arrayContaining([{ name: "forward", containerPort: 7001, protocol: "TCP" }]));
    const service = find<K8sObject & { spec: { internalTrafficPolicy: string; selector: Record<string, string>; ports: Array<{ port: number; targetPort: string }> } }>(objects, "Service", "kvmi-bridge-forward");
    expect(service.spec.internalTrafficPolicy).toBe("Local");
    expect(isSubset(service.spec.selector, ds.spec.template.metadata.labels)).toBe(true);
    expect(service.spec.ports).toEqual([expect.objectContaining({ port: 7001, targetPort: "forward" })]);
    const policy = find<K8sObject & { spec: { ingress: Array<{ from: Array<{ podSelector?: { matchLabels: Record<string, string> } }>; ports: Array<{ port: string }> }> } }>(objects, "NetworkPolicy", "kvmi-bridge");
    const forwardRule = policy.spec.ingress.find((r) => r.ports.some((p) => p.port === "forward"))!;
    expect(forwardRule.from[0]!.podSelector!.matchLabels).toEqual({ "kubevirt.io": "virt-launcher", "kvmi-bridge.io/introspect": "true" });
    // The node-mode example dials exactly that Service.
    const [example] = readYamlDocuments(join(REPO, "deploy/kubevirt/examples/vmi-node-bridge.yaml"));
    const args = (JSON.parse((example!.metadata.annotations as Record<string, string>)["hooks.kubevirt.io/hookSidecars"]!) as Array<{ args: string[] }>)[0]!.args;
    expect(args[args.indexOf("--node-bridge") + 1]).toBe(`tcp:kvmi-bridge-forward.kvmi-system.svc:${service.spec.ports[0]!.port}`);
  });

  it("selects the bridge pods consistently (DaemonSet, headless Service, NetworkPolicy)", () => {
    const labels = ds.spec.template.metadata.labels;
    expect(isSubset(ds.spec.selector.matchLabels, labels)).toBe(true);
    const service = find<K8sObject & { spec: { clusterIP: string; selector: Record<string, string>; ports: Array<{ name: string; port: number; targetPort: string }> } }>(objects, "Service", "kvmi-bridge");
    expect(service.spec.clusterIP).toBe("None");
    expect(isSubset(service.spec.selector, labels)).toBe(true);
    const portNames = new Map(bridge.ports!.map((p) => [p.name, p.containerPort]));
    for (const port of service.spec.ports) expect(portNames.get(port.targetPort), port.name).toBe(port.port);
    const policy = find<K8sObject & { spec: { podSelector: { matchLabels: Record<string, string> }; ingress: Array<{ from?: Array<Record<string, unknown>>; ports: Array<{ port: string | number }> }> } }>(objects, "NetworkPolicy", "kvmi-bridge");
    expect(isSubset(policy.spec.podSelector.matchLabels, labels)).toBe(true);
    for (const rule of policy.spec.ingress) {
      expect(rule.from?.length, "an ingress rule without `from` admits everyone").toBeGreaterThan(0);
      for (const port of rule.ports) expect(typeof port.port === "string" ? portNames.has(port.port) : true).toBe(true);
    }
    const grpcRule = policy.spec.ingress.find((r) => r.ports.some((p) => p.port === "grpc"))!;
    expect(grpcRule.from).toEqual([
      { namespaceSelector: { matchLabels: { "kvmi-bridge.io/introspection-clients": "true" } }, podSelector: { matchLabels: { "kvmi-bridge.io/client": "true" } } },
    ]);
  });

  it("mounts what the configuration names: the host socket directory, the cookie, the config file", () => {
    expect(bridge.args).toEqual(["--config", "/etc/kvmi-bridge/config/config.yaml"]);
    const configSource = sourceOf(pod, bridge, "/etc/kvmi-bridge/config/config.yaml")!;
    expect(configSource.volume.configMap).toEqual({ name: "kvmi-bridge-config", items: [{ key: "config.yaml", path: configSource.file }] });

    const [socket] = config.kvmiListen as string[];
    expect(socket).toMatch(/^unix:\//);
    const socketSource = sourceOf(pod, bridge, socket!.slice("unix:".length))!;
    expect(socketSource.volume.hostPath).toEqual({ path: "/run/kvmi-bridge", type: "DirectoryOrCreate" });

    const cookieSource = sourceOf(pod, bridge, config.secretFile as string)!;
    const cookieSecret = find(objects, "Secret", cookieSource.volume.secret!.secretName);
    expect(Object.keys(dataOf(cookieSecret))).toContain(cookieSource.file);

    // The policy comes from its ConfigMap as a directory mount (updates reach the pod), the JWKS
    // from its Secret.
    const policySource = sourceOf(pod, bridge, config.policyFile as string)!;
    expect(Object.keys(dataOf(find(objects, "ConfigMap", policySource.volume.configMap!.name)))).toContain(policySource.file);
    expect(bridge.volumeMounts!.find((m) => m.name === policySource.volume.name)).not.toHaveProperty("subPath");
    const jwksSource = sourceOf(pod, bridge, config.jwtJwksFile as string)!;
    expect(Object.keys(dataOf(find(objects, "Secret", jwksSource.volume.secret!.secretName)))).toContain(jwksSource.file);

    // The ledger journals (--state-dir) live on the host, in a directory the init container gives
    // to the bridge's uid, so that they outlive the pod; journals of VMs that never come back go.
    const stateDir = config.stateDir as string;
    expect(stateDir).toMatch(/^\//);
    const stateSource = sourceOf(pod, bridge, `${stateDir}/ledger/x.journal`)!;
    expect(stateSource.volume.hostPath).toEqual({ path: stateDir, type: "DirectoryOrCreate" });
    expect(bridge.volumeMounts!.find((m) => m.name === stateSource.volume.name)).not.toHaveProperty("readOnly", true);
    const hostDirs = pod.initContainers.find((c) => c.name === "host-dirs")!;
    expect(sourceOf(pod, hostDirs, `${stateDir}/x`)?.volume.name).toBe(stateSource.volume.name);
    expect(hostDirs.command!.join("\n")).toContain(`prepare("${stateDir}", 65532, 0o700)`);
    expect(pod.securityContext).toMatchObject({ runAsUser: 65532 });
    expect(config.ledgerMaxAgeHours).toBeGreaterThan(24);

    // The metrics port is where Prometheus is told to scrape.
    const metricsPort = Number((config.metricsListen as string).split(":").at(-1));
    expect(bridge.ports!.find((p) => p.name === "metrics")!.containerPort).toBe(metricsPort);
    expect(ds.spec.template.metadata.annotations).toMatchObject({ "prometheus.io/scrape": "true", "prometheus.io/port": String(metricsPort), "prometheus.io/path": "/metrics" });
    const grpcPort = Number((config.grpcListen as string).split(":").at(-1));
    expect(bridge.ports!.find((p) => p.name === "grpc")!.containerPort).toBe(grpcPort);
  });

  it("references only volumes, ConfigMaps, Secrets and keys that exist", () => {
    for (const c of [...pod.initContainers, ...pod.containers]) {
      for (const mount of c.volumeMounts ?? []) expect(pod.volumes.map((v) => v.name), `${c.name} mounts ${mount.name}`).toContain(mount.name);
      for (const env of c.env ?? []) {
        const ref = env.valueFrom?.configMapKeyRef ?? env.valueFrom?.secretKeyRef;
        if (ref === undefined) continue;
        const kind = env.valueFrom?.configMapKeyRef ? "ConfigMap" : "Secret";
        expect(Object.keys(dataOf(find(objects, kind, ref.name))), `${c.name} env ${env.name}`).toContain(ref.key);
      }
      for (const env of c.env ?? []) if (env.name.startsWith("KVMI_BRIDGE_")) expect(BRIDGE_ENV, `${env.name} is not a kvmi-bridge option`).toContain(env.name);
    }
    for (const volume of pod.volumes) {
      if (volume.configMap) {
        const data = dataOf(find(objects, "ConfigMap", volume.configMap.name));
        for (const item of volume.configMap.items ?? []) expect(Object.keys(data)).toContain(item.key);
      }
      if (volume.secret) find(objects, "Secret", volume.secret.secretName);
    }
  });

  it("runs unprivileged with resource requests; only the host-dirs init container is root, with three capabilities", () => {
    expect(pod.securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532 });
    for (const c of [...pod.initContainers, ...pod.containers]) {
      expect(c.resources?.requests, c.name).toMatchObject({ cpu: expect.any(String), memory: expect.any(String) });
      expect(c.resources?.limits?.memory, c.name).toEqual(expect.any(String));
      expect(c.securityContext, c.name).toMatchObject({ allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ["ALL"] } });
      if (c.name === "host-dirs") {
        expect(c.securityContext).toMatchObject({ runAsUser: 0, runAsNonRoot: false, capabilities: { add: ["CHOWN", "FOWNER", "FSETID"] } });
        expect(c.env).toEqual([{ name: "QEMU_GID", valueFrom: { configMapKeyRef: { name: "kvmi-bridge-config", key: "qemu-gid" } } }]);
        expect(c.volumeMounts).toEqual([
          { name: "kvmi-socket-dir", mountPath: "/run/kvmi-bridge" },
          { name: "state", mountPath: "/var/lib/kvmi-bridge" },
        ]);
      } else {
        expect(c.securityContext?.runAsUser, c.name).toBeUndefined();
        expect(c.securityContext?.capabilities?.add, c.name).toBeUndefined();
        // tsx writes its cache to /tmp under a read-only root filesystem.
        expect(pod.volumes.find((v) => v.name === sourceOf(pod, c, "/tmp/x")?.volume.name)?.emptyDir, c.name).toBeDefined();
      }
    }
    expect(Number(dataOf(configMap)["qemu-gid"])).toBeGreaterThan(0);
    // SIGTERM: the unhook deadline and the gRPC drain fit in the grace period.
    expect(pod.terminationGracePeriodSeconds * 1000).toBeGreaterThan((config.unhookDeadlineMs as number) + (config.shutdownGraceMs as number));
  });

  it("runs `doctor` with /dev/kvm from the host", () => {
    const doctor = pod.initContainers.find((c) => c.name === "doctor")!;
    expect(doctor.args).toEqual(["doctor", "--report-only"]);
    expect(sourceOf(pod, doctor, "/dev/kvm")?.volume.hostPath).toEqual({ path: "/dev/kvm", type: "CharDevice" });
  });

  it("has liveness, readiness and startup probes on the gRPC health service, as the TLS mode allows", () => {
    const env = new Map((bridge.env ?? []).map((e) => [e.name, e.value]));
    const grpcPort = bridge.ports!.find((p) => p.name === "grpc")!.containerPort;
    const probes = [bridge.startupProbe!, bridge.readinessProbe!, bridge.livenessProbe!];
    for (const probe of probes) expect(probe).toBeDefined();
    if (overlay === "tls-off") {
      expect(env.get("KVMI_BRIDGE_ALLOW_INSECURE")).toBe("true");
      expect([...env.keys()].filter((k) => k.startsWith("KVMI_BRIDGE_TLS"))).toEqual([]);
      for (const probe of probes) {
        expect(probe.grpc).toEqual({ port: grpcPort });
        expect(probe.exec).toBeUndefined();
      }
    } else {
      expect(env.has("KVMI_BRIDGE_ALLOW_INSECURE")).toBe(false);
      const tlsSecret = dataOf(find(objects, "Secret", "kvmi-bridge-tls"));
      for (const name of ["KVMI_BRIDGE_TLS_CERT", "KVMI_BRIDGE_TLS_KEY", "KVMI_BRIDGE_TLS_CLIENT_CA"]) {
        const source = sourceOf(pod, bridge, env.get(name)!)!;
        expect(source.volume.secret?.secretName, name).toBe("kvmi-bridge-tls");
        expect(Object.keys(tlsSecret), name).toContain(source.file);
      }
      for (const probe of probes) {
        expect(probe.grpc).toBeUndefined();
        const command = probe.exec!.command;
        expect(command.slice(0, 3)).toEqual(["node", BRIDGE_BIN_IN_IMAGE, "health"]);
        expect(command[command.indexOf("--target") + 1]).toBe(`127.0.0.1:${grpcPort}`);
        for (const flag of ["--tls-ca", "--tls-cert", "--tls-key"]) {
          const source = sourceOf(pod, bridge, command[command.indexOf(flag) + 1]!)!;
          expect(source.volume.secret?.secretName, flag).toBe("kvmi-bridge-tls");
          expect(Object.keys(tlsSecret), flag).toContain(source.file);
        }
        expect(probe.timeoutSeconds).toBeGreaterThanOrEqual(5);
      }
      expect(bridge.readinessProbe!.periodSeconds).toBeGreaterThanOrEqual(10); // each probe is a node process
    }
  });

  it("is a configuration the bridge accepts (kvmi-bridge --print-config with the pod's environment)", () => {
    const dir = mkdtempSync(join(scratch, `${overlay}-`));
    const file = join(dir, "config.yaml");
    writeFileSync(file, dataOf(configMap)["config.yaml"]!);
    const cookie = join(dir, "cookie");
    writeFileSync(cookie, "cookie");
    // The policy and the JWKS as the ConfigMap and the Secret hold them.
    const policyFile = join(dir, "policy.yaml");
    writeFileSync(policyFile, dataOf(find(objects, "ConfigMap", "kvmi-bridge-policy"))["policy.yaml"]!);
    const jwksFile = join(dir, "jwks.json");
    writeFileSync(jwksFile, dataOf(find(objects, "Secret", "kvmi-bridge-jwks"))["jwks.json"]!);
    // Files the pod mounts are stand-ins here; their paths are what the manifests are checked for above.
    const env: Record<string, string> = { PATH: process.env.PATH ?? "" };
    let pki: ReturnType<typeof createPki> | undefined;
    for (const e of bridge.env ?? []) if (e.value !== undefined) env[e.name] = e.value;
    if (overlay === "tls-on") {
      pki = createPki();
      Object.assign(env, { KVMI_BRIDGE_TLS_CERT: pki.serverCert, KVMI_BRIDGE_TLS_KEY: pki.serverKey, KVMI_BRIDGE_TLS_CLIENT_CA: pki.caCert, KVMI_BRIDGE_FORWARD_CLIENT_CA: pki.caCert });
    }
    try {
      const check = spawnSync("node", [join(REPO, "service/bin/kvmi-bridge.mjs"), "policy", "check", policyFile], { encoding: "utf8", env });
      expect(check.status, check.stderr).toBe(0);
      const args = ["--config", file, "--secret-file", cookie, "--policy-file", policyFile, "--jwt-jwks-file", jwksFile, "--print-config"];
      const r = spawnSync("node", [join(REPO, "service/bin/kvmi-bridge.mjs"), ...args], { encoding: "utf8", env });
      expect(r.status, r.stderr).toBe(0);
      const printed = JSON.parse(r.stdout) as Record<string, unknown>;
      expect(printed).toMatchObject({
        grpcListen: "0.0.0.0:50051",
        kvmiListen: ["unix:/run/kvmi-bridge/kvmi.sock"],
        metricsListen: "0.0.0.0:9464",
        allowInsecure: overlay === "tls-off",
        authorization: "policy",
        jwtAudience: ["kvmi-bridge"],
        auditStdout: true,
        stateDir: "/var/lib/kvmi-bridge",
        ledgerMaxAgeHours: 168,
      });
      expect(r.stderr).toBe(""); // no warnings (unknown keys or variables)
    } finally {
      pki?.dispose();
    }
  });
});

describe("deploy/k8s/base", () => {
  it("is not deployable alone: no probes and no TLS choice without an overlay", () => {
    const bridge = bridgeOf(daemonSetOf(renderKustomization(join(REPO, "deploy/k8s/base"))));
    expect(bridge.readinessProbe).toBeUndefined();
    expect(bridge.env).toBeUndefined();
  });
});

describe("deploy/kubevirt", () => {
  type HookSidecar = { image: string; imagePullPolicy?: string; command: string[]; args: string[] };
  const examples = ["vmi.yaml", "vm.yaml"].map((name) => {
    const [doc] = readYamlDocuments(join(REPO, "deploy/kubevirt/examples", name));
    const template = doc!.kind === "VirtualMachine" ? (doc!.spec as { template: { metadata: K8sObject["metadata"]; spec: Record<string, unknown> } }).template : { metadata: doc!.metadata, spec: doc!.spec as Record<string, unknown> };
    return { name, doc: doc!, metadata: template.metadata as unknown as { labels: Record<string, string>; annotations: Record<string, string> }, spec: template.spec };
  });

  it.each(examples)("$name asks for the sidecar by a valid hookSidecars annotation", ({ metadata }) => {
    const sidecars = JSON.parse(metadata.annotations["hooks.kubevirt.io/hookSidecars"]!) as HookSidecar[];
    expect(sidecars).toHaveLength(1);
    const [sidecar] = sidecars;
    expect(sidecar!.image).toMatch(/kvmi-bridge:/);
    expect(sidecar!.command).toEqual(["node", "/opt/kvmi-bridge/service/bin/kvmi-kubevirt-sidecar.mjs"]);
    expect(existsSync(join(REPO, "service/bin/kvmi-kubevirt-sidecar.mjs"))).toBe(true);
    // KubeVirt names the i-th sidecar container hook-sidecar-<i> and sets CONTAINER_NAME: no flag needed.
    expect(sidecar!.args).not.toContain("--container-name");
    const bridgeArgs = sidecar!.args.slice(sidecar!.args.indexOf("--") + 1);
    expect(bridgeArgs).toEqual(expect.arrayContaining(["--grpc-listen", "0.0.0.0:50051"]));
  });

  it.each(examples)("$name leaves the bridge's ports to the sidecar (masquerade forwards only the listed ports)", ({ spec }) => {
    const interfaces = (spec.domain as { devices: { interfaces: Array<{ masquerade?: object; bridge?: object; ports?: Array<{ port: number }> }> } }).devices.interfaces;
    for (const iface of interfaces) {
      expect(iface.bridge, "bridge binding moves the pod IP to the guest").toBeUndefined();
      expect(iface.ports?.length, "without a port list masquerade forwards every port to the guest").toBeGreaterThan(0);
      expect(iface.ports!.map((p) => p.port)).not.toEqual(expect.arrayContaining([50051]));
      expect(iface.ports!.map((p) => p.port)).not.toEqual(expect.arrayContaining([9464]));
    }
  });

  it("selects the virt-launcher pods of those VMs in the Service and the NetworkPolicy", () => {
    const [service] = readYamlDocuments(join(REPO, "deploy/kubevirt/service.yaml")) as Array<K8sObject & { spec: { clusterIP: string; selector: Record<string, string> } }>;
    const [policy] = readYamlDocuments(join(REPO, "deploy/kubevirt/networkpolicy.yaml")) as Array<K8sObject & { spec: { podSelector: { matchLabels: Record<string, string> }; ingress: Array<{ ports: Array<{ port: number }> }> } }>;
    expect(service!.spec.clusterIP).toBe("None");
    for (const { metadata } of examples) {
      // KubeVirt labels the pod kubevirt.io=virt-launcher and copies the VMI's labels to it.
      const podLabels = { ...metadata.labels, "kubevirt.io": "virt-launcher" };
      expect(isSubset(service!.spec.selector, podLabels)).toBe(true);
      expect(isSubset(policy!.spec.podSelector.matchLabels, podLabels)).toBe(true);
    }
    const admitted = policy!.spec.ingress.flatMap((r) => r.ports.map((p) => p.port));
    expect(admitted).toEqual(expect.arrayContaining([50051, 9464, 22]));
  });

  it("tells KubeVirt to enable the Sidecar feature gate and gives sidecars room for Node.js", () => {
    const [cr] = readYamlDocuments(join(REPO, "deploy/kubevirt/kubevirt-cr.yaml")) as Array<K8sObject & { spec: { configuration: { developerConfiguration: { featureGates: string[] }; supportContainerResources: Array<{ type: string; resources: { limits: Record<string, string> } }> } } }>;
    expect(cr!.kind).toBe("KubeVirt");
    expect(cr!.spec.configuration.developerConfiguration.featureGates).toContain("Sidecar");
    const sidecar = cr!.spec.configuration.supportContainerResources.find((r) => r.type === "sidecar")!;
    expect(Number.parseInt(sidecar.resources.limits.memory!, 10)).toBeGreaterThanOrEqual(256);
  });
});
