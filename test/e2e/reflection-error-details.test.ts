// SPDX-License-Identifier: Apache-2.0
// A client that knows the bridge only through server reflection (like grpcurl, or a dynamic client
// in any language) fetches the descriptors of google.rpc.Status and google.rpc.ErrorInfo from the
// bridge and decodes the details of a real error with them: no .proto file, no generated code.
import { join } from "node:path";
import { createRequire } from "node:module";
import { create, createFileRegistry, fromBinary } from "@bufbuild/protobuf";
import type { DescMessage, FileRegistry } from "@bufbuild/protobuf";
import { anyUnpack, FileDescriptorProtoSchema, FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import type { FileDescriptorProto } from "@bufbuild/protobuf/wkt";
import { credentials, loadPackageDefinition, Metadata } from "@grpc/grpc-js";
import type { ClientDuplexStream, GrpcObject, ServiceClientConstructor, ServiceError } from "@grpc/grpc-js";
import { loadSync } from "@grpc/proto-loader";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startClientsBridge } from "../support/clients-harness.js";
import type { ClientsBridge } from "../support/clients-harness.js";

let bridge: ClientsBridge;

beforeAll(async () => {
  bridge = await startClientsBridge({ vms: [{ name: "reflect-vm", vcpus: 1, workload: { tickIntervalMs: 0 } }] });
}, 30_000);

afterAll(async () => {
  await bridge?.stop();
});

type ReflectionResponse = { fileDescriptorResponse?: { fileDescriptorProto: Buffer[] }; errorResponse?: { errorMessage: string } };

/** A grpc.reflection.v1 client from the reflection proto @grpc/reflection ships. */
function reflectionClient(target: string): { ask(request: object): Promise<ReflectionResponse>; close(): void } {
  const require = createRequire(import.meta.url);
  const protoDir = join(require.resolve("@grpc/reflection/package.json"), "..", "build/proto");
  const definition = loadSync("grpc/reflection/v1/reflection.proto", { includeDirs: [protoDir], oneofs: true });
  const root = loadPackageDefinition(definition);
  const Service = (((root["grpc"] as GrpcObject)["reflection"] as GrpcObject)["v1"] as GrpcObject)["ServerReflection"] as ServiceClientConstructor;
  const client = new Service(target, credentials.createInsecure());
  const stream = (client as unknown as { ServerReflectionInfo(): ClientDuplexStream<object, ReflectionResponse> }).ServerReflectionInfo();
  const waiting: Array<(r: ReflectionResponse) => void> = [];
  stream.on("data", (r: ReflectionResponse) => waiting.shift()?.(r));
  stream.on("error", () => undefined);
  return {
    ask: (request) =>
      new Promise((resolve) => {
        waiting.push(resolve);
        stream.write(request);
      }),
    close: () => {
      stream.end();
      client.close();
    },
  };
}

/** Fetches the files defining `symbols` and every file it imports, as grpcurl does, into a registry. */
async function registryFor(ask: (request: object) => Promise<ReflectionResponse>, symbols: readonly string[]): Promise<FileRegistry> {
  const files = new Map<string, FileDescriptorProto>();
  const add = (response: ReflectionResponse): void => {
    expect(response.errorResponse?.errorMessage).toBeUndefined();
    for (const bytes of response.fileDescriptorResponse!.fileDescriptorProto) {
      const file = fromBinary(FileDescriptorProtoSchema, bytes);
      files.set(file.name, file);
    }
  };
  for (const symbol of symbols) add(await ask({ fileContainingSymbol: symbol }));
  for (let missing = [...files.values()].flatMap((f) => f.dependency).filter((d) => !files.has(d)); missing.length > 0; ) {
    for (const name of missing) add(await ask({ fileByFilename: name }));
    missing = [...files.values()].flatMap((f) => f.dependency).filter((d) => !files.has(d));
  }
  const ordered: FileDescriptorProto[] = [];
  const visit = (name: string): void => {
    const file = files.get(name)!;
    if (ordered.includes(file)) return;
    file.dependency.forEach(visit);
    ordered.push(file);
  };
  for (const name of files.keys()) visit(name);
  return createFileRegistry(create(FileDescriptorSetSchema, { file: ordered }));
}

describe("server reflection", () => {
  it("serves google/rpc/error_details.proto, so a reflection-only client decodes ErrorInfo", async () => {
    const reflection = reflectionClient(bridge.target);
    let registry: FileRegistry;
    try {
      registry = await registryFor(reflection.ask, ["google.rpc.Status", "google.rpc.ErrorInfo"]);
    } finally {
      reflection.close();
    }
    expect(registry.getFile("google/rpc/error_details.proto")).toBeDefined();
    const StatusDesc = registry.getMessage("google.rpc.Status") as DescMessage;
    expect(StatusDesc).toBeDefined();

    // A real error, through a client that only knows the method path and sends raw bytes.
    const { Client } = await import("@grpc/grpc-js");
    const client = new Client(bridge.target, credentials.createInsecure());
    const err = await new Promise<ServiceError>((resolve) =>
      client.makeUnaryRequest(
        "/kvmi.v1.IntrospectionService/GetVm",
        (b: Buffer) => b,
        (b: Buffer) => b,
        // GetVmRequest { vm (2): "vms/00000000-0000-4000-8000-000000000000" }, hand-encoded.
        Buffer.concat([Buffer.from([0x12, 40]), Buffer.from("vms/00000000-0000-4000-8000-000000000000")]),
        new Metadata(),
        (e) => resolve(e as ServiceError),
      ),
    );
    client.close();
    expect(err.code).toBe(5);
    const raw = err.metadata.get("grpc-status-details-bin")[0] as Buffer;
    const decoded = fromBinary(StatusDesc, raw) as unknown as { code: number; details: Parameters<typeof anyUnpack>[0][] };
    expect(decoded.code).toBe(5);
    const info = decoded.details.map((any) => anyUnpack(any, registry)).find((m) => m?.$typeName === "google.rpc.ErrorInfo") as
      | { reason: string; domain: string; metadata: Record<string, string> }
      | undefined;
    expect(info).toMatchObject({ reason: "VM_NOT_FOUND", domain: "kvmi.v1.IntrospectionService" });
  });
});
