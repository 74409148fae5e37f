// SPDX-License-Identifier: Apache-2.0
/**
 * gRPC server reflection (grpcurl, Postman, grpcui) fed from the protobuf-es descriptors that are
 * already compiled into `@kvmi/proto`, so reflection always describes exactly the code that runs.
 *
 * `@grpc/reflection` 1.0 takes a proto-loader `PackageDefinition`, but it only reads the
 * serialized `FileDescriptorProto`s of each entry (`fileDescriptorProtos`). We therefore hand it
 * one entry holding every file of the transitive import closure, encoded by protobuf-es.
 *
 * @see https://github.com/grpc/grpc/blob/master/doc/server-reflection.md
 */
import { toBinary } from "@bufbuild/protobuf";
import type { DescFile } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { ReflectionService } from "@grpc/reflection";
import { service as healthServiceDefinition } from "grpc-health-check";

type PackageDefinition = ConstructorParameters<typeof ReflectionService>[0];

/**
 * Returns the given files and everything they import, dependencies first, each exactly once (by
 * file name), as serialized `google.protobuf.FileDescriptorProto`s.
 */
export function fileDescriptorProtos(files: readonly DescFile[]): Buffer[] {
  const seen = new Set<string>();
  const out: Buffer[] = [];
  const visit = (file: DescFile): void => {
    if (seen.has(file.proto.name)) return;
    seen.add(file.proto.name);
    for (const dependency of file.dependencies) visit(dependency);
    const bytes = toBinary(FileDescriptorProtoSchema, file.proto);
    out.push(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
  };
  for (const file of files) visit(file);
  return out;
}

/**
 * The descriptors of `grpc/health/v1/health.proto` as grpc-health-check loaded them, so that
 * reflection can describe the health service too.
 */
function healthFileDescriptorProtos(): Buffer[] {
  const anyMethod = Object.values(healthServiceDefinition)[0];
  return anyMethod?.requestType.fileDescriptorProtos ?? [];
}

/**
 * Creates the reflection service (v1 and v1alpha) for the given protobuf-es files, e.g.
 * `[file_kvmi_v1_introspection_service]`, plus the health service. Add it with
 * `reflection.addToServer(server)`.
 *
 * @param files Generated `file_*` descriptors; their imports are included automatically.
 */
export function createReflectionService(files: readonly DescFile[]): ReflectionService {
  const fileDescriptors = [...fileDescriptorProtos(files), ...healthFileDescriptorProtos()];
  // One entry is enough: ReflectionService only collects `fileDescriptorProtos` from each value
  // (reflection-v1.js), de-duplicating files by name. The entry is shaped as proto-loader's
  // EnumTypeDefinition because that is the variant without serializer functions.
  const definition: PackageDefinition = {
    "kvmi-bridge.descriptors": {
      format: "Protocol Buffer 3 EnumDescriptorProto",
      type: {},
      fileDescriptorProtos: fileDescriptors,
    },
  };
  return new ReflectionService(definition);
}
