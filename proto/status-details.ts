// SPDX-License-Identifier: Apache-2.0
/**
 * `@kvmi/proto/status-details`: the one decoder of the bridge's rich error model, shared by the SDK
 * (`clients/sdk/errors.ts`) and by the service's own tests, so that what a client reads out of an
 * error is decoded exactly one way.
 *
 * Every error status of `kvmi.v1.IntrospectionService` carries a binary `google.rpc.Status` in the
 * `grpc-status-details-bin` trailer, and the same message travels inside responses
 * (CommandResult.error, ReplyRejected.status, MemoryRangeResult.error). Its details are
 * `google.rpc.ErrorInfo` (reason, domain, metadata `errno`/`errnoName`/`command`/`vm`/`vcpu`) and,
 * where they help, BadRequest, ResourceInfo, RetryInfo and PreconditionFailure (AIP-193; the table
 * of reasons is in docs/errors.md and introspection_service.proto).
 *
 * Hand-written, beside the generated code: it depends only on the generated schemas and
 * `@bufbuild/protobuf`, never on a gRPC runtime, so the SDK (which may import only @kvmi/proto) and
 * the service both can use it. The encoder stays in the service (`service/src/mapping/`).
 *
 * @see https://google.aip.dev/193
 */
import { fromBinary } from "@bufbuild/protobuf";
import { anyUnpack, durationMs } from "@bufbuild/protobuf/wkt";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  PreconditionFailureSchema,
  QuotaFailureSchema,
  ResourceInfoSchema,
  RetryInfoSchema,
} from "./gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "./gen/google/rpc/status_pb.js";
import type { Status } from "./gen/google/rpc/status_pb.js";

/** `google.rpc.ErrorInfo.domain` of every error the bridge sends. */
export const ERROR_DOMAIN = "kvmi.v1.IntrospectionService";

/** The trailer that carries the binary `google.rpc.Status` (gRPC richer error model). */
export const STATUS_DETAILS_KEY = "grpc-status-details-bin";

/** One `google.rpc.BadRequest.FieldViolation`: the request field at fault (proto name, e.g. `size`). */
export interface FieldViolation {
  readonly field: string;
  readonly description: string;
}

/** One `google.rpc.PreconditionFailure.Violation`, e.g. type `CONTROLLER` for a second controller. */
export interface PreconditionViolation {
  readonly type: string;
  readonly subject: string;
  readonly description: string;
}

/** `google.rpc.ResourceInfo`: what was not found (`kvmi.v1.Vm`, `guest physical page`, …). */
export interface ResourceInfo {
  readonly resourceType: string;
  readonly resourceName: string;
  readonly owner: string;
  readonly description: string;
}

/** Everything {@link readStatusDetails} reads out of a `google.rpc.Status`. */
export interface StatusDetails {
  /** The gRPC status code (numerically `google.rpc.Code`). */
  readonly code: number;
  readonly message: string;
  /** `ErrorInfo.reason` (`KVMI_NOT_FOUND`, `CONTROLLER_PRESENT`, …); undefined without ErrorInfo. */
  readonly reason: string | undefined;
  /** `ErrorInfo.domain`; {@link ERROR_DOMAIN} for the bridge's errors. */
  readonly domain: string | undefined;
  /** All of `ErrorInfo.metadata`, as sent. */
  readonly metadata: Readonly<Record<string, string>>;
  /** Positive KVM errno (`metadata.errno`), for errors the kernel returned. */
  readonly errno?: number;
  /** `metadata.errnoName`, e.g. `KVM_ENOENT`. */
  readonly errnoName?: string;
  /** `metadata.command`: the KVMI command, e.g. `KVMI_VM_READ_PHYSICAL`. */
  readonly command?: string;
  /** `metadata.vm`: the VM UUID. */
  readonly vm?: string;
  /** `metadata.vcpu`: the vCPU index. */
  readonly vcpu?: number;
  /** BadRequest field violations; empty when the status had none. */
  readonly fieldViolations: readonly FieldViolation[];
  /** ResourceInfo, when the status had one. */
  readonly resourceInfo?: ResourceInfo;
  /** RetryInfo.retry_delay in milliseconds, when the server suggested one. */
  readonly retryDelayMs?: number;
  /** PreconditionFailure violations; empty when the status had none. */
  readonly preconditionViolations: readonly PreconditionViolation[];
  /** google.rpc.QuotaFailure violations (RESOURCE_EXHAUSTED of a limit). */
  readonly quotaViolations?: ReadonlyArray<{ readonly subject: string; readonly description: string }>;
}

