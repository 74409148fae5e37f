// SPDX-License-Identifier: Apache-2.0
// The sidecar in node mode: no bridge in the pod, a forwarder on the KVMI socket QEMU is pointed at,
// and the node's bridge (another process on the node; here in the same test process) listing the
// VM with its VMI namespace/name from the moment the domain is defined, then hooked through the
// forwarder with the pod's own cookie.
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it, vi } from "vitest";
import { create } from "@bufbuild/protobuf";
import { credentials, makeGenericClientConstructor } from "@grpc/grpc-js";
import type { Client, ServiceError } from "@grpc/grpc-js";
import { silentLogger } from "@kvmi/kvm-bridge";
import { createEmulatedVm } from "@kvmi/kvm-bridge/emulator";
import { startBridge } from "../bridge.js";
import { loadConfigOrThrow } from "../config/index.js";
import { createServiceDefinition } from "../rpc/service-definition.js";
import { DomainHookService, MutateDomainRequestSchema, SidecarContextSchema } from "./gen/kubevirt/hooks/plugins/v1alpha1/api_pb.js";
import { Callbacks, OnDefineDomainParamsSchema, ShutdownParamsSchema } from "./gen/kubevirt/hooks/v1alpha3/api_v1alpha3_pb.js";
import { main } from "./sidecar.js";

