// SPDX-License-Identifier: Apache-2.0
/**
 * Runs containers of a rendered Kubernetes pod spec with Docker, the way the kubelet would start
 * them, so that the manifests are tested against the real image: command and args, environment
 * (values and ConfigMap/Secret references), the user and group, a read-only root filesystem,
 * dropped and added capabilities, no privilege escalation, published ports (on 127.0.0.1), and
 * volumes: ConfigMaps and Secrets written to files (owned by root, group fsGroup, their mode),
 * hostPath directories as host directories (bind mounts: unlike named volumes, Docker never copies
 * the image's files or ownership into them, as with a real hostPath), hostPath devices, emptyDirs
 * as tmpfs.
 */
import { chmodSync, chownSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { IMAGE, LoopbackContainer } from "./containers.js";
import type { K8sObject } from "./kustomize.js";
import { find } from "./kustomize.js";

type EnvVar = { name: string; value?: string; valueFrom?: { configMapKeyRef?: { name: string; key: string }; secretKeyRef?: { name: string; key: string } } };
type SecurityContext = { runAsUser?: number; runAsGroup?: number; readOnlyRootFilesystem?: boolean; allowPrivilegeEscalation?: boolean; capabilities?: { drop?: string[]; add?: string[] } };
/** The parts of a Kubernetes container this runner understands. */
export type PodContainer = {
  name: string;
  command?: string[];
  args?: string[];
  env?: EnvVar[];
  ports?: Array<{ containerPort: number }>;
  securityContext?: SecurityContext;
  volumeMounts?: Array<{ name: string; mountPath: string; readOnly?: boolean }>;
};
type Volume = {
  name: string;
  hostPath?: { path: string; type?: string };
  configMap?: { name: string; items?: Array<{ key: string; path: string }> };
  secret?: { secretName: string; defaultMode?: number };
  emptyDir?: { medium?: string; sizeLimit?: string };
};
/** The parts of a pod spec this runner understands. */
export type PodSpec = { securityContext?: SecurityContext & { fsGroup?: number }; volumes: Volume[] };

/** Per-pod state: where hostPath directories and rendered volumes live. */
export interface PodRuntime {
  readonly objects: readonly K8sObject[];
  readonly spec: PodSpec;
  /** Secret contents to use instead of the (placeholder) values in the manifests, by secret and key. */
  readonly secretFiles: Readonly<Record<string, Readonly<Record<string, Buffer | string>>>>;
  /** hostPath path → host directory standing in for it; created on first use, shared by the pod's containers. */
  readonly hostPaths: Map<string, string>;
  readonly scratch: string;
  /** Deletes the projected files and host directories (after the containers stopped). */
  dispose(): void;
}

/** Starts the state of one pod. */
export function createPodRuntime(objects: readonly K8sObject[], spec: PodSpec, secretFiles: PodRuntime["secretFiles"] = {}): PodRuntime {
  const scratch = mkdtempSync(join(tmpdir(), "kvmi-pod-"));
  chmodSync(scratch, 0o755);
  return { objects, spec, secretFiles, hostPaths: new Map(), scratch, dispose: () => rmSync(scratch, { recursive: true, force: true }) };
}

const dataOf = (o: K8sObject): Record<string, string> => ({ ...((o.data as Record<string, string>) ?? {}), ...((o.stringData as Record<string, string>) ?? {}) });

function resolveEnv(runtime: PodRuntime, env: EnvVar): string {
  if (env.value !== undefined) return env.value;
  const cm = env.valueFrom?.configMapKeyRef;
  if (cm) return dataOf(find(runtime.objects, "ConfigMap", cm.name))[cm.key]!;
  const secret = env.valueFrom?.secretKeyRef;
  if (secret) return String(runtime.secretFiles[secret.name]?.[secret.key] ?? dataOf(find(runtime.objects, "Secret", secret.name))[secret.key]);
  throw new Error(`env ${env.name}: unsupported source`);
}

/** Writes a ConfigMap or Secret volume the way the kubelet projects it; returns the directory. */
function projectVolume(runtime: PodRuntime, volume: Volume): string {
  const dir = join(runtime.scratch, `volume-${volume.name}`);
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  chmodSync(dir, 0o755);
  const fsGroup = runtime.spec.securityContext?.fsGroup ?? 0;
  if (volume.configMap) {
    const data = dataOf(find(runtime.objects, "ConfigMap", volume.configMap.name));
    const items = volume.configMap.items ?? Object.keys(data).map((key) => ({ key, path: key }));
    for (const item of items) {
      writeFileSync(join(dir, item.path), data[item.key]!);
      chownSync(join(dir, item.path), 0, fsGroup);
      chmodSync(join(dir, item.path), 0o644);
    }
  } else if (volume.secret) {
    const name = volume.secret.secretName;
    const data = { ...dataOf(find(runtime.objects, "Secret", name)), ...runtime.secretFiles[name] };
    for (const [key, value] of Object.entries(data)) {
      writeFileSync(join(dir, key), value);
      chownSync(join(dir, key), 0, fsGroup);
      chmodSync(join(dir, key), volume.secret.defaultMode ?? 0o644);
    }
  }
  return dir;
}

/**
 * A container of the pod, ready to start: the image under test replaces the manifest's image.
 * Ports are published on 127.0.0.1.
 */
export function podContainer(runtime: PodRuntime, container: PodContainer): LoopbackContainer {
  const c = new LoopbackContainer(IMAGE).withLabels({ "io.kvmi-bridge.test.pod-container": container.name });
  if (container.command) c.withEntrypoint(container.command);
  if (container.args) c.withCommand(container.args);
  const env = Object.fromEntries((container.env ?? []).map((e) => [e.name, resolveEnv(runtime, e)]));
  if (Object.keys(env).length > 0) c.withEnvironment(env);

  const pod = runtime.spec.securityContext ?? {};
  const sc = { ...pod, ...container.securityContext };
  if (sc.runAsUser !== undefined) c.withUser(`${sc.runAsUser}:${sc.runAsGroup ?? sc.runAsUser}`);
  if (pod.fsGroup !== undefined) c.withGroupAdd(pod.fsGroup);
  if (sc.readOnlyRootFilesystem) c.withReadOnlyRootfs();
  if (sc.allowPrivilegeEscalation === false) c.withNoNewPrivileges();
  if (sc.capabilities?.drop?.length) c.withDroppedCapabilities(...sc.capabilities.drop);
  if (sc.capabilities?.add?.length) c.withAddedCapabilities(...sc.capabilities.add);

  const binds: Array<{ source: string; target: string; mode: "ro" | "rw" }> = [];
  for (const mount of container.volumeMounts ?? []) {
    const volume = runtime.spec.volumes.find((v) => v.name === mount.name);
    if (volume === undefined) throw new Error(`${container.name}: no volume ${mount.name}`);
    if (volume.hostPath?.type === "CharDevice") {
      c.withDevice(volume.hostPath.path);
    } else if (volume.hostPath) {
      let dir = runtime.hostPaths.get(volume.hostPath.path);
      if (dir === undefined) {
        // DirectoryOrCreate: the kubelet creates it root-owned, mode 0755.
        dir = join(runtime.scratch, `hostpath${volume.hostPath.path.replaceAll("/", "-")}`);
        mkdirSync(dir, { mode: 0o755 });
        chmodSync(dir, 0o755);
        runtime.hostPaths.set(volume.hostPath.path, dir);
      }
      binds.push({ source: dir, target: mount.mountPath, mode: mount.readOnly ? "ro" : "rw" });
    } else if (volume.configMap || volume.secret) {
      binds.push({ source: projectVolume(runtime, volume), target: mount.mountPath, mode: "ro" });
    } else if (volume.emptyDir) {
      c.withTmpFs({ [mount.mountPath]: `rw,mode=1777${volume.emptyDir.sizeLimit ? `,size=${volume.emptyDir.sizeLimit.replace(/i$/, "")}` : ""}` });
    } else {
      throw new Error(`${container.name}: volume ${mount.name} has an unsupported source`);
    }
  }
  if (binds.length > 0) c.withBindMounts(binds);
  if (container.ports?.length) c.withExposedPorts(...container.ports.map((p) => p.containerPort));
  return c;
}
