// SPDX-License-Identifier: Apache-2.0
/**
 * `@kvmi/service/testing`: TEST-ONLY helpers shared by the service's own tests and the cross-package
 * tests in `test/`. Nothing here is used by the bridge itself.
 */

// A throw-away PKI generated with the openssl CLI at test time (no key is ever checked in).
export { createTestPki, requireOpenssl } from "./server/testdata/test-pki.js";
export type { TestKeyPair, TestPki } from "./server/testdata/test-pki.js";

// A grpc-js service definition of any protobuf-es service, from which tests and the bench build
// their raw gRPC clients (`makeGenericClientConstructor`).
export { createServiceDefinition } from "./rpc/service-definition.js";
export type { HandlerFor, ServiceDefinitionFor, ServiceImplementationFor } from "./rpc/service-definition.js";

// What one DumpMemory holds at most (its bulk quota lease), for tests of a client that stops reading.
export { dumpLeaseBytes } from "./rpc/dump-memory.js";
