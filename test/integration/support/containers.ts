// SPDX-License-Identifier: Apache-2.0
/**
 * Shared plumbing of the container tests (conventions §7 integration tier, §11):
 *
 * - whether a Docker engine answers, and the loud opt-out `KVMI_BRIDGE_NO_DOCKER=1`;
 * - the image, built once from the working tree (`npm run image:local`, idempotent: skipped when
 *   the tagged image carries the hash of the current inputs);
 * - containers that publish their ports on 127.0.0.1 only, labelled for this project, and a
 *   registry that stops every one of them in teardown (Ryuk, testcontainers' reaper, is off: it
 *   cannot be pulled here).
 */
import { spawnSync } from "node:child_process";
import { GenericContainer, Wait } from "testcontainers";
import type { StartedTestContainer } from "testcontainers";
import { DEFAULT_TAG, buildImage, docker, dockerProblem } from "../../../deploy/scripts/build-images.js";

export { docker };

// testcontainers' reaper image cannot be pulled; every container is stopped by `stopAll()`.
process.env.TESTCONTAINERS_RYUK_DISABLED ??= "true";

/** The image under test. */
export const IMAGE = process.env.KVMI_BRIDGE_IMAGE ?? DEFAULT_TAG;
/** Label on every container these tests start; `removeLeftovers()` finds crashed runs by it. */
export const TEST_LABEL = "io.kvmi-bridge.test";
/** Where the image keeps the app. */
export const APP = "/opt/kvmi-bridge";
export const BRIDGE_BIN = `${APP}/service/bin/kvmi-bridge.mjs`;
export const SIM_BIN = `${APP}/kvm-bridge/bin/kvmi-sim.mjs`;
export const SIDECAR_BIN = `${APP}/service/bin/kvmi-kubevirt-sidecar.mjs`;

/** The reason printed by the skipped test when `KVMI_BRIDGE_NO_DOCKER=1`. */
export const OPT_OUT_REASON =
  "KVMI_BRIDGE_NO_DOCKER=1: the container tests did NOT run (image, Kubernetes manifests in Docker, bridge restart, KubeVirt sidecar)";

/** How the container tests may run here. */
export type DockerStatus = { readonly kind: "ready" } | { readonly kind: "opted-out" } | { readonly kind: "missing"; readonly problem: string };

let status: DockerStatus | undefined;

/** Docker availability, decided once per test file: the opt-out wins, then `docker info`. */
export function dockerStatus(): DockerStatus {
  if (status !== undefined) return status;
  if (process.env.KVMI_BRIDGE_NO_DOCKER === "1") {
    process.stderr.write(`\nWARNING ${OPT_OUT_REASON}\n\n`);
    return (status = { kind: "opted-out" });
  }
  const problem = dockerProblem();
  return (status = problem === undefined ? { kind: "ready" } : { kind: "missing", problem });
}

/**
 * For `beforeAll`: fails with what is missing when no engine answers (conventions §11), then makes
 * sure the image is built from the current working tree.
 */
export async function requireDockerAndImage(): Promise<void> {
  const current = dockerStatus();
  if (current.kind === "missing") {
    throw new Error(
      `These tests run the kvmi-bridge image in Docker, but ${current.problem}. Install and start a Docker engine ` +
        "(CI: .ci/run does `apt-get install docker.io` and starts dockerd), or set KVMI_BRIDGE_NO_DOCKER=1 to skip them loudly.",
    );
  }
  if (process.env.KVMI_BRIDGE_IMAGE !== undefined) {
    docker(["image", "inspect", IMAGE]); // a given image must exist; it is not rebuilt
    return;
  }
  await buildImage({ tag: IMAGE, base: "local", ifStale: true, log: () => undefined });
}

/** Removes containers a crashed earlier run left behind. */
export function removeLeftovers(): void {
  const ids = docker(["ps", "-aq", "--filter", `label=${TEST_LABEL}`]).split("\n").filter(Boolean);
  if (ids.length > 0) docker(["rm", "-f", "-v", ...ids]);
}

const started: StartedTestContainer[] = [];
const volumes: string[] = [];

