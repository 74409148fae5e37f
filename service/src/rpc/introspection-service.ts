// SPDX-License-Identifier: Apache-2.0
/**
 * Assembles `kvmi.v1.IntrospectionService` from its parts: the registry RPCs, one unary RPC per
 * KVMI command, bulk memory reads, and the Session stream, each behind the authorization point.
 */
import type { ServerUnaryCall, ServerWritableStream, sendUnaryData, UntypedServiceImplementation } from "@grpc/grpc-js";
import { IntrospectionService } from "@kvmi/proto";
import { createServiceDefinition } from "./service-definition.js";
import { failStream, failure } from "./call-context.js";
import { guardImplementation } from "./authorization.js";
import type { RpcDeps } from "./call-context.js";
import { commandMappingByMethod } from "../mapping/commands.js";
import { commandErrorContext, commandHandlers } from "./command-rpcs.js";
import { batchReadHandler, dumpMemoryHandler } from "./memory-rpcs.js";
import { registryHandlers, watchVmsHandler } from "./registry-rpcs.js";
import { normalizeRequestNames } from "./request-names.js";
import { sessionHandler } from "./session-rpc.js";

/** The service definition and its implementation, ready for `server.addService()`. */
export function createIntrospectionService(deps: RpcDeps): {
  readonly definition: ReturnType<typeof createServiceDefinition<typeof IntrospectionService.method>>;
  readonly implementation: UntypedServiceImplementation;
} {
  const handlers: UntypedServiceImplementation = {
    ...commandHandlers(deps),
    ...registryHandlers(deps),
    watchVms: watchVmsHandler(deps),
    session: sessionHandler(deps),
    batchReadMemory: batchReadHandler(deps),
    dumpMemory: dumpMemoryHandler(deps),
  };
  const definition = createServiceDefinition(IntrospectionService);
  for (const method of IntrospectionService.methods) {
    if (handlers[method.localName] === undefined) throw new Error(`IntrospectionService.${method.name} has no handler`);
  }
  // Every handler behind the one authorization point (throws here for a method without a rule).
  const implementation = guardImplementation(IntrospectionService, handlers, deps, deps.access, (method, request) => {
    const mapping = commandMappingByMethod(method);
    return mapping === undefined ? {} : commandErrorContext(mapping, request);
  });
  // Display names and field aliases are resolved first, so that authorization sees the VM's real
  // resource name (request-names.ts). The Session stream normalizes its attach and each command
  // itself (session-rpc.ts).
  for (const method of IntrospectionService.methods) {
    const handler = implementation[method.localName];
    if (method.methodKind === "unary") implementation[method.localName] = withNormalizedNames(deps, method.localName, handler as UnaryHandler);
    if (method.methodKind === "server_streaming") implementation[method.localName] = withNormalizedNamesStream(deps, method.localName, handler as StreamHandler);
  }
  return { definition, implementation };
}

type UnaryHandler = (call: ServerUnaryCall<unknown, unknown>, callback: sendUnaryData<unknown>) => void;
type StreamHandler = (call: ServerWritableStream<unknown, unknown>) => void;

/** Resolves display names and field aliases of a unary request before its handler (request-names.ts). */
function withNormalizedNames(deps: RpcDeps, method: string, handler: UnaryHandler): UnaryHandler {
  return (call, callback) => {
    try {
      normalizeRequestNames(call.request, deps.registry);
    } catch (err) {
      callback(failure(deps, method, err));
      return;
    }
    handler(call, callback);
  };
}

/** The same for a server-streaming request. */
function withNormalizedNamesStream(deps: RpcDeps, method: string, handler: StreamHandler): StreamHandler {
  return (call) => {
    try {
      normalizeRequestNames(call.request, deps.registry);
    } catch (err) {
      failStream(call, failure(deps, method, err));
      return;
    }
    handler(call);
  };
}