const root = mkdtempSync(join(tmpdir(), "kvmi-sidecar-node-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const DOMAIN_UUID = "5b8a3c7e-1d2f-4e6a-9b0c-7d8e9f0a1b2c";

describe("kvmi-kubevirt-sidecar --node-bridge", () => {
  it("announces the VM to the node bridge, forwards QEMU's connection, and stops on Shutdown", async () => {
    const forwardSocket = join(root, "node", "forward.sock");
    const bridge = await startBridge({
      config: loadConfigOrThrow({
        argv: ["--grpc-listen", `unix:${join(root, "grpc.sock")}`, "--kvmi-listen", `unix:${join(root, "node", "kvmi.sock")}`, "--forward-listen", `unix:${forwardSocket}`, "--metrics-listen", "off", "--log-level", "error"],
        env: {},
        cwd: root,
      }),
      logger: silentLogger,
    });
    const volume = join(root, "hook-sidecar-sockets");
    const sidecarView = join(volume, "hook-sidecar-0");
    mkdirSync(sidecarView, { recursive: true });
    let signal: ((s: string) => void) | undefined;
    const exit = main(["--hooks-dir", sidecarView, "--compute-hooks-dir", volume, "--node-bridge", `unix:${forwardSocket}`, "--connect-deadline-seconds", "30", "--", "--log-level", "error"], {
      // The image's defaults for the bridge (plaintext gRPC on 0.0.0.0) must not stop a forwarder.
      env: { CONTAINER_NAME: "hook-sidecar-0", POD_NAME: "virt-launcher-vm-1-x7k2p", KVMI_BRIDGE_GRPC_LISTEN: "0.0.0.0:50051" },
      stdout: () => undefined,
      stderr: () => undefined,
      onSignal: (handler) => {
        signal = handler;
        return () => (signal = undefined);
      },
    });
    const clients: Client[] = [];
    try {
      await vi.waitFor(() => expect(signal).toBeTypeOf("function"), { timeout: 10_000, interval: 50 });
      const Ctor = makeGenericClientConstructor(createServiceDefinition(Callbacks) as never, "Callbacks");
      const client = new Ctor(`unix:${join(sidecarView, "kvmi-bridge-hook-sidecar-0.sock")}`, credentials.createInsecure()) as Client & Record<string, (...a: unknown[]) => void>;
      clients.push(client);
      const call = (method: string, request: unknown): Promise<{ domainXML: Uint8Array }> =>
        new Promise((resolve, reject) => client[method]!(request, { deadline: Date.now() + 5_000 }, (e: ServiceError | null, r: never) => (e ? reject(e) : resolve(r))));
      const vmi = { metadata: { namespace: "team-a", name: "vm-1" } };
      const defined = await call("onDefineDomain", create(OnDefineDomainParamsSchema, { domainXML: readFileSync(new URL("./testdata/kubevirt-domain.xml", import.meta.url)), vmi: new TextEncoder().encode(JSON.stringify(vmi)) }));
      // virt-launcher defines the domain again (and the migration target's pod does the same): one announcement.
      await call("onDefineDomain", create(OnDefineDomainParamsSchema, { domainXML: defined.domainXML, vmi: new TextEncoder().encode(JSON.stringify(vmi)) }));
      const origin = { namespace: "team-a", name: "vm-1", pod: "virt-launcher-vm-1-x7k2p" };
      await vi.waitFor(() => expect(bridge.registry.get(DOMAIN_UUID)).toMatchObject({ state: "awaiting-connection", origin }), { timeout: 10_000, interval: 50 });

      const xml = new TextDecoder().decode(defined.domainXML);
      const socketPath = /path=([^,"]+)/.exec(xml)![1]!;
      const secretFile = /file=([^,"]+)/.exec(xml)![1]!;
      expect(socketPath).toBe(join(volume, "hook-sidecar-0", "kvmi", "kvmi.sock"));
      const vm = createEmulatedVm({ kind: "unix", path: socketPath }, { uuid: DOMAIN_UUID, secret: readFileSync(secretFile), reconnectMs: 100, workload: false });
      vm.start();
      try {
        await vi.waitFor(() => expect(bridge.registry.get(DOMAIN_UUID)).toMatchObject({ state: "hooked", generation: 1, origin, peer: `forwarder:unix:${forwardSocket}` }), { timeout: 10_000, interval: 50 });
        await call("shutdown", create(ShutdownParamsSchema, {}));
        expect(await exit).toBe(0);
        // The forwarder is gone with the sidecar: the node bridge saw the KVMI socket close.
        await vi.waitFor(() => expect(bridge.registry.get(DOMAIN_UUID)?.state).toBe("unhooked"), { timeout: 10_000, interval: 50 });
      } finally {
        await vm.stop();
      }
    } finally {
      for (const c of clients) c.close();
      signal?.("SIGTERM");
      await exit;
      await bridge.stop();
    }
  }, 40_000);
});

describe("kvmi-kubevirt-sidecar --plugin --node-bridge (KubeVirt v1.9+)", () => {
  it("MutateDomain at boot and on the migration target: one announcement, QEMU hooked through the forwarder; SIGTERM stops it", async () => {
    const forwardSocket = join(root, "plugin-node", "forward.sock");
    const bridge = await startBridge({
      config: loadConfigOrThrow({
        argv: ["--grpc-listen", `unix:${join(root, "plugin-grpc.sock")}`, "--kvmi-listen", `unix:${join(root, "plugin-node", "kvmi.sock")}`, "--forward-listen", `unix:${forwardSocket}`, "--metrics-listen", "off", "--log-level", "error"],
        env: {},
        cwd: root,
      }),
      logger: silentLogger,
    });
    // The plugin directory: the same path in the sidecar and the compute container.
    const pluginDir = join(root, "kubevirt-plugin", "kvmi-bridge");
    let signal: ((s: string) => void) | undefined;
    const exit = main(["--plugin", "kvmi-bridge", "--plugin-dir", pluginDir, "--node-bridge", `unix:${forwardSocket}`, "--", "--log-level", "error"], {
      env: { POD_NAME: "virt-launcher-vm-2-abcde" },
      stdout: () => undefined,
      stderr: () => undefined,
      onSignal: (handler) => {
        signal = handler;
        return () => (signal = undefined);
      },
    });
    const clients: Client[] = [];
    try {
      await vi.waitFor(() => expect(signal).toBeTypeOf("function"), { timeout: 10_000, interval: 50 });
      const Ctor = makeGenericClientConstructor(createServiceDefinition(DomainHookService) as never, "DomainHookService");
      const client = new Ctor(`unix:${join(pluginDir, "kvmi-bridge.sock")}`, credentials.createInsecure()) as Client & Record<string, (...a: unknown[]) => void>;
      clients.push(client);
      const mutate = (domain: Uint8Array, context: string): Promise<{ domain: Uint8Array }> =>
        new Promise((resolve, reject) =>
          client.mutateDomain!(
            create(MutateDomainRequestSchema, { domainType: "libvirt", domain, vmi: new TextEncoder().encode(JSON.stringify({ metadata: { namespace: "team-b", name: "vm-2" } })), sidecarContext: create(SidecarContextSchema, { invocationContext: context }) }),
            { deadline: Date.now() + 5_000 },
            (e: ServiceError | null, r: never) => (e ? reject(e) : resolve(r)),
          ),
        );
      const booted = await mutate(readFileSync(new URL("./testdata/kubevirt-domain.xml", import.meta.url)), "Boot");
      const again = await mutate(booted.domain, "MigrationTarget");
      expect(Buffer.from(again.domain).equals(Buffer.from(booted.domain))).toBe(true);
      const xml = new TextDecoder().decode(booted.domain);
      const socketPath = /path=([^,"]+)/.exec(xml)![1]!;
      expect(socketPath).toBe(join(pluginDir, "kvmi", "kvmi.sock"));
      const origin = { namespace: "team-b", name: "vm-2", pod: "virt-launcher-vm-2-abcde" };
      await vi.waitFor(() => expect(bridge.registry.get(DOMAIN_UUID)).toMatchObject({ state: "awaiting-connection", origin }), { timeout: 10_000, interval: 50 });
      const vm = createEmulatedVm({ kind: "unix", path: socketPath }, { uuid: DOMAIN_UUID, secret: readFileSync(/file=([^,"]+)/.exec(xml)![1]!), reconnectMs: 100, workload: false });
      vm.start();
      try {
        await vi.waitFor(() => expect(bridge.registry.get(DOMAIN_UUID)).toMatchObject({ state: "hooked", generation: 1, origin }), { timeout: 10_000, interval: 50 });
        signal!("SIGTERM");
        expect(await exit).toBe(0);
      } finally {
        await vm.stop();
      }
    } finally {
      for (const c of clients) c.close();
      signal?.("SIGTERM");
      await exit;
      await bridge.stop();
    }
  }, 40_000);
});
