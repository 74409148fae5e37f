// SPDX-License-Identifier: Apache-2.0
// toSdkError / fromStatus against real `grpc-status-details-bin` bytes, built here with the
// vendored google.rpc schemas exactly as a server sends them (not with the bridge's code).
import { create, toBinary } from "@bufbuild/protobuf";
import { anyPack, durationFromMs } from "@bufbuild/protobuf/wkt";
import { Metadata } from "@grpc/grpc-js";
import {
  BadRequest_FieldViolationSchema,
  BadRequestSchema,
  DebugInfoSchema,
  ErrorInfoSchema,
  PreconditionFailure_ViolationSchema,
  PreconditionFailureSchema,
  ResourceInfoSchema,
  RetryInfoSchema,
  StatusSchema,
} from "@kvmi/proto";
import type { Status } from "@kvmi/proto";
import { describe, expect, it } from "vitest";
import {
  AbortedError,
  AlreadyExistsError,
  CancelledError,
  DataLossError,
  DeadlineExceededError,
  ERROR_DOMAIN,
  FailedPreconditionError,
  fromStatus,
  InternalError,
  InvalidArgumentError,
  isKvmiBridgeError,
  KvmiBridgeError,
  MemoryHoleError,
  NotFoundError,
  OutOfRangeError,
  PermissionDeniedError,
  ResourceExhaustedError,
  SessionClosedError,
  StatusCode,
  statusCodeName,
  toSdkError,
  UnauthenticatedError,
  UnavailableError,
  UnimplementedError,
  UnknownError,
} from "./errors.js";

function errorInfo(reason: string, metadata: Record<string, string>) {
  return anyPack(ErrorInfoSchema, create(ErrorInfoSchema, { reason, domain: ERROR_DOMAIN, metadata }));
}

/** A grpc-js ServiceError as the client library hands it over. */
function serviceError(status: Status, trailer: Uint8Array | undefined = toBinary(StatusSchema, status)) {
  const metadata = new Metadata();
  if (trailer !== undefined) metadata.set("grpc-status-details-bin", Buffer.from(trailer));
  return Object.assign(new Error(`${status.code} ${statusCodeName(status.code)}: ${status.message}`), {
    code: status.code,
    details: status.message,
    metadata,
  });
}

