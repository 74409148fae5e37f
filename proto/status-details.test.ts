// SPDX-License-Identifier: Apache-2.0
/**
 * The shared decoder of the rich error model, on statuses built here by hand with protobuf-es (not
 * by the service's encoder): every detail type, metadata numbers, unknown details, a status
 * without ErrorInfo, and bytes that are not a status.
 */
import { create, toBinary } from "@bufbuild/protobuf";
import { anyPack, DurationSchema, TimestampSchema } from "@bufbuild/protobuf/wkt";
import { describe, expect, it } from "vitest";
import {
  BadRequest_FieldViolationSchema,
  BadRequestSchema,
  ErrorInfoSchema,
  PreconditionFailure_ViolationSchema,
  PreconditionFailureSchema,
  ResourceInfoSchema,
  RetryInfoSchema,
  StatusSchema,
} from "./index.js";
import { decodeStatus, ERROR_DOMAIN, readStatusDetails } from "./status-details.js";

const UUID = "7d3c1a52-4c1e-4b8e-9a57-0b7c1f7e2a10";

describe("readStatusDetails", () => {
  it("reads ErrorInfo and every detail the bridge sends", () => {
    const status = create(StatusSchema, {
      code: 5,
      message: "not backed",
      details: [
        anyPack(ErrorInfoSchema, create(ErrorInfoSchema, {
          reason: "KVMI_NOT_FOUND",
          domain: ERROR_DOMAIN,
          metadata: { errno: "2", errnoName: "KVM_ENOENT", command: "KVMI_VM_READ_PHYSICAL", vm: UUID, vcpu: "3" },
        })),
        anyPack(BadRequestSchema, create(BadRequestSchema, { fieldViolations: [create(BadRequest_FieldViolationSchema, { field: "size", description: "too big" })] })),
        anyPack(ResourceInfoSchema, create(ResourceInfoSchema, { resourceType: "guest physical page", resourceName: `vms/${UUID}`, owner: "o", description: "d" })),
        anyPack(RetryInfoSchema, create(RetryInfoSchema, { retryDelay: create(DurationSchema, { seconds: 1n, nanos: 500_000_000 }) })),
        anyPack(PreconditionFailureSchema, create(PreconditionFailureSchema, {
          violations: [create(PreconditionFailure_ViolationSchema, { type: "CONTROLLER", subject: `vms/${UUID}`, description: "taken" })],
        })),
      ],
    });
    expect(readStatusDetails(status)).toEqual({
      code: 5,
      message: "not backed",
      reason: "KVMI_NOT_FOUND",
      domain: ERROR_DOMAIN,
      metadata: { errno: "2", errnoName: "KVM_ENOENT", command: "KVMI_VM_READ_PHYSICAL", vm: UUID, vcpu: "3" },
      errno: 2,
      errnoName: "KVM_ENOENT",
      command: "KVMI_VM_READ_PHYSICAL",
      vm: UUID,
      vcpu: 3,
      fieldViolations: [{ field: "size", description: "too big" }],
      resourceInfo: { resourceType: "guest physical page", resourceName: `vms/${UUID}`, owner: "o", description: "d" },
      retryDelayMs: 1500,
      preconditionViolations: [{ type: "CONTROLLER", subject: `vms/${UUID}`, description: "taken" }],
    });
  });

  it("skips detail types it does not know and leaves out what is absent or not a number", () => {
    const status = create(StatusSchema, {
      code: 14,
      message: "m",
      details: [
        anyPack(TimestampSchema, create(TimestampSchema, { seconds: 1n })),
        anyPack(ErrorInfoSchema, create(ErrorInfoSchema, { reason: "R", domain: ERROR_DOMAIN, metadata: { errno: "-1", vcpu: "x" } })),
      ],
    });
    const details = readStatusDetails(status);
    expect(details).toMatchObject({ code: 14, reason: "R", metadata: { errno: "-1", vcpu: "x" }, fieldViolations: [], preconditionViolations: [] });
    for (const key of ["errno", "vcpu", "command", "vm", "errnoName", "resourceInfo", "retryDelayMs"]) expect(details).not.toHaveProperty(key);
  });

  it("has no reason or domain without ErrorInfo", () => {
    expect(readStatusDetails(create(StatusSchema, { code: 13, message: "x" }))).toMatchObject({ reason: undefined, domain: undefined, metadata: {} });
  });
});

describe("decodeStatus", () => {
  it("decodes the binary trailer value, from a Buffer too, and refuses bytes that are not a status", () => {
    const st = create(StatusSchema, { code: 3, message: "bad", details: [anyPack(ErrorInfoSchema, create(ErrorInfoSchema, { reason: "R" }))] });
    const bytes = toBinary(StatusSchema, st);
    expect(decodeStatus(bytes)).toEqual(st);
    const decoded = decodeStatus(Buffer.from(bytes))!;
    expect(readStatusDetails(decoded).reason).toBe("R");
    expect(Buffer.isBuffer(decoded.details[0]!.value)).toBe(false);
    expect(decodeStatus(new Uint8Array([0x0a, 0xff]))).toBeUndefined();
  });
});
