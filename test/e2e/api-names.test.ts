// SPDX-License-Identifier: Apache-2.0
// Names server-side (proto/kvmi/v1/command.proto header, service/src/rpc/request-names.ts), seen
// from a client built from the .proto files alone, as any language would build one: VMs named by
// display name (`vms/-/by-name/NAME`) in every kind of RPC, the consistent `vm`/`vcpu` request
// fields beside the deprecated `name`, and clear errors for unknown and ambiguous names.
import { join } from "node:path";
import { credentials, loadPackageDefinition, Metadata } from "@grpc/grpc-js";
import type { Client, ClientDuplexStream, ClientReadableStream, GrpcObject, ServiceClientConstructor, ServiceError } from "@grpc/grpc-js";
import { loadSync } from "@grpc/proto-loader";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { EmulatedVm } from "@kvmi/kvm-bridge/emulator";
import { REPO_ROOT, startClientsBridge } from "../support/clients-harness.js";
import type { ClientsBridge } from "../support/clients-harness.js";

let bridge: ClientsBridge;
let alpha: EmulatedVm;
let twins: EmulatedVm[];
let stub: Client & Record<string, (...args: unknown[]) => unknown>;

beforeAll(async () => {
  bridge = await startClientsBridge({
    vms: [
      { name: "alpha", vcpus: 2, workload: { tickIntervalMs: 0 } },
      { name: "twin", vcpus: 1, workload: { tickIntervalMs: 0 } },
      { name: "twin", vcpus: 1, workload: { tickIntervalMs: 0 } },
    ],
  });
  [alpha, ...twins] = bridge.vms as EmulatedVm[];
  const definition = loadSync(join(REPO_ROOT, "proto/kvmi/v1/introspection_service.proto"), {
    includeDirs: [join(REPO_ROOT, "proto")],
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const root = loadPackageDefinition(definition);
  const Service = ((root["kvmi"] as GrpcObject)["v1"] as GrpcObject)["IntrospectionService"] as ServiceClientConstructor;
  stub = new Service(bridge.target, credentials.createInsecure()) as typeof stub;
}, 30_000);

afterAll(async () => {
  stub?.close();
  await bridge?.stop();
});

function call<T>(method: string, request: object): Promise<T> {
  return new Promise((resolve, reject) => {
    stub[method]!(request, new Metadata(), (err: ServiceError | null, response: T) => (err ? reject(err) : resolve(response)));
  });
}
const failure = (method: string, request: object): Promise<ServiceError> =>
  call(method, request).then(
    () => {
      throw new Error(`${method} succeeded`);
    },
    (err: ServiceError) => err,
  );

describe("vms/-/by-name/NAME", () => {
  it("names a VM in registry, command and memory RPCs, through the new and the deprecated fields", async () => {
    const name = `vms/${alpha.uuid}`;
    const [byVm, byLegacyName, version, regs, regsLegacy, memory] = await Promise.all([
      call<{ vm: { name: string } }>("GetVm", { vm: "vms/-/by-name/alpha" }),
      call<{ vm: { name: string } }>("GetVm", { name: "vms/-/by-name/alpha" }),
      call<{ version: number }>("GetVersion", { vm: "vms/-/by-name/alpha" }),
      call<{ regs: { rip: string } }>("GetRegisters", { vcpu: "vms/-/by-name/alpha/vcpus/0" }),
      call<{ regs: { rip: string } }>("GetRegisters", { name: `${name}/vcpus/0` }),
      call<{ data: Buffer }>("ReadPhysicalMemory", { vm: "vms/-/by-name/alpha", gpa: "4096", size: 16 }),
    ]);
    expect(byVm.vm.name).toBe(name);
    expect(byLegacyName.vm.name).toBe(name);
    expect(version.version).toBe(1);
    expect(regs.regs.rip).toBe(regsLegacy.regs.rip);
    const truth = alpha.guest.memory.read(4096n, 16);
    expect(truth.ok && new Uint8Array(memory.data)).toEqual(truth.ok && truth.bytes);
  });

  it("watches one VM by name", async () => {
    const stream = stub["WatchVms"]!({ vm: "vms/-/by-name/alpha" }) as ClientReadableStream<{ change: { type: string; vm: { name: string } } }>;
    const changes: Array<{ type: string; vm: { name: string } }> = [];
    stream.on("data", (d: { change: { type: string; vm: { name: string } } }) => changes.push(d.change));
    stream.on("error", () => undefined);
    // The bridge writes one EXISTING change per known VM at once; the others would follow at once too.
    await expect.poll(() => changes.length).toBeGreaterThan(0);
    await new Promise((r) => setTimeout(r, 300));
    stream.cancel();
    expect(changes).toEqual([expect.objectContaining({ type: "VM_CHANGE_TYPE_EXISTING", vm: expect.objectContaining({ name: `vms/${alpha.uuid}` }) })]);
  });

  it("attaches a session and runs its commands by name", async () => {
    const session = stub["Session"]!() as ClientDuplexStream<object, Record<string, { id?: string; [k: string]: unknown }>>;
    const responses: Array<Record<string, unknown>> = [];
    const next = (): Promise<Record<string, unknown>> =>
      new Promise((resolve, reject) => {
        if (responses.length > 0) return resolve(responses.shift()!);
        session.once("data", () => resolve(responses.shift()!));
        session.once("error", reject);
      });
    session.on("data", (r) => responses.push(r));
    session.write({ attach: { vm: "vms/-/by-name/alpha", role: "ROLE_OBSERVER" } });
    expect(await next()).toMatchObject({ message: "attached" });
    session.write({ command: { id: "1", getVcpuInfo: { vcpu: "vms/-/by-name/alpha/vcpus/0" } } });
    expect(await next()).toMatchObject({ message: "commandResult", commandResult: { id: "1", result: "getVcpuInfo" } });
    session.write({ release: {} });
    session.end();
  });

  it("answers NOT_FOUND for an unknown name and INVALID_ARGUMENT naming the candidates for an ambiguous one", async () => {
    const [unknown, ambiguous, disagree, unknownVcpu] = await Promise.all([
      failure("GetVm", { vm: "vms/-/by-name/nobody" }),
      failure("GetVersion", { vm: "vms/-/by-name/twin" }),
      failure("GetVm", { vm: `vms/${alpha.uuid}`, name: `vms/${twins[0]!.uuid}` }),
      failure("GetRegisters", { vcpu: "vms/-/by-name/nobody/vcpus/0" }),
    ]);
    expect(unknown.code).toBe(5);
    expect(unknown.details).toBe('no VM known to this bridge has the display name "nobody" (vm "vms/-/by-name/nobody")');
    expect(unknownVcpu.code).toBe(5);
    expect(ambiguous.code).toBe(3);
    expect(ambiguous.details).toMatch(/^display name "twin" is ambiguous: 2 VMs have it \(vms\/[0-9a-f-]{36}, vms\/[0-9a-f-]{36}\); name one by its UUID$/);
    for (const twin of twins) expect(ambiguous.details).toContain(twin.uuid);
    expect(disagree.code).toBe(3);
    expect(disagree.details).toMatch(/and the deprecated name .* disagree/);
  });
});