/**
 * Decodes a binary `google.rpc.Status` (the `grpc-status-details-bin` trailer value);
 * undefined when the bytes are not one.
 */
export function decodeStatus(bytes: Uint8Array): Status | undefined {
  try {
    // A plain view: decoding a Buffer would leave Buffers in the message's bytes fields.
    return fromBinary(StatusSchema, new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength));
  } catch {
    return undefined;
  }
}

/** A metadata value that is a non-negative decimal integer, else undefined. */
function count(value: string | undefined): number | undefined {
  return value !== undefined && /^\d+$/.test(value) ? Number(value) : undefined;
}

/**
 * Reads the rich error out of a `google.rpc.Status`. Detail types it does not know are skipped,
 * so a newer bridge with more details still decodes; a second ErrorInfo replaces the first.
 */
export function readStatusDetails(status: Status): StatusDetails {
  let reason: string | undefined;
  let domain: string | undefined;
  let metadata: Record<string, string> = {};
  const fieldViolations: FieldViolation[] = [];
  const preconditionViolations: PreconditionViolation[] = [];
  const quotaViolations: Array<{ subject: string; description: string }> = [];
  let resourceInfo: ResourceInfo | undefined;
  let retryDelayMs: number | undefined;
  for (const any of status.details) {
    const info = anyUnpack(any, ErrorInfoSchema);
    if (info !== undefined) {
      reason = info.reason || undefined;
      domain = info.domain || undefined;
      metadata = { ...info.metadata };
      continue;
    }
    const bad = anyUnpack(any, BadRequestSchema);
    if (bad !== undefined) {
      for (const v of bad.fieldViolations) fieldViolations.push({ field: v.field, description: v.description });
      continue;
    }
    const resource = anyUnpack(any, ResourceInfoSchema);
    if (resource !== undefined) {
      const { resourceType, resourceName, owner, description } = resource;
      resourceInfo = { resourceType, resourceName, owner, description };
      continue;
    }
    const retry = anyUnpack(any, RetryInfoSchema);
    if (retry !== undefined) {
      if (retry.retryDelay !== undefined) retryDelayMs = durationMs(retry.retryDelay);
      continue;
    }
    const quota = anyUnpack(any, QuotaFailureSchema);
    if (quota !== undefined) for (const v of quota.violations) quotaViolations.push({ subject: v.subject, description: v.description });
    const precondition = anyUnpack(any, PreconditionFailureSchema);
    if (precondition !== undefined) {
      for (const v of precondition.violations) preconditionViolations.push({ type: v.type, subject: v.subject, description: v.description });
    }
  }
  const errno = count(metadata["errno"]);
  const vcpu = count(metadata["vcpu"]);
  const errnoName = metadata["errnoName"];
  const command = metadata["command"];
  const vm = metadata["vm"];
  return {
    code: status.code,
    message: status.message,
    reason,
    domain,
    metadata,
    ...(errno !== undefined && { errno }),
    ...(errnoName !== undefined && { errnoName }),
    ...(command !== undefined && { command }),
    ...(vm !== undefined && { vm }),
    ...(vcpu !== undefined && { vcpu }),
    fieldViolations,
    ...(resourceInfo !== undefined && { resourceInfo }),
    ...(retryDelayMs !== undefined && { retryDelayMs }),
    preconditionViolations,
    ...(quotaViolations.length > 0 && { quotaViolations }),
  };
}
