// SPDX-License-Identifier: Apache-2.0
// The sidecar against a stand-in for virt-launcher's hook manager (testdata/virt-launcher.ts, modelled
// on pkg/hooks/manager.go): discovery by polling the hook volume, Info with 1 s timeouts, only the
// hook points listed, OnDefineDomain repeated and chained through other sidecars, Shutdown.
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, describe, expect, it, vi } from "vitest";
import { create } from "@bufbuild/protobuf";
import { credentials, makeGenericClientConstructor } from "@grpc/grpc-js";
import type { Client, ServiceError } from "@grpc/grpc-js";
import { createEmulatedVm } from "@kvmi/kvm-bridge/emulator";
import { IntrospectionService, ListVmsRequestSchema, State } from "@kvmi/proto";
import type { ListVmsResponse, Vm } from "@kvmi/proto";
import { createServiceDefinition } from "../rpc/service-definition.js";
import { main } from "./sidecar.js";
import { VirtLauncherStandIn, dropQemuCommandline, startStrippingSidecar } from "./testdata/virt-launcher.js";

const root = mkdtempSync(join(tmpdir(), "kvmi-virt-launcher-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

const DOMAIN = readFileSync(new URL("./testdata/kubevirt-domain.xml", import.meta.url), "utf8");
const DOMAIN_UUID = "5b8a3c7e-1d2f-4e6a-9b0c-7d8e9f0a1b2c";
const VMI = { metadata: { namespace: "team-a", name: "vm-1" } };
let podCount = 0;

/** A pod's hook volume and one sidecar of this image as container `hook-sidecar-<index>`. */
function pod(): { volume: string; grpc: (index: number) => string; run: (index: number, extra?: string[]) => { exit: Promise<number>; stop: () => void } } {
  const volume = join(root, `pod-${podCount++}`);
  mkdirSync(volume, { recursive: true });
  const grpc = (index: number): string => join(volume, `grpc-${index}.sock`);
  return {
    volume,
    grpc,
    run: (index, extra = []) => {
      const view = join(volume, `hook-sidecar-${index}`);
      mkdirSync(view, { recursive: true });
      let signal: ((s: string) => void) | undefined;
      const exit = main([...extra, "--hooks-dir", view, "--compute-hooks-dir", volume, "--", "--grpc-listen", `unix:${grpc(index)}`, "--metrics-listen", "off", "--log-level", "error"], {
        env: { CONTAINER_NAME: `hook-sidecar-${index}` },
        stdout: () => undefined,
        stderr: () => undefined,
        onSignal: (handler) => {
          signal = handler;
          return () => (signal = undefined);
        },
      });
      const stop = (): void => signal?.("SIGTERM");
      cleanups.push(async () => {
        stop();
        await exit;
      });
      return { exit, stop };
    },
  };
}

async function listVms(grpcSocket: string): Promise<Vm[]> {
  const Ctor = makeGenericClientConstructor(createServiceDefinition(IntrospectionService) as never, "IntrospectionService");
  const client = new Ctor(`unix:${grpcSocket}`, credentials.createInsecure()) as Client & Record<string, (...a: unknown[]) => void>;
  try {
    const response = await new Promise<ListVmsResponse>((resolve, reject) =>
      client.listVms!(create(ListVmsRequestSchema, {}), { deadline: Date.now() + 5_000 }, (e: ServiceError | null, r: ListVmsResponse) => (e ? reject(e) : resolve(r))),
    );
    return response.vms;
  } finally {
    client.close();
  }
}

/** QEMU as the final domain XML tells it, or nothing if the arguments were lost. */
function startQemu(xml: string): (() => Promise<void>) | undefined {
  const path = /socket,id=kvmi-bridge-chardev,path=([^,"]+)/.exec(xml)?.[1];
  const secret = /secret,id=kvmi-bridge-secret,file=([^,"]+)/.exec(xml)?.[1];
  if (path === undefined || secret === undefined) return undefined;
  const vm = createEmulatedVm({ kind: "unix", path }, { uuid: DOMAIN_UUID, secret: readFileSync(secret), reconnectMs: 100, workload: false });
  vm.start();
  cleanups.push(() => vm.stop());
  return () => vm.stop();
}

describe("virt-launcher's hook manager and the sidecar", () => {
  it("is found by polling, is called only at the hook points it listed, answers repeated definitions the same, exits on Shutdown", async () => {
    const p = pod();
    const sidecar = p.run(0);
    const launcher = new VirtLauncherStandIn(p.volume);
    const found = await launcher.collect(1, 20_000);
    expect(found.map((s) => [s.socket.slice(p.volume.length), s.version, s.hookPoints.map((h) => h.name)])).toEqual([
      ["/hook-sidecar-0/kvmi-bridge-hook-sidecar-0.sock", "v1alpha3", ["OnDefineDomain", "Shutdown"]],
    ]);
    const first = await launcher.onDefineDomain(DOMAIN, VMI);
    // Defined again (a libvirt re-define, the migration target's call), also with its own output.
    expect(await launcher.onDefineDomain(DOMAIN, VMI)).toBe(first);
    expect(await launcher.onDefineDomain(first, VMI)).toBe(first);
    startQemu(first);
    await vi.waitFor(async () => expect((await listVms(p.grpc(0))).map((v) => [v.uuid, v.state, v.origin?.name])).toEqual([[DOMAIN_UUID, State.HOOKED, "vm-1"]]), {
      timeout: 10_000,
      interval: 100,
    });
    await launcher.shutdown();
    expect(await sidecar.exit).toBe(0);
    expect(launcher.calls.map((c) => c.hookPoint)).toEqual(["OnDefineDomain", "OnDefineDomain", "OnDefineDomain", "Shutdown"]);
  }, 40_000);

  it("two sidecars of this image are both collected; with the same socket file name virt-launcher would stall", async () => {
    const p = pod();
    p.run(0);
    p.run(1);
    const found = await new VirtLauncherStandIn(p.volume).collect(2, 20_000);
    expect(found.map((s) => s.socket.slice(p.volume.length)).sort()).toEqual(["/hook-sidecar-0/kvmi-bridge-hook-sidecar-0.sock", "/hook-sidecar-1/kvmi-bridge-hook-sidecar-1.sock"]);

    const q = pod();
    q.run(0, ["--hook-socket", "kvmi-bridge.sock"]);
    q.run(1, ["--hook-socket", "kvmi-bridge.sock"]);
    await new VirtLauncherStandIn(q.volume).collect(1, 20_000); // both are up
    await expect(new VirtLauncherStandIn(q.volume).collect(2, 3_000)).rejects.toThrow(/within given timeout/);
  }, 60_000);

  it("a sidecar after ours that drops <qemu:commandline>: QEMU never connects and the VM is reported NOT_CONNECTED with the reason", async () => {
    const p = pod();
    p.run(0, ["--connect-deadline-seconds", "1"]);
    // manager.go keeps sidecars in the order they first answered Info, whatever their index: let
    // ours be ready first, so that the other one runs after it.
    await new VirtLauncherStandIn(p.volume).collect(1, 20_000);
    mkdirSync(join(p.volume, "hook-sidecar-1"));
    const stopStripper = await startStrippingSidecar(join(p.volume, "hook-sidecar-1", "roundtrip.sock"));
    cleanups.push(stopStripper);
    const launcher = new VirtLauncherStandIn(p.volume);
    await launcher.collect(2, 20_000);
    const xml = await launcher.onDefineDomain(DOMAIN, VMI);
    expect(launcher.calls.map((c) => c.sidecar)).toEqual(["kvmi-bridge", "go-types-roundtrip"]);
    expect(xml).not.toContain("kvmi-bridge-chardev");
    expect(startQemu(xml)).toBeUndefined();
    await vi.waitFor(
      async () =>
        expect((await listVms(p.grpc(0))).map((v) => [v.uuid, v.state, v.origin?.name, v.problem])).toEqual([
          [DOMAIN_UUID, State.NOT_CONNECTED, "vm-1", expect.stringMatching(/did not connect.*<qemu:commandline>.*another hook sidecar/)],
        ]),
      { timeout: 10_000, interval: 100 },
    );
  }, 40_000);

  it("the same sidecar before ours: the arguments survive and the VM is hooked", async () => {
    const p = pod();
    mkdirSync(join(p.volume, "hook-sidecar-0"));
    const stopStripper = await startStrippingSidecar(join(p.volume, "hook-sidecar-0", "roundtrip.sock"));
    cleanups.push(stopStripper);
    p.run(1);
    const launcher = new VirtLauncherStandIn(p.volume);
    await launcher.collect(2, 20_000);
    const xml = await launcher.onDefineDomain(DOMAIN, VMI);
    expect(launcher.calls.map((c) => c.sidecar)).toEqual(["go-types-roundtrip", "kvmi-bridge"]);
    expect(dropQemuCommandline(xml)).not.toBe(xml);
    expect(startQemu(xml)).toBeTypeOf("function");
    await vi.waitFor(async () => expect((await listVms(p.grpc(1))).map((v) => [v.uuid, v.state])).toEqual([[DOMAIN_UUID, State.HOOKED]]), { timeout: 10_000, interval: 100 });
  }, 40_000);
});
