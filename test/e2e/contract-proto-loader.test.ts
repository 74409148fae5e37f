// SPDX-License-Identifier: Apache-2.0
// The .proto files are a contract others can use: a client built from them alone, with
// @grpc/proto-loader (no generated code, no SDK), lists VMs and reads guest memory against a real
// bridge, and its errors carry the standard google.rpc details any gRPC stack can decode.
import { join } from "node:path";
import { credentials, loadPackageDefinition, Metadata } from "@grpc/grpc-js";
import type { Client, GrpcObject, ServiceClientConstructor, ServiceError } from "@grpc/grpc-js";
import { loadSync } from "@grpc/proto-loader";
import { fromBinary } from "@bufbuild/protobuf";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import { BadRequestSchema, ErrorInfoSchema, StatusSchema } from "@kvmi/proto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { guestModel } from "@kvmi/kvm-bridge/emulator";
import { REPO_ROOT, startClientsBridge } from "../support/clients-harness.js";
import type { ClientsBridge } from "../support/clients-harness.js";

let bridge: ClientsBridge;
let stub: Client & Record<string, (...args: unknown[]) => unknown>;
let root: GrpcObject;

beforeAll(async () => {
  bridge = await startClientsBridge({ vms: [{ name: "contract-vm", vcpus: 1, workload: { tickIntervalMs: 0 } }] });
  const definition = loadSync(join(REPO_ROOT, "proto/kvmi/v1/introspection_service.proto"), {
    includeDirs: [join(REPO_ROOT, "proto")],
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  root = loadPackageDefinition(definition);
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

describe("a client built from the .proto files alone", () => {
  it("lists VMs", async () => {
    const response = await call<{ vms: Array<Record<string, unknown>>; nextPageToken: string }>("ListVms", { pageSize: 10 });
    expect(response.nextPageToken).toBe("");
    expect(response.vms).toHaveLength(1);
    expect(response.vms[0]).toMatchObject({
      name: `vms/${bridge.vms[0]!.uuid}`,
      displayName: "contract-vm",
      state: "STATE_HOOKED",
      vcpuCount: 1,
      dialect: "v9",
      generation: "1",
    });
  });

  it("reads guest memory, physical and virtual", async () => {
    const vm = `vms/${bridge.vms[0]!.uuid}`;
    const page = await call<{ data: Buffer }>("ReadPhysicalMemory", { vm, gpa: "4096", size: 64 });
    expect(page.data).toBeInstanceOf(Buffer);
    expect(page.data.length).toBe(64);
    const truth = bridge.vms[0]!.guest.memory.read(4096n, 64);
    expect(truth.ok && new Uint8Array(page.data)).toEqual(truth.ok && truth.bytes);
    const batch = await call<{ results: Array<{ data?: Buffer; result: string; holes: unknown[] }> }>("BatchReadMemory", {
      vm,
      ranges: [{ address: guestModel.LINUX_BANNER_GVA.toString(), length: "13", space: "ADDRESS_SPACE_VIRTUAL", vcpu: 0 }],
    });
    expect(batch.results[0]!.result).toBe("data");
    expect(batch.results[0]!.data!.toString()).toBe("Linux version");
    expect(batch.results[0]!.holes).toEqual([]);
  });

  it("gets errors with google.rpc.ErrorInfo in grpc-status-details-bin", async () => {
    const err = await call("ReadPhysicalMemory", { vm: `vms/${bridge.vms[0]!.uuid}`, gpa: "4095", size: 2 }).catch((e: ServiceError) => e);
    expect((err as ServiceError).code).toBe(3);
    const raw = (err as ServiceError).metadata.get("grpc-status-details-bin")[0] as Buffer;
    // Decoded with the vendored google.rpc schemas, as any language's google.rpc bindings would.
    const status = fromBinary(StatusSchema, raw);
    expect(status.code).toBe(3);
    const info = status.details.map((any) => anyUnpack(any, ErrorInfoSchema)).find((x) => x !== undefined)!;
    expect(info).toMatchObject({ reason: "KVMI_INVALID_ARGUMENT", domain: "kvmi.v1.IntrospectionService" });
    expect(info.metadata["command"]).toBe("KVMI_VM_READ_PHYSICAL");
    const bad = status.details.map((any) => anyUnpack(any, BadRequestSchema)).find((x) => x !== undefined)!;
    expect(bad.fieldViolations[0]?.field).toBe("size");
  });
});
