// SPDX-License-Identifier: Apache-2.0
/**
 * Assembles `kvmi.v1.IntrospectionService` from its parts: the registry RPCs, one unary RPC per
 * KVMI command, bulk memory reads, and the Session stream, each behind the authorization point.
 */
import type { UntypedServiceImplementation } from "@grpc/grpc-js";
import { IntrospectionService } from "@kvmi/proto";
import { createServiceDefinition } from "./service-definition.js";
import { guardImplementation } from "./authorization.js";
import type { RpcDeps } from "./call-context.js";
import { commandMappingByMethod } from "../mapping/commands.js";
import { commandErrorContext, commandHandlers } from "./command-rpcs.js";
import { batchReadHandler, dumpMemoryHandler } from "./memory-rpcs.js";
import { registryHandlers, watchVmsHandler } from "./registry-rpcs.js";
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
  return { definition, implementation };
}
