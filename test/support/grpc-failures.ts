// SPDX-License-Identifier: Apache-2.0
/** gRPC failures as the tests read them: status code, message and the decoded `google.rpc` details. */
import { Metadata, status as GrpcStatus } from "@grpc/grpc-js";
import type { StatusObject } from "@grpc/grpc-js";
import { decodeStatus, ERROR_DOMAIN, readStatusDetails, STATUS_DETAILS_KEY } from "@kvmi/proto/status-details";
import type { StatusDetails } from "@kvmi/proto/status-details";
import type { Status } from "@kvmi/proto";
import { expect } from "vitest";

/** A failed call as a client sees it: the gRPC status plus the decoded google.rpc details. */
export interface GrpcFailure {
  readonly code: GrpcStatus;
  readonly message: string;
  readonly details: StatusDetails;
}

/** The rich status of a grpc-js trailer, read with the decoder the SDK uses. */
function parseStatusDetails(metadata: Metadata): StatusDetails | undefined {
  const value = metadata.get(STATUS_DETAILS_KEY)[0];
  const st = value instanceof Uint8Array ? decodeStatus(value) : undefined;
  return st === undefined ? undefined : readStatusDetails(st);
}

function failureOf(status: { code: number; details: string; metadata?: Metadata }): GrpcFailure {
  const details = status.metadata === undefined ? undefined : parseStatusDetails(status.metadata);
  if (details === undefined) throw new Error(`status ${GrpcStatus[status.code]} (${status.details}) carries no google.rpc.Status details`);
  // The rich status and the plain status must agree (AIP-193).
  expect(details.code).toBe(status.code);
  expect(details.domain).toBe(ERROR_DOMAIN);
  return { code: status.code, message: status.details, details };
}

/** Asserts that `promise` fails with `code` and returns the status with its decoded details. */
export async function expectGrpcError(promise: Promise<unknown>, code: GrpcStatus): Promise<GrpcFailure> {
  let error: unknown;
  try {
    const value = await promise;
    throw new Error(`expected ${GrpcStatus[code]}, but the call succeeded with ${describeValue(value)}`);
  } catch (err) {
    error = err;
  }
  const e = error as { code?: number; details?: string; metadata?: Metadata };
  if (typeof e.code !== "number" || !(e.metadata instanceof Metadata)) throw error;
  expect(GrpcStatus[e.code], `status message: ${e.details}`).toBe(GrpcStatus[code]);
  return failureOf({ code: e.code, details: e.details ?? "", metadata: e.metadata });
}

/** The decoded details of a stream's final status (which must carry them). */
export function streamFailure(status: StatusObject): GrpcFailure {
  return failureOf(status);
}

/** Decodes a `google.rpc.Status` carried inside a message (CommandResult.error, ReplyRejected.status). */
export function inlineFailure(st: Status): StatusDetails {
  const details = readStatusDetails(st);
  expect(details.domain).toBe(ERROR_DOMAIN);
  return details;
}

function describeValue(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) => (typeof v === "bigint" ? `${v}n` : v))?.slice(0, 300) ?? String(value);
}

