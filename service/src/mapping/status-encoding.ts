// SPDX-License-Identifier: Apache-2.0
/**
 * The encoder of the status mapping: a {@link MappedError} (status-table.ts, status.ts) becomes a
 * `google.rpc.Status` with ErrorInfo first and the other details after it (AIP-193), and for
 * grpc-js a status object whose `grpc-status-details-bin` trailer carries that message in binary.
 * The matching decoder is `@kvmi/proto/status-details`, shared with the SDK.
 */
import { create, toBinary } from "@bufbuild/protobuf";
import { anyPack, durationFromMs } from "@bufbuild/protobuf/wkt";
import type { Any } from "@bufbuild/protobuf/wkt";
import { Metadata } from "@grpc/grpc-js";
import type { status as GrpcCode, StatusObject } from "@grpc/grpc-js";
import {
  BadRequest_FieldViolationSchema,
  BadRequestSchema,
  ErrorInfoSchema,
  PreconditionFailure_ViolationSchema,
  PreconditionFailureSchema,
  QuotaFailure_ViolationSchema,
  QuotaFailureSchema,
  ResourceInfoSchema,
  RetryInfoSchema,
  StatusSchema,
} from "@kvmi/proto";
import type { Status } from "@kvmi/proto";
import { ERROR_DOMAIN, STATUS_DETAILS_KEY } from "@kvmi/proto/status-details";
import { assertNever } from "./status-table.js";
import type { MappedError, StatusDetail } from "./status-table.js";

function packDetail(detail: StatusDetail): Any {
  switch (detail.kind) {
    case "badRequest":
      return anyPack(
        BadRequestSchema,
        create(BadRequestSchema, {
          fieldViolations: (detail.violations ?? [detail]).map((v) => create(BadRequest_FieldViolationSchema, { field: v.field, description: v.description })),
        }),
      );
    case "resourceInfo":
      return anyPack(
        ResourceInfoSchema,
        create(ResourceInfoSchema, {
          resourceType: detail.resourceType,
          resourceName: detail.resourceName,
          description: detail.description,
        }),
      );
    case "retryInfo":
      return anyPack(RetryInfoSchema, create(RetryInfoSchema, { retryDelay: durationFromMs(detail.delayMs) }));
    case "preconditionFailure":
      return anyPack(
        PreconditionFailureSchema,
        create(PreconditionFailureSchema, {
          violations: [
            create(PreconditionFailure_ViolationSchema, { type: detail.type, subject: detail.subject, description: detail.description }),
          ],
        }),
      );
    case "quotaFailure":
      return anyPack(
        QuotaFailureSchema,
        create(QuotaFailureSchema, { violations: [create(QuotaFailure_ViolationSchema, { subject: detail.subject, description: detail.description })] }),
      );
    default:
      return assertNever(detail);
  }
}

/** Builds the `google.rpc.Status` of a mapped error: ErrorInfo first, then the other details. */
export function mappedToProto(mapped: MappedError): Status {
  const errorInfo = create(ErrorInfoSchema, { reason: mapped.reason, domain: ERROR_DOMAIN, metadata: { ...mapped.metadata } });
  return create(StatusSchema, {
    code: mapped.code,
    message: mapped.message,
    details: [anyPack(ErrorInfoSchema, errorInfo), ...mapped.details.map(packDetail)],
  });
}

/**
 * What a grpc-js handler returns (`callback(status)`, `call.destroy(status)`) for a status: code,
 * message, and the `grpc-status-details-bin` trailer with the binary `google.rpc.Status`.
 */
export function grpcStatusObject(st: Status): StatusObject {
  const metadata = new Metadata();
  metadata.set(STATUS_DETAILS_KEY, Buffer.from(toBinary(StatusSchema, st)));
  return { code: st.code as GrpcCode, details: st.message, metadata };
}
