// SPDX-License-Identifier: Apache-2.0
/**
 * Assembles `kvmi.v1.IntrospectionService` from its parts: the registry RPCs, one unary RPC per
 * KVMI command, bulk memory reads, and the Session stream.
 */
import type { UntypedServiceImplementation } from "@grpc/grpc-js";
import { IntrospectionService } from "@kvmi/proto";
import { createServiceDefinition } from "./service-definition.js";
import type { RpcDeps } from "./call-context.js";
import { commandHandlers } from "./command-rpcs.js";
import { batchReadHandler, dumpMemoryHandler } from "./memory-rpcs.js";
import { registryHandlers, watchVmsHandler } from "./registry-rpcs.js";
import { sessionHandler } from "./session-rpc.js";

/** The service definition and its implementation, ready for `server.addService()`. */
export function createIntrospectionService(deps: RpcDeps): {
  readonly definition: ReturnType<typeof createServiceDefinition<typeof IntrospectionService.method>>;
  readonly implementation: UntypedServiceImplementation;
} {
  const implementation: UntypedServiceImplementation = {
    ...commandHandlers(deps),
    ...registryHandlers(deps),
    watchVms: watchVmsHandler(deps),
    session: sessionHandler(deps),
    batchReadMemory: batchReadHandler(deps),
    dumpMemory: dumpMemoryHandler(deps),
  };
  const definition = createServiceDefinition(IntrospectionService);
  for (const method of IntrospectionService.methods) {
    if (implementation[method.localName] === undefined) throw new Error(`IntrospectionService.${method.name} has no handler`);
  }
  return { definition, implementation };
}
