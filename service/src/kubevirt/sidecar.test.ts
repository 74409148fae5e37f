// SPDX-License-Identifier: Apache-2.0
// The whole sidecar, as in a virt-launcher pod: the hook volume is a temporary directory seen at
// two paths (the sidecar's subPath view and the compute container's view), virt-launcher is played
// over the hook socket, and an emulated QEMU is started from the arguments OnDefineDomain returned:
// it must reach the bridge through the compute-side socket path and pass the cookie check.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it, vi } from "vitest";
import { create } from "@bufbuild/protobuf";
import type { DescMessage, MessageShape } from "@bufbuild/protobuf";
import { credentials, makeGenericClientConstructor } from "@grpc/grpc-js";
import type { Client, ServiceError } from "@grpc/grpc-js";
import { createEmulatedVm, createSimulator } from "@kvmi/kvm-bridge/emulator";
import type { Simulator } from "@kvmi/kvm-bridge/emulator";
import { IntrospectionService, ListVmsRequestSchema, State } from "@kvmi/proto";
import type { ListVmsResponse } from "@kvmi/proto";
import { createServiceDefinition } from "../rpc/service-definition.js";
import { Info, InfoParamsSchema } from "./gen/kubevirt/hooks/info/api_info_pb.js";
import { Callbacks, OnDefineDomainParamsSchema, ShutdownParamsSchema } from "./gen/kubevirt/hooks/v1alpha3/api_v1alpha3_pb.js";
import { main } from "./sidecar.js";

const root = mkdtempSync(join(tmpdir(), "kvmi-sidecar-"));
const volume = join(root, "hook-sidecar-sockets"); // the emptyDir, as the compute container sees it
const sidecarView = join(volume, "hook-sidecar-0"); // the same, as the sidecar sees it (subPath)
mkdirSync(sidecarView, { recursive: true });
const clients: Client[] = [];
/** The firmware UUID in testdata/kubevirt-domain.xml's sysinfo. */
const DOMAIN_UUID = "5b8a3c7e-1d2f-4e6a-9b0c-7d8e9f0a1b2c";
const simulators: Simulator[] = [];

afterAll(async () => {
  for (const client of clients) client.close();
  await Promise.all(simulators.map((s) => s.stop()));
  rmSync(root, { recursive: true, force: true });
});

type Unary = <I extends DescMessage, O extends DescMessage>(method: string, request: MessageShape<I>) => Promise<MessageShape<O>>;

function dial(target: string, definition: object, name: string): Unary {
  const Ctor = makeGenericClientConstructor(definition as never, name);
  const client = new Ctor(target, credentials.createInsecure()) as Client & Record<string, (...args: unknown[]) => void>;
  clients.push(client);
  return (method, request) =>
    new Promise((resolve, reject) => {
      client[method]!(request, { deadline: Date.now() + 5_000 }, (error: ServiceError | null, response: never) => (error ? reject(error) : resolve(response)));
    });
}

/** What QEMU would take from the domain's qemu:commandline: the chardev path and the secret file. */
function qemuView(xml: string): { socketPath: string; secretFile: string; reconnectSeconds: number } {
  const values = [...xml.matchAll(/<qemu:arg value="([^"]*)"/g)].map((m) => m[1]!);
  const chardev = values[values.indexOf("-chardev") + 1]!;
  const secret = values.find((v) => v.startsWith("secret,"))!;
  return {
    socketPath: /path=([^,]+)/.exec(chardev)![1]!,
    reconnectSeconds: Number(/reconnect=(\d+)/.exec(chardev)![1]),
    secretFile: /file=([^,]+)/.exec(secret)![1]!,
  };
}

