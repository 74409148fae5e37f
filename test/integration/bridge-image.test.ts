// SPDX-License-Identifier: Apache-2.0
// The kvmi-bridge image in real containers (conventions §7, integration tier): the bridge and the
// emulator (kvmi-sim, the same image) share the KVMI socket volume, or talk over TCP on a private
// network; a tool on the host reaches the bridge only through its gRPC port published on
// 127.0.0.1. Covers health (the image's own HEALTHCHECK), the non-root user, listing VMs, reading
// guest memory, a controller handling events, metrics, a bridge restart with the VMs reconnecting,
// graceful shutdown, and `doctor` against /dev/kvm.
import { execFile, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { Network, Wait } from "testcontainers";
import type { StartedNetwork, StartedTestContainer } from "testcontainers";
import { EventAction, EventType, Role, State } from "@kvmi/proto";
import type { SessionResponse, Vm } from "@kvmi/proto";
import {
  BRIDGE_BIN,
  IMAGE,
  LoopbackContainer,
  OPT_OUT_REASON,
  SIM_BIN,
  TEST_LABEL,
  createVolume,
  docker,
  dockerStatus,
  inspect,
  logsOf,
  removeLeftovers,
  requireDockerAndImage,
  stopAll,
  withImageHealthCheck,
} from "./support/containers.js";
import { connectKvmi, sessionRequest } from "./support/kvmi-client.js";
import type { KvmiClient } from "./support/kvmi-client.js";

// The built-in guest's documented layout (README, "The built-in workload").
const INIT_TASK_GVA = 0xffffffff80000000n + 0x10000n;
const TASK_COMM_OFFSET = 0x40n;

const execFileAsync = promisify(execFile);
const status = dockerStatus();

if (status.kind === "opted-out") {
  describe("container tests", () => {
    it.skip(OPT_OUT_REASON, () => undefined);
  });
}

describe.skipIf(status.kind === "opted-out")("the kvmi-bridge image with the emulator on a shared socket volume", () => {
  let volume: string;
  let bridge: StartedTestContainer;
  let sim: StartedTestContainer;
  let client: KvmiClient;
  const clients: KvmiClient[] = [];
  const target = (): string => `127.0.0.1:${bridge.getMappedPort(50051)}`;
  const connect = (): KvmiClient => {
    const c = connectKvmi(target());
    clients.push(c);
    return c;
  };

  beforeAll(async () => {
    await requireDockerAndImage();
    removeLeftovers();
    volume = createVolume("kvmi-sock");
    bridge = await withImageHealthCheck(
      new LoopbackContainer()
        .withExposedPorts(50051, 9464)
        .withEnvironment({ KVMI_BRIDGE_ALLOW_INSECURE: "true", KVMI_BRIDGE_AUTHORIZATION: "none", KVMI_BRIDGE_SHUTDOWN_GRACE_MS: "3000" })
        .withBindMounts([{ source: volume, target: "/run/kvmi-bridge" }]),
    ).start();
    sim = await new LoopbackContainer()
      .withEntrypoint(["node", SIM_BIN])
      .withCommand(["--connect", "unix:/run/kvmi-bridge/kvmi.sock", "--vms", "2", "--reconnect-ms", "500"])
      .withBindMounts([{ source: volume, target: "/run/kvmi-bridge" }])
      .withWaitStrategy(Wait.forLogMessage(/"msg":"hooked"/, 2))
      .withStartupTimeout(60_000)
      .start();
    client = connect();
  });

  afterAll(async () => {
    for (const c of clients) c.close();
    await stopAll();
  });

  async function hookedVms(c: KvmiClient = client): Promise<Vm[]> {
    const list = await c.call("listVms", {});
    return list.vms.filter((vm) => vm.state === State.HOOKED).sort((a, b) => a.displayName.localeCompare(b.displayName));
  }

  it("is healthy by its own HEALTHCHECK, and grpc.health.v1 says SERVING from the host", async () => {
    const health = inspect(bridge).State.Health!;
    expect(health.Status).toBe("healthy");
    expect(health.Log.at(-1)).toMatchObject({ ExitCode: 0, Output: "127.0.0.1:50051: SERVING\n" });
    expect(await client.health()).toBe("SERVING");
    expect(await client.health("kvmi.v1.IntrospectionService")).toBe("SERVING");
    // The image's HEALTHCHECK is the bridge's own probe, at a production-friendly interval.
    const configured = JSON.parse(docker(["image", "inspect", "--format", "{{json .Config.Healthcheck}}", IMAGE])) as { Test: string[]; Interval: number };
    expect(configured.Test).toEqual(["CMD", "node", BRIDGE_BIN, "health"]);
    expect(configured.Interval).toBe(15e9);
  });

  it("runs as the non-root user 65532 and owns the KVMI socket, mode 0660", () => {
    expect(inspect(bridge).Config.User).toBe("65532:65532");
    const script = [
      "const fs = require('fs');",
      "const uid = fs.readFileSync('/proc/1/status', 'utf8').match(/^Uid:\\s+(\\d+)\\s+(\\d+)/m);",
      "const s = fs.statSync('/run/kvmi-bridge/kvmi.sock');",
      "const tools = ['npm', 'npx', 'yarn', 'corepack'].filter((t) => process.env.PATH.split(':').some((d) => fs.existsSync(d + '/' + t)));",
      "console.log(JSON.stringify({ real: +uid[1], effective: +uid[2], sock: [s.uid, (s.mode & 0o777).toString(8), s.isSocket()], tools }));",
    ].join(" ");
    const out = JSON.parse(docker(["exec", bridge.getId(), "node", "-e", script]));
    expect(out).toEqual({ real: 65532, effective: 65532, sock: [65532, "660", true], tools: [] });
  });

  it("lists the emulated VMs and reads guest memory through the published port", async () => {
    const vms = await hookedVms();
    expect(vms.map((vm) => [vm.displayName, vm.vcpuCount, vm.generation])).toEqual([
      ["emu-0", 2, 1n],
      ["emu-1", 2, 1n],
    ]);
    const vm = vms[0]!.name;
    const translated = await client.call("translateGva", { name: `${vm}/vcpus/0`, gva: INIT_TASK_GVA + TASK_COMM_OFFSET });
    expect(translated.mapped).toBe(true);
    const read = await client.call("readPhysicalMemory", { vm, gpa: translated.gpa, size: 16 });
    expect(Buffer.from(read.data).toString("latin1").replace(/\0+$/, "")).toBe("swapper/0");
  });

  it("lets a controller on the host handle CR3 events, answered within their deadline", async () => {
    const vm = (await hookedVms())[0]!.name;
    const stream = client.session();
    const seen: SessionResponse[] = [];
    let replied = 0;
    stream.on("data", (response: SessionResponse) => {
      seen.push(response);
      const m = response.message;
      if (m.case === "event" && m.value.payload.case === "cr") {
        stream.write(sessionRequest({ case: "eventReply", value: { vcpu: m.value.vcpu, seq: m.value.seq, action: EventAction.CONTINUE, newVal: m.value.payload.value.newValue } }));
        replied++;
      }
    });
    stream.on("error", () => undefined);
    stream.write(sessionRequest({ case: "attach", value: { vm, role: Role.CONTROLLER } }));
    await vi.waitFor(() => expect(seen.some((r) => r.message.case === "attached")).toBe(true), { timeout: 10_000 });
    stream.write(sessionRequest({ case: "command", value: { id: 1n, request: { case: "controlVcpuEvents", value: { name: `${vm}/vcpus/0`, event: EventType.CR, enable: true } } } }));
    stream.write(sessionRequest({ case: "command", value: { id: 2n, request: { case: "controlCr", value: { name: `${vm}/vcpus/0`, cr: 3, enable: true } } } }));
    await vi.waitFor(() => expect(replied).toBeGreaterThanOrEqual(10), { timeout: 20_000, interval: 100 });
    const results = seen.flatMap((r) => (r.message.case === "commandResult" ? [r.message.value] : []));
    expect(results.map((r) => [r.id, r.result.case])).toEqual([
      [1n, "controlVcpuEvents"],
      [2n, "controlCr"],
    ]);
    expect(seen.flatMap((r) => (r.message.case === "event" ? [r.message.value.type] : [])).every((t) => t === EventType.CR)).toBe(true);
    stream.end();
    await new Promise((resolve) => stream.on("close", resolve).on("end", resolve));

    // The metrics port (published on loopback too) counted them.
    const metrics = await (await fetch(`http://127.0.0.1:${bridge.getMappedPort(9464)}/metrics`)).text();
    const crEvents = Number(/^kvmi_bridge_events_total\{event="cr"\} (\d+)/m.exec(metrics)?.[1] ?? 0);
    expect(crEvents).toBeGreaterThanOrEqual(10);
  });

  it("after a bridge restart the emulated VMs reconnect and reappear with a new hook time and generation", async () => {
    const before = await hookedVms();
    expect(before).toHaveLength(2);
    await bridge.restart({ timeout: 15_000 });
    const fresh = connect();
    await vi.waitFor(async () => expect(await fresh.health()).toBe("SERVING"), { timeout: 60_000, interval: 500 });
    const after = await vi.waitFor(
      async () => {
        const vms = await hookedVms(fresh);
        expect(vms.map((vm) => vm.uuid)).toEqual(before.map((vm) => vm.uuid));
        return vms;
      },
      { timeout: 60_000, interval: 500 },
    );
    for (const [i, vm] of after.entries()) {
      const old = before[i]!;
      // A new bridge process counts generations from 1 again: the hook time tells the new connection apart.
      expect(vm.generation).toBe(1n);
      expect(vm.hookTime!.seconds * 1000n + BigInt(Math.floor(vm.hookTime!.nanos / 1e6))).toBeGreaterThan(
        old.hookTime!.seconds * 1000n + BigInt(Math.floor(old.hookTime!.nanos / 1e6)),
      );
      expect(vm.startTime).toEqual(old.startTime); // the same VM: QEMU's start time did not change
    }
    // The emulator saw the bridge go away and hooked again (twice "hooked" per VM).
    expect(logsOf(sim).match(/"msg":"hooked"/g)?.length).toBeGreaterThanOrEqual(4);
    client = fresh;
  });

  it("shuts down gracefully on SIGTERM: health goes away, every VM is released, exit code 0", async () => {
    // Asynchronously: a spawnSync here would freeze this process, and with it the test's open gRPC
    // connections, which the bridge waits for (see deploy/README.md, "Known issues").
    await execFileAsync("docker", ["stop", "--time", "20", bridge.getId()]);
    const state = inspect(bridge).State;
    const log = logsOf(bridge);
    expect(state, log.slice(-4000)).toMatchObject({ Running: false, ExitCode: 0 });
    const lastStart = log.lastIndexOf('"msg":"starting kvmi-bridge"');
    expect(log.indexOf('"msg":"shutting down: releasing every VM"', lastStart)).toBeGreaterThan(lastStart);
    expect(log.indexOf('"msg":"stopped"', lastStart)).toBeGreaterThan(lastStart);
  });
});

describe.skipIf(status.kind === "opted-out")("the kvmi-bridge image with the emulator over TCP", () => {
  let network: StartedNetwork;

  beforeAll(async () => {
    await requireDockerAndImage();
    network = await new Network().start();
  });

  afterAll(async () => {
    await stopAll();
    await network?.stop();
  });

  it("serves VMs that connect to tcp:kvmi-bridge:7001 on a private network", async () => {
    const bridge = await withImageHealthCheck(
      new LoopbackContainer()
        .withNetwork(network)
        .withNetworkAliases("kvmi-bridge")
        .withExposedPorts(50051)
        .withEnvironment({ KVMI_BRIDGE_ALLOW_INSECURE: "true", KVMI_BRIDGE_AUTHORIZATION: "none", KVMI_BRIDGE_KVMI_LISTEN: "tcp:0.0.0.0:7001", KVMI_BRIDGE_METRICS_LISTEN: "off" }),
    ).start();
    await new LoopbackContainer()
      .withNetwork(network)
      .withEntrypoint(["node", SIM_BIN])
      .withCommand(["--connect", "tcp:kvmi-bridge:7001", "--vms", "1", "--handshake", "e820", "--no-workload"])
      .withWaitStrategy(Wait.forLogMessage(/"msg":"hooked"/))
      .start();
    const client = connectKvmi(`127.0.0.1:${bridge.getMappedPort(50051)}`);
    try {
      // The emulator logs "hooked" when QEMU's side is done; the bridge finishes its own start-up
      // commands (GET_VERSION, GET_VM_INFO) right after.
      const list = await vi.waitFor(
        async () => {
          const vms = await client.call("listVms", {});
          expect(vms.vms.map((vm) => [vm.displayName, vm.state])).toEqual([["emu-0", State.HOOKED]]);
          return vms;
        },
        { timeout: 20_000, interval: 200 },
      );
      expect(list.vms[0]!.e820Entries.length).toBeGreaterThan(0);
    } finally {
      client.close();
    }
  });
});

describe.skipIf(status.kind === "opted-out")("kvmi-bridge doctor in the image", () => {
  beforeAll(requireDockerAndImage);

  const doctor = (...flags: string[]): string => {
    const r = spawnSync("docker", ["run", "--rm", "--label", `${TEST_LABEL}=true`, ...flags, IMAGE, "doctor"], { encoding: "utf8" });
    expect(r.status, r.stderr).toBe(0);
    return r.stdout;
  };

  it("opens /dev/kvm and asks KVM through ffi-rs (the native addon loads in the image)", () => {
    if (!existsSync("/dev/kvm")) {
      if (process.env.KVMI_BRIDGE_NO_KVM === "1") return;
      throw new Error("/dev/kvm is missing on this host: this test passes it to the container; set KVMI_BRIDGE_NO_KVM=1 to skip it");
    }
    // /dev/kvm is often 0600 root or 0660 root:kvm: run the diagnostic as root for the ioctls.
    const report = doctor("--device", "/dev/kvm", "--user", "0");
    expect(report).toMatch(/\/dev\/kvm\s+ok \(\/dev\/kvm opened read-write\)/);
    expect(report).toMatch(/KVM API version\s+12 \(ok\)/);
    expect(report).toMatch(/^conclusion: /m);
  });

  it("says what is missing without the device", () => {
    expect(doctor()).toMatch(/\/dev\/kvm\s+FAIL: \/dev\/kvm does not exist/);
  });
});