/**
 * A container of the image under test whose exposed ports are published on 127.0.0.1 only
 * (testcontainers publishes on every interface by default).
 */
export class LoopbackContainer extends GenericContainer {
  constructor(image: string = IMAGE) {
    super(image);
    this.withLabels({ [TEST_LABEL]: "true" });
  }

  protected override async beforeContainerCreated(): Promise<void> {
    for (const bindings of Object.values(this.hostConfig.PortBindings ?? {}) as Array<Array<{ HostIp?: string }>>) {
      for (const binding of bindings) binding.HostIp = "127.0.0.1";
    }
  }

  /** `readOnlyRootFilesystem: true`. */
  withReadOnlyRootfs(): this {
    this.hostConfig.ReadonlyRootfs = true;
    return this;
  }

  /** `allowPrivilegeEscalation: false`. */
  withNoNewPrivileges(): this {
    this.hostConfig.SecurityOpt = [...(this.hostConfig.SecurityOpt ?? []), "no-new-privileges"];
    return this;
  }

  /** Supplementary groups (`fsGroup`, `supplementalGroups`). */
  withGroupAdd(...groups: Array<string | number>): this {
    this.hostConfig.GroupAdd = [...(this.hostConfig.GroupAdd ?? []), ...groups.map(String)];
    return this;
  }

  /** A host device, as a device plugin or a privileged hostPath would give it. */
  withDevice(path: string): this {
    this.hostConfig.Devices = [...(this.hostConfig.Devices ?? []), { PathOnHost: path, PathInContainer: path, CgroupPermissions: "rwm" }];
    return this;
  }

  /** Starts the container and registers it for {@link stopAll}. */
  override async start(): Promise<StartedTestContainer> {
    const container = await super.start();
    started.push(container);
    return container;
  }
}

/** A named volume for this run, removed by {@link stopAll}. */
export function createVolume(prefix: string): string {
  const name = `${prefix}-${process.pid}-${Date.now().toString(36)}`;
  docker(["volume", "create", "--label", `${TEST_LABEL}=true`, name]);
  volumes.push(name);
  return name;
}

/** Stops every container started through {@link LoopbackContainer}, then removes the volumes. */
export async function stopAll(): Promise<void> {
  const containers = started.splice(0);
  await Promise.allSettled(containers.map((c) => c.stop({ timeout: 15_000, remove: true, removeVolumes: true })));
  for (const volume of volumes.splice(0)) docker(["volume", "rm", "-f", volume]);
}

/** The image's HEALTHCHECK command (`["CMD", …]`), to run it more often than the image does. */
export function imageHealthTest(image: string = IMAGE): ["CMD", ...string[]] {
  const test = JSON.parse(docker(["image", "inspect", "--format", "{{json .Config.Healthcheck.Test}}", image])) as string[];
  if (test[0] !== "CMD") throw new Error(`the image's HEALTHCHECK is not in exec form: ${JSON.stringify(test)}`);
  return test as ["CMD", ...string[]];
}

/** Waits for the image's own health command to pass, probed every 2 s instead of every 15 s. */
export function withImageHealthCheck(container: GenericContainer): GenericContainer {
  return container
    .withHealthCheck({ test: imageHealthTest(), interval: 2_000, timeout: 5_000, retries: 3, startPeriod: 60_000 })
    .withWaitStrategy(Wait.forHealthCheck())
    .withStartupTimeout(90_000);
}

/** `docker inspect` of a started container. */
export function inspect(container: StartedTestContainer): { State: { Health?: { Status: string; Log: Array<{ ExitCode: number; Output: string }> }; ExitCode: number; Running: boolean }; Config: { User: string } } {
  return JSON.parse(docker(["inspect", container.getId()]))[0];
}

/** The container's log so far (stdout and stderr, interleaved by line as docker returns them). */
export function logsOf(container: StartedTestContainer | string): string {
  const id = typeof container === "string" ? container : container.getId();
  const r = spawnSync("docker", ["logs", id], { encoding: "utf8", maxBuffer: 64 * 1024 * 1024 });
  return `${r.stdout}${r.stderr}`;
}
