// SPDX-License-Identifier: Apache-2.0
/**
 * Builds grpc-js service definitions from protobuf-es v2 service descriptors.
 *
 * grpc-js has no code generator for protobuf-es v2, but a protobuf-es
 * `GenService` already holds everything grpc-js needs: the fully-qualified
 * service name, each method's name and kind, and the message schemas. This
 * module derives the `grpc.ServiceDefinition` from it, so the generated
 * `proto/gen` stays the single source of truth (no proto-loader at runtime).
 *
 * @see https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md (path = "/" service "/" method)
 */
import { fromBinary } from "@bufbuild/protobuf";
import type { DescMessage, MessageShape } from "@bufbuild/protobuf";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import { binaryCodec } from "@kvmi/proto/binary";
import type {
  handleBidiStreamingCall,
  handleClientStreamingCall,
  handleServerStreamingCall,
  handleUnaryCall,
  MethodDefinition,
} from "@grpc/grpc-js";
import { PreEncodedMessage } from "./bulk-encoding.js";

/** One method of a `GenService`: its kind and request/response schemas. */
type MethodShape = GenServiceMethods[string];

/** The request message type of a method. */
type RequestOf<M extends MethodShape> = MessageShape<M["input"]>;

/** The response message type of a method. */
type ResponseOf<M extends MethodShape> = MessageShape<M["output"]>;

/**
 * The grpc-js service definition of a protobuf-es service: one typed
 * `MethodDefinition` per method, keyed by the method's `localName`
 * (`getVm`); `originalName` holds the proto name (`GetVm`). Assignable to
 * `grpc.ServiceDefinition`, so it goes straight into `server.addService()`.
 */
export type ServiceDefinitionFor<S extends GenServiceMethods> = {
  readonly [K in keyof S]: MethodDefinition<RequestOf<S[K]>, ResponseOf<S[K]>>;
};

/**
 * The grpc-js handler type for one method, chosen by its `methodKind`.
 */
export type HandlerFor<M extends MethodShape> = M["methodKind"] extends "unary"
  ? handleUnaryCall<RequestOf<M>, ResponseOf<M>>
  : M["methodKind"] extends "server_streaming"
    ? handleServerStreamingCall<RequestOf<M>, ResponseOf<M>>
    : M["methodKind"] extends "client_streaming"
      ? handleClientStreamingCall<RequestOf<M>, ResponseOf<M>>
      : handleBidiStreamingCall<RequestOf<M>, ResponseOf<M>>;

/**
 * A typed implementation of a protobuf-es service for `server.addService()`:
 * one grpc-js handler per method, keyed by `localName`, e.g.
 * `ServiceImplementationFor<typeof IntrospectionService>`. grpc-js answers
 * methods left out of a `Partial<>` implementation with UNIMPLEMENTED.
 */
export type ServiceImplementationFor<Service extends { readonly method: GenServiceMethods }> = {
  [K in keyof Service["method"]]: HandlerFor<Service["method"][K]>;
};

/**
 * Creates the grpc-js service definition of a protobuf-es service.
 *
 * - `path` is `/<package>.<Service>/<Method>`, e.g. `/kvmi.v1.IntrospectionService/GetVm`.
 * - `requestStream`/`responseStream` follow the method's `methodKind`.
 * - Serialization is protobuf binary with the method's own input/output
 *   schemas; u64 fields stay `bigint`. Messages are encoded, and responses
 *   decoded, by `@kvmi/proto/binary` (the bytes and messages of protobuf-es,
 *   from generated code); requests, which come from clients the bridge does
 *   not trust, are decoded by protobuf-es itself (decision 0180). A
 *   {@link PreEncodedMessage} (the bulk memory responses) is written as it is.
 *
 * Deserializers throw on malformed bytes; grpc-js turns that into an error
 * status for the call, never a crash.
 *
 * @param service A generated service descriptor, e.g. `IntrospectionService` from `@kvmi/proto`.
 * @returns A definition for `server.addService()` or `makeGenericClientConstructor()`.
 */
export function createServiceDefinition<S extends GenServiceMethods>(
  service: GenService<S>,
): ServiceDefinitionFor<S> {
  const definition: Record<string, MethodDefinition<unknown, unknown>> = {};
  for (const method of service.methods) {
    const kind = method.methodKind;
    definition[method.localName] = {
      path: `/${service.typeName}/${method.name}`,
      requestStream: kind === "client_streaming" || kind === "bidi_streaming",
      responseStream: kind === "server_streaming" || kind === "bidi_streaming",
      requestSerialize: serializer(method.input),
      requestDeserialize: untrustedDeserializer(method.input),
      responseSerialize: serializer(method.output),
      responseDeserialize: deserializer(method.output),
      originalName: method.name,
    };
  }
  // The loop above builds exactly one entry per key of S (service.methods and
  // service.method describe the same methods), which the mapped type states.
  return definition as ServiceDefinitionFor<S>;
}

function serializer(schema: DescMessage): (value: unknown) => Buffer {
  const codec = binaryCodec(schema);
  return (value) => {
    // Bulk responses the bridge encoded around the KVMI reply buffers go to grpc-js as they are:
    // it only reads `byteLength` and calls `copy(framed, 5)`, which writes the parts (bulk-encoding.ts).
    if (value instanceof PreEncodedMessage) return value as unknown as Buffer;
    // Written straight into a Buffer of the exact size, which grpc-js takes as it is.
    return codec.encode(value as MessageShape<DescMessage>, Buffer.allocUnsafe) as Buffer;
  };
}

/** Responses, on the client side: from the bridge the client connected to. */
function deserializer(schema: DescMessage): (bytes: Buffer) => unknown {
  const codec = binaryCodec(schema);
  return (bytes) => codec.decode(bytes);
}

/** Requests, on the bridge's side: anyone who reaches the port sends them. */
function untrustedDeserializer(schema: DescMessage): (bytes: Buffer) => unknown {
  return (bytes) => fromBinary(schema, bytes);
}