describe("kvmi-kubevirt-sidecar in a simulated virt-launcher pod", () => {
  it("serves hooks, points QEMU at its bridge with a per-pod cookie, and stops on Shutdown", async () => {
    const grpcSocket = join(root, "grpc.sock");
    const output: string[] = [];
    let signalHandler: ((signal: string) => void) | undefined;
    const exit = main(
      [
        "--hooks-dir", sidecarView,
        "--compute-hooks-dir", volume,
        "--", "--grpc-listen", `unix:${grpcSocket}`, "--metrics-listen", "off", "--log-level", "error",
      ],
      {
        env: {},
        stdout: (text) => void output.push(text),
        stderr: (text) => void output.push(text),
        onSignal: (handler) => {
          signalHandler = handler;
          return () => (signalHandler = undefined);
        },
      },
    );
    const hookSocket = join(sidecarView, "kvmi-bridge.sock");
    await vi.waitFor(() => expect(existsSync(hookSocket)).toBe(true), { timeout: 10_000, interval: 50 });
    expect(signalHandler).toBeTypeOf("function");

    // virt-launcher: Info, then OnDefineDomain with a VMI whose annotation lists us first.
    const info = await dial(`unix:${hookSocket}`, createServiceDefinition(Info), "Info")("info", create(InfoParamsSchema, {}));
    expect(info).toMatchObject({ versions: ["v1alpha3"], hookPoints: [{ name: "OnDefineDomain" }, { name: "Shutdown" }] });
    const vmi = { metadata: { namespace: "team-a", name: "vm-1", annotations: { "hooks.kubevirt.io/hookSidecars": JSON.stringify([{ image: "kvmi-bridge", command: ["kvmi-kubevirt-sidecar"] }]) } } };
    const callbacks = dial(`unix:${hookSocket}`, createServiceDefinition(Callbacks), "Callbacks");
    const defined = await callbacks("onDefineDomain", create(OnDefineDomainParamsSchema, {
      domainXML: readFileSync(new URL("./testdata/kubevirt-domain.xml", import.meta.url)),
      vmi: new TextEncoder().encode(JSON.stringify(vmi)),
    }));
    const qemu = qemuView(new TextDecoder().decode((defined as unknown as { domainXML: Uint8Array }).domainXML));
    expect(qemu).toEqual({
      socketPath: join(volume, "hook-sidecar-0", "kvmi", "kvmi.sock"),
      secretFile: join(volume, "hook-sidecar-0", "kvmi", "cookie"),
      reconnectSeconds: 1,
    });
    // The cookie is a fresh secret QEMU (another uid) can read; the KVMI socket is one level down.
    const cookie = readFileSync(qemu.secretFile);
    expect(cookie.toString("utf8")).toMatch(/^[0-9a-f]{64}$/);
    expect(statSync(qemu.secretFile).mode & 0o777).toBe(0o644);
    expect(statSync(qemu.socketPath).isSocket()).toBe(true);

    // The VM is listed from the hook call on, before QEMU connects: the domain's UUID (libvirt takes
    // the sysinfo UUID KubeVirt writes), the VMI's namespace/name.
    const listVms = dial(`unix:${grpcSocket}`, createServiceDefinition(IntrospectionService), "IntrospectionService");
    const announced = (await listVms("listVms", create(ListVmsRequestSchema, {}))) as ListVmsResponse;
    expect(announced.vms.map((vm) => [vm.uuid, vm.state, vm.origin?.namespace, vm.origin?.name])).toEqual([[DOMAIN_UUID, State.AWAITING_CONNECTION, "team-a", "vm-1"]]);

    // QEMU with the right cookie is hooked; one with a wrong cookie refuses the bridge.
    const vm = createEmulatedVm({ kind: "unix", path: qemu.socketPath }, { uuid: DOMAIN_UUID, secret: cookie, reconnectMs: 100, workload: false });
    simulators.push({ stop: () => vm.stop() } as unknown as Simulator);
    vm.start();
    const bad = createSimulator({ endpoint: { kind: "unix", path: qemu.socketPath }, vms: 1, secret: new TextEncoder().encode("wrong"), reconnectMs: 100, namePrefix: "impostor", workload: false });
    simulators.push(bad);
    bad.start();
    await vi.waitFor(
      async () => {
        const list = (await listVms("listVms", create(ListVmsRequestSchema, {}))) as ListVmsResponse;
        expect(list.vms.map((v) => [v.uuid, v.state, v.origin?.name])).toEqual([[DOMAIN_UUID, State.HOOKED, "vm-1"]]);
      },
      { timeout: 10_000, interval: 100 },
    );
    await new Promise((resolve) => setTimeout(resolve, 300)); // the impostor retried a few times by now
    const list = (await listVms("listVms", create(ListVmsRequestSchema, {}))) as ListVmsResponse;
    expect(list.vms.map((v) => v.uuid)).toEqual([DOMAIN_UUID]);
    await bad.stop();

    // virt-launcher is done with the VM: Shutdown stops the sidecar, which releases the VM.
    await callbacks("shutdown", create(ShutdownParamsSchema, {}));
    expect(await exit).toBe(0);
    expect(existsSync(hookSocket)).toBe(false);
    expect(signalHandler).toBeUndefined();
    expect(output.join("")).toBe("");

    // A restarted sidecar (same pod, same volume) keeps the cookie QEMU already loaded.
    let restartedSignal: ((signal: string) => void) | undefined;
    const restarted = main(["--hooks-dir", sidecarView, "--compute-hooks-dir", volume, "--", "--grpc-listen", `unix:${grpcSocket}`, "--metrics-listen", "off", "--log-level", "error"], {
      env: {},
      stdout: () => undefined,
      stderr: () => undefined,
      onSignal: (handler) => {
        restartedSignal = handler;
        return () => undefined;
      },
    });
    await vi.waitFor(() => expect(restartedSignal).toBeTypeOf("function"), { timeout: 10_000, interval: 50 });
    expect(readFileSync(qemu.secretFile).equals(cookie)).toBe(true);
    restartedSignal!("SIGTERM");
    expect(await restarted).toBe(0);
  }, 30_000);

  it("exits 2 with every problem for bad arguments, 0 for --help", async () => {
    const output: string[] = [];
    const io = { env: {}, stdout: (t: string) => void output.push(t), stderr: (t: string) => void output.push(t), onSignal: () => () => undefined };
    expect(await main(["--reconnect-seconds", "0", "--allow-event", "nope"], io)).toBe(2);
    expect(output.join("")).toMatch(/invalid arguments:\n {2}- --allow-event.*\n {2}- --reconnect-seconds/s);
    output.length = 0;
    expect(await main(["--hooks-dir", root, "--", "--max-vms", "0"], io)).toBe(2);
    expect(output.join("")).toMatch(/kvmi-bridge: invalid configuration/);
    output.length = 0;
    expect(await main(["-h"], io)).toBe(0);
    expect(output.join("")).toMatch(/^Usage: kvmi-kubevirt-sidecar/);
  });
});