describe("toSdkError", () => {
  it("decodes ErrorInfo and BadRequest of an INVALID_ARGUMENT", () => {
    const status = create(StatusSchema, {
      code: StatusCode.INVALID_ARGUMENT,
      message: "the range must be 1..4096 bytes within one 4 KiB page",
      details: [
        errorInfo("KVMI_INVALID_ARGUMENT", { errno: "22", errnoName: "KVM_EINVAL", command: "KVMI_VM_READ_PHYSICAL", vm: "5b8a3c7e-1d2f-4e6a-9b0c-7d8e9f0a1b2c" }),
        anyPack(
          BadRequestSchema,
          create(BadRequestSchema, { fieldViolations: [create(BadRequest_FieldViolationSchema, { field: "size", description: "too big" })] }),
        ),
      ],
    });
    const err = toSdkError(serviceError(status));
    expect(err).toBeInstanceOf(InvalidArgumentError);
    expect(err).toBeInstanceOf(KvmiBridgeError);
    expect(err).toMatchObject({
      name: "InvalidArgumentError",
      code: 3,
      codeName: "INVALID_ARGUMENT",
      message: "the range must be 1..4096 bytes within one 4 KiB page",
      reason: "KVMI_INVALID_ARGUMENT",
      domain: ERROR_DOMAIN,
      errno: 22,
      errnoName: "KVM_EINVAL",
      command: "KVMI_VM_READ_PHYSICAL",
      vm: "5b8a3c7e-1d2f-4e6a-9b0c-7d8e9f0a1b2c",
      vcpu: undefined,
    });
    expect(err.details.fieldViolations).toEqual([{ field: "size", description: "too big" }]);
    expect(err.cause).toBeInstanceOf(Error);
  });

  it("decodes ResourceInfo, RetryInfo and PreconditionFailure, and the vCPU", () => {
    const notFound = toSdkError(
      serviceError(
        create(StatusSchema, {
          code: StatusCode.NOT_FOUND,
          message: "no such leaf",
          details: [
            errorInfo("KVMI_NOT_FOUND", { errno: "2", command: "KVMI_VCPU_GET_CPUID", vcpu: "3" }),
            anyPack(ResourceInfoSchema, create(ResourceInfoSchema, { resourceType: "CPUID leaf", resourceName: "vms/x/vcpus/3", description: "d" })),
          ],
        }),
      ),
    );
    expect(notFound).toBeInstanceOf(NotFoundError);
    expect(notFound.vcpu).toBe(3);
    expect(notFound.details.resourceInfo).toEqual({ resourceType: "CPUID leaf", resourceName: "vms/x/vcpus/3", owner: "", description: "d" });

    const again = toSdkError(
      serviceError(
        create(StatusSchema, {
          code: StatusCode.UNAVAILABLE,
          message: "retry shortly",
          details: [errorInfo("KVMI_TRY_AGAIN", {}), anyPack(RetryInfoSchema, create(RetryInfoSchema, { retryDelay: durationFromMs(1500) }))],
        }),
      ),
    );
    expect(again).toBeInstanceOf(UnavailableError);
    expect(again.details.retryDelayMs).toBe(1500);

    const busy = toSdkError(
      serviceError(
        create(StatusSchema, {
          code: StatusCode.FAILED_PRECONDITION,
          message: "a controller is attached",
          details: [
            errorInfo("CONTROLLER_PRESENT", { vm: "v" }),
            anyPack(
              PreconditionFailureSchema,
              create(PreconditionFailureSchema, { violations: [create(PreconditionFailure_ViolationSchema, { type: "CONTROLLER", subject: "vms/v", description: "d" })] }),
            ),
          ],
        }),
      ),
    );
    expect(busy).toBeInstanceOf(FailedPreconditionError);
    expect(busy.reason).toBe("CONTROLLER_PRESENT");
    expect(busy.details.preconditionViolations).toEqual([{ type: "CONTROLLER", subject: "vms/v", description: "d" }]);
  });

  it("ignores detail types it does not know", () => {
    const err = toSdkError(
      serviceError(
        create(StatusSchema, {
          code: StatusCode.INTERNAL,
          message: "internal error",
          details: [anyPack(DebugInfoSchema, create(DebugInfoSchema, { detail: "x" })), errorInfo("INTERNAL", {})],
        }),
      ),
    );
    expect(err).toBeInstanceOf(InternalError);
    expect(err.reason).toBe("INTERNAL");
  });

  it("falls back to the code and message without (valid) details", () => {
    const status = create(StatusSchema, { code: StatusCode.UNAVAILABLE, message: "No connection established" });
    const bare = toSdkError(serviceError(status, undefined));
    expect(bare).toBeInstanceOf(UnavailableError);
    expect(bare.message).toBe("No connection established");
    expect(bare.reason).toBeUndefined();
    expect(bare.details).toEqual({ fieldViolations: [], resourceInfo: undefined, retryDelayMs: undefined, preconditionViolations: [] });
    const garbage = toSdkError(serviceError(status, Uint8Array.of(0xff, 0xff, 0xff)));
    expect(garbage).toBeInstanceOf(UnavailableError);
    // A trailer whose code disagrees with the call's code is not trusted.
    const mismatched = toSdkError(serviceError(status, toBinary(StatusSchema, create(StatusSchema, { code: 5, message: "x" }))));
    expect(mismatched).toBeInstanceOf(UnavailableError);
  });

  it("maps aborts, SDK errors and anything else", () => {
    const controller = new AbortController();
    controller.abort();
    let abortError: unknown;
    try {
      controller.signal.throwIfAborted();
    } catch (e) {
      abortError = e;
    }
    expect(toSdkError(abortError)).toBeInstanceOf(CancelledError);
    const own = new NotFoundError({ code: 5, message: "x" });
    expect(toSdkError(own)).toBe(own);
    const unknown = toSdkError(new TypeError("boom"));
    expect(unknown).toBeInstanceOf(UnknownError);
    expect(unknown.cause).toBeInstanceOf(TypeError);
    expect(toSdkError("text").message).toBe("text");
  });
});

describe("fromStatus", () => {
  it("chooses the class by code", () => {
    const classes = [
      [1, CancelledError],
      [2, UnknownError],
      [3, InvalidArgumentError],
      [4, DeadlineExceededError],
      [5, NotFoundError],
      [6, AlreadyExistsError],
      [7, PermissionDeniedError],
      [8, ResourceExhaustedError],
      [9, FailedPreconditionError],
      [10, AbortedError],
      [11, OutOfRangeError],
      [12, UnimplementedError],
      [13, InternalError],
      [14, UnavailableError],
      [15, DataLossError],
      [16, UnauthenticatedError],
    ] as const;
    for (const [code, Class] of classes) {
      const err = fromStatus(create(StatusSchema, { code, message: "m" }));
      expect(err).toBeInstanceOf(Class);
      expect(err.name).toBe(Class.name);
      expect(err.codeName).toBe(statusCodeName(code));
    }
    expect(fromStatus(create(StatusSchema, { code: 99, message: "" })).constructor).toBe(KvmiBridgeError);
  });

  it("brands every SDK error, including the client-side ones", () => {
    const closed = new SessionClosedError({ code: 1, message: "released", reason: "SESSION_RELEASED" });
    expect(closed).toBeInstanceOf(CancelledError);
    expect(isKvmiBridgeError(closed)).toBe(true);
    const hole = new MemoryHoleError("hole", [{ address: 0n, length: 4096n, reason: "notPresent" }]);
    expect(hole).toBeInstanceOf(NotFoundError);
    expect(hole.reason).toBe("MEMORY_HOLE");
    expect(isKvmiBridgeError(new Error("x"))).toBe(false);
    expect(isKvmiBridgeError({ code: 5 })).toBe(false);
  });
});
