// SPDX-License-Identifier: Apache-2.0
/**
 * `@kvmi/proto`: the kvmi.v1 gRPC API as protobuf-es v2 schemas and types.
 *
 * Everything here comes from `proto/gen/`, which `npm run generate` writes from
 * the `.proto` sources (never edit it by hand). Conventions §2 forbids
 * `export *` from *internal* modules; the generated files are not internal:
 * each one is the public, semver-governed image of one `.proto` file, checked
 * for compatibility by `npm run proto:breaking`. Re-exporting them wholesale
 * keeps this index in step with the API without a hand-kept list that could
 * drift.
 *
 * @see ../proto/kvmi/v1/introspection_service.proto
 */

// The service and its messages (end-user symbols first).
export * from "./gen/kvmi/v1/introspection_service_pb.js";
export * from "./gen/kvmi/v1/session_pb.js";
export * from "./gen/kvmi/v1/command_pb.js";
export * from "./gen/kvmi/v1/event_pb.js";
export * from "./gen/kvmi/v1/event_filter_pb.js";
export * from "./gen/kvmi/v1/memory_pb.js";
export * from "./gen/kvmi/v1/registers_pb.js";
export * from "./gen/kvmi/v1/vm_pb.js";
export * from "./gen/kvmi/v1/guest_effect_pb.js";

// google.rpc error model: Status and the error details (ErrorInfo, RetryInfo,
// BadRequest, ResourceInfo, ...) that every error status of the API carries.
export * from "./gen/google/rpc/status_pb.js";
export * from "./gen/google/rpc/error_details_pb.js";

// google.api.field_behavior annotations, for tooling that reads descriptors.
export * from "./gen/google/api/field_behavior_pb.js";
