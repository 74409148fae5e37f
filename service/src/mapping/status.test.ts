// SPDX-License-Identifier: Apache-2.0
/**
 * The error table (conventions §5, §7 item 6): one case per row, asserting the gRPC code, the
 * ErrorInfo reason, domain and metadata, and the decoded details, through the real
 * `grpc-status-details-bin` trailer. Unknown errors give INTERNAL "internal error" without leaking.
 */
import { fromBinary } from "@bufbuild/protobuf";
import { anyIs } from "@bufbuild/protobuf/wkt";
import type { Metadata } from "@grpc/grpc-js";
import {
  KvmiArgumentError,
  KvmiProtocolError,
  KvmiRemoteError,
  KvmiTimeoutError,
  KvmiTransportError,
  KvmiUnsupportedError,
} from "@kvmi/kvm-bridge";
import type { KvmiErrorContext } from "@kvmi/kvm-bridge";
import { errno } from "@kvmi/kvm-bridge/wire";
import { ErrorInfoSchema, StatusSchema } from "@kvmi/proto";
import { decodeStatus, readStatusDetails } from "@kvmi/proto/status-details";
import type { StatusDetails } from "@kvmi/proto/status-details";
import { describe, expect, it } from "vitest";
import { BridgeError } from "./bridge-error.js";
import type { BridgeErrorCode } from "./bridge-error.js";
import {
  BRIDGE_ERROR_STATUS,
  ERROR_DOMAIN,
  GrpcCode,
  STATUS_DETAILS_KEY,
  statusToProto,
  toGrpcStatus,
} from "./status.js";
import { UUID, VCPU, VM } from "./test-support.js";

const VCPU_CTX = (command: string): KvmiErrorContext => ({ command, vm: UUID, vcpu: 2 });
const VM_CTX = (command: string): KvmiErrorContext => ({ command, vm: UUID });
const remote = (value: number, context: KvmiErrorContext) => new KvmiRemoteError(value, context);

interface Row {
  readonly name: string;
  readonly error: unknown;
  readonly context?: KvmiErrorContext;
  readonly code: GrpcCode;
  readonly reason: string;
  readonly metadata: Record<string, string>;
  readonly message?: RegExp | string;
  readonly expect?: Partial<Pick<StatusDetails, "fieldViolations" | "retryDelayMs" | "preconditionViolations">> & {
    /** The bridge never sets ResourceInfo.owner. */
    readonly resourceInfo?: Omit<NonNullable<StatusDetails["resourceInfo"]>, "owner">;
  };
}

const vcpuMd = (command: string, value?: number, errnoName?: string): Record<string, string> => ({
  ...(value !== undefined && { errno: String(value) }),
  ...(errnoName !== undefined && { errnoName }),
  command,
  vm: UUID,
  vcpu: "2",
});
const vmMd = (command: string, value?: number, errnoName?: string): Record<string, string> => ({
  ...(value !== undefined && { errno: String(value) }),
  ...(errnoName !== undefined && { errnoName }),
  command,
  vm: UUID,
});

const ROWS: Row[] = [
  // KVM errno rows (conventions §5 table).
  {
    name: "KVM_EINVAL (vCPU command: bad index or padding) -> INVALID_ARGUMENT + BadRequest(name)",
    error: remote(errno.KVM_EINVAL, VCPU_CTX("KVMI_VCPU_GET_INFO")),
    code: GrpcCode.INVALID_ARGUMENT,
    reason: "KVMI_INVALID_ARGUMENT",
    metadata: vcpuMd("KVMI_VCPU_GET_INFO", 22, "KVM_EINVAL"),
    message: "the kernel rejected an argument of KVMI_VCPU_GET_INFO",
    expect: { fieldViolations: [{ field: "name", description: "the kernel rejected an argument of KVMI_VCPU_GET_INFO" }] },
  },
  {
    name: "KVM_E2BIG -> INVALID_ARGUMENT + BadRequest",
    error: remote(errno.KVM_E2BIG, VM_CTX("KVMI_VM_CONTROL_CLEANUP")),
    code: GrpcCode.INVALID_ARGUMENT,
    reason: "KVMI_INVALID_ARGUMENT",
    metadata: vmMd("KVMI_VM_CONTROL_CLEANUP", 7, "KVM_E2BIG"),
    expect: { fieldViolations: [{ field: "vm", description: "the kernel rejected an argument of KVMI_VM_CONTROL_CLEANUP" }] },
  },
  {
    name: "KVM_EFAULT -> OUT_OF_RANGE",
    error: remote(errno.KVM_EFAULT, VM_CTX("KVMI_VM_READ_PHYSICAL")),
    code: GrpcCode.OUT_OF_RANGE,
    reason: "KVMI_BAD_GUEST_ADDRESS",
    metadata: vmMd("KVMI_VM_READ_PHYSICAL", 14, "KVM_EFAULT"),
  },
  {
    name: "KVM_ENOENT -> NOT_FOUND + ResourceInfo (GET_CPUID: missing leaf)",
    error: remote(errno.KVM_ENOENT, VCPU_CTX("KVMI_VCPU_GET_CPUID")),
    code: GrpcCode.NOT_FOUND,
    reason: "KVMI_NOT_FOUND",
    metadata: vcpuMd("KVMI_VCPU_GET_CPUID", 2, "KVM_ENOENT"),
    message: /no such CPUID leaf/,
    expect: { resourceInfo: { resourceType: "CPUID leaf", resourceName: VCPU, description: "the guest has no such CPUID leaf (function, index)" } },
  },
  {
    name: "KVM_ENOENT default -> NOT_FOUND + ResourceInfo",
    error: remote(errno.KVM_ENOENT, VM_CTX("KVMI_VM_GET_INFO")),
    code: GrpcCode.NOT_FOUND,
    reason: "KVMI_NOT_FOUND",
    metadata: vmMd("KVMI_VM_GET_INFO", 2, "KVM_ENOENT"),
    expect: {
      resourceInfo: { resourceType: "kvmi.v1.Vm", resourceName: VM, description: "KVMI_VM_GET_INFO named something the kernel does not have" },
    },
  },
  {
    name: "KVM_EPERM -> PERMISSION_DENIED",
    error: remote(errno.KVM_EPERM, VM_CTX("KVMI_VM_SET_PAGE_ACCESS")),
    code: GrpcCode.PERMISSION_DENIED,
    reason: "KVMI_NOT_ALLOWED",
    metadata: vmMd("KVMI_VM_SET_PAGE_ACCESS", 1, "KVM_EPERM"),
    message: /device manager has not allowed KVMI_VM_SET_PAGE_ACCESS/,
  },
  {
    name: "KVM_EOPNOTSUPP -> UNIMPLEMENTED",
    error: remote(errno.KVM_EOPNOTSUPP, VCPU_CTX("KVMI_VCPU_CONTROL_SINGLESTEP")),
    code: GrpcCode.UNIMPLEMENTED,
    reason: "KVMI_UNSUPPORTED",
    metadata: vcpuMd("KVMI_VCPU_CONTROL_SINGLESTEP", 95, "KVM_EOPNOTSUPP"),
    message: /cannot single-step/,
  },
  {
    name: "KVM_ENOSYS -> UNIMPLEMENTED",
    error: remote(errno.KVM_ENOSYS, VM_CTX("KVMI_VM_GET_MAX_GFN")),
    code: GrpcCode.UNIMPLEMENTED,
    reason: "KVMI_UNSUPPORTED",
    metadata: vmMd("KVMI_VM_GET_MAX_GFN", 1000, "KVM_ENOSYS"),
  },
  {
    name: "KVM_EBUSY -> FAILED_PRECONDITION",
    error: remote(errno.KVM_EBUSY, VCPU_CTX("KVMI_VCPU_PAUSE")),
    code: GrpcCode.FAILED_PRECONDITION,
    reason: "KVMI_BUSY",
    metadata: vcpuMd("KVMI_VCPU_PAUSE", 16, "KVM_EBUSY"),
    message: /more than 1001 pause requests/,
  },
  {
    name: "KVM_EAGAIN -> UNAVAILABLE + RetryInfo",
    error: remote(errno.KVM_EAGAIN, VCPU_CTX("KVMI_VCPU_GET_REGISTERS")),
    code: GrpcCode.UNAVAILABLE,
    reason: "KVMI_TRY_AGAIN",
    metadata: vcpuMd("KVMI_VCPU_GET_REGISTERS", 11, "KVM_EAGAIN"),
    message: /vCPU is not ready yet/,
    expect: { retryDelayMs: 100 },
  },
  {
    name: "KVM_ENOMEM -> RESOURCE_EXHAUSTED",
    error: remote(errno.KVM_ENOMEM, VCPU_CTX("KVMI_VCPU_GET_XSAVE")),
    code: GrpcCode.RESOURCE_EXHAUSTED,
    reason: "KVMI_OUT_OF_MEMORY",
    metadata: vcpuMd("KVMI_VCPU_GET_XSAVE", 12, "KVM_ENOMEM"),
  },
  {
    name: "any other errno -> INTERNAL KVMI_UNKNOWN_ERRNO",
    error: remote(38, VM_CTX("KVMI_VM_GET_INFO")),
    code: GrpcCode.INTERNAL,
    reason: "KVMI_UNKNOWN_ERRNO",
    metadata: vmMd("KVMI_VM_GET_INFO", 38),
    message: "the kernel answered KVMI_VM_GET_INFO with an unexpected error",
  },
  // Per-command overrides.
  {
    name: "SET_REGISTERS KVM_EOPNOTSUPP (no event pending) -> FAILED_PRECONDITION",
    error: remote(errno.KVM_EOPNOTSUPP, VCPU_CTX("KVMI_VCPU_SET_REGISTERS")),
    code: GrpcCode.FAILED_PRECONDITION,
    reason: "KVMI_NO_EVENT_PENDING",
    metadata: vcpuMd("KVMI_VCPU_SET_REGISTERS", 95, "KVM_EOPNOTSUPP"),
    message: /not waiting for an event reply/,
    expect: { preconditionViolations: [{ type: "KVMI_NO_EVENT_PENDING", subject: VCPU, description: expect.stringMatching(/not waiting/) as never }] },
  },
  {
    name: "READ_PHYSICAL KVM_ENOENT (unmapped guest page) -> NOT_FOUND",
    error: remote(errno.KVM_ENOENT, VM_CTX("KVMI_VM_READ_PHYSICAL")),
    code: GrpcCode.NOT_FOUND,
    reason: "KVMI_NOT_FOUND",
    metadata: vmMd("KVMI_VM_READ_PHYSICAL", 2, "KVM_ENOENT"),
    message: "the guest physical page is not backed by guest memory (no memslot, or at or above GetMaxGfn)",
    expect: { resourceInfo: expect.objectContaining({ resourceType: "guest physical page", resourceName: VM }) as never },
  },
  {
    name: "WRITE_PHYSICAL KVM_ENOENT (unmapped guest page) -> NOT_FOUND",
    error: remote(errno.KVM_ENOENT, VM_CTX("KVMI_VM_WRITE_PHYSICAL")),
    code: GrpcCode.NOT_FOUND,
    reason: "KVMI_NOT_FOUND",
    metadata: vmMd("KVMI_VM_WRITE_PHYSICAL", 2, "KVM_ENOENT"),
    message: /not backed by guest memory/,
    expect: { resourceInfo: expect.objectContaining({ resourceType: "guest physical page", resourceName: VM }) as never },
  },
  {
    name: "CONTROL_CR KVM_EINVAL -> INVALID_ARGUMENT + BadRequest(cr)",
    error: remote(errno.KVM_EINVAL, VCPU_CTX("KVMI_VCPU_CONTROL_CR")),
    code: GrpcCode.INVALID_ARGUMENT,
    reason: "KVMI_INVALID_ARGUMENT",
    metadata: vcpuMd("KVMI_VCPU_CONTROL_CR", 22, "KVM_EINVAL"),
    expect: { fieldViolations: [{ field: "cr", description: "the kernel rejected an argument of KVMI_VCPU_CONTROL_CR" }] },
  },
  {
    name: "CHECK_COMMAND KVM_ENOENT -> NOT_FOUND (unknown command)",
    error: remote(errno.KVM_ENOENT, VM_CTX("KVMI_VM_CHECK_COMMAND")),
    code: GrpcCode.NOT_FOUND,
    reason: "KVMI_NOT_FOUND",
    metadata: vmMd("KVMI_VM_CHECK_COMMAND", 2, "KVM_ENOENT"),
    expect: { resourceInfo: expect.objectContaining({ resourceType: "kvmi.v1.Command" }) as never },
  },
  // kvm-bridge error classes.
  {
    name: "KvmiUnsupportedError -> UNIMPLEMENTED",
    error: new KvmiUnsupportedError("CHECK_COMMAND said no for id 17 (internal detail)", VM_CTX("KVMI_VM_GET_MAX_GFN")),
    code: GrpcCode.UNIMPLEMENTED,
    reason: "KVMI_UNSUPPORTED",
    metadata: vmMd("KVMI_VM_GET_MAX_GFN"),
    message: "KVMI_VM_GET_MAX_GFN is not offered by this VM's kernel",
  },
  {
    name: "KvmiArgumentError -> INVALID_ARGUMENT + BadRequest(field)",
    error: new KvmiArgumentError("entries[3].access", "entries[3].access 9 has bits other than R, W and X"),
    context: VM_CTX("KVMI_VM_SET_PAGE_ACCESS"),
    code: GrpcCode.INVALID_ARGUMENT,
    reason: "KVMI_INVALID_ARGUMENT",
    metadata: vmMd("KVMI_VM_SET_PAGE_ACCESS"),
    message: "entries[3].access 9 has bits other than R, W and X",
    expect: { fieldViolations: [{ field: "entries[3].access", description: "entries[3].access 9 has bits other than R, W and X" }] },
  },
  {
    name: "KvmiProtocolError -> INTERNAL KVMI_PROTOCOL_ERROR",
    error: new KvmiProtocolError("reply seq 9 (id 4) matches no command", { vm: UUID }),
    code: GrpcCode.INTERNAL,
    reason: "KVMI_PROTOCOL_ERROR",
    metadata: { vm: UUID },
    message: /malformed KVMI message/,
  },
  {
    name: "KvmiTimeoutError -> DEADLINE_EXCEEDED",
    error: new KvmiTimeoutError("KVMI_VCPU_GET_REGISTERS got no reply within 30000 ms", VCPU_CTX("KVMI_VCPU_GET_REGISTERS")),
    code: GrpcCode.DEADLINE_EXCEEDED,
    reason: "KVMI_TIMEOUT",
    metadata: vcpuMd("KVMI_VCPU_GET_REGISTERS"),
    message: /did not answer KVMI_VCPU_GET_REGISTERS in time/,
  },
  {
    name: "KvmiTransportError -> UNAVAILABLE KVMI_SESSION_LOST",
    error: new KvmiTransportError("device manager disconnected while X was in flight", VM_CTX("KVMI_VM_GET_INFO")),
    code: GrpcCode.UNAVAILABLE,
    reason: "KVMI_SESSION_LOST",
    metadata: vmMd("KVMI_VM_GET_INFO"),
    message: /connection to the VM is closed/,
  },
  // Client cancellation.
  {
    name: "AbortError -> CANCELLED",
    error: new DOMException("This operation was aborted", "AbortError"),
    context: VM_CTX("KVMI_VM_READ_PHYSICAL"),
    code: GrpcCode.CANCELLED,
    reason: "CANCELLED",
    metadata: vmMd("KVMI_VM_READ_PHYSICAL"),
    message: "the call was cancelled",
  },
];

const BRIDGE_ROWS: ReadonlyArray<readonly [BridgeErrorCode, GrpcCode, Row["expect"]?]> = [
  ["VM_NOT_FOUND", GrpcCode.NOT_FOUND, { resourceInfo: { resourceType: "kvmi.v1.Vm", resourceName: VM, description: "msg" } }],
  ["VCPU_NOT_FOUND", GrpcCode.INVALID_ARGUMENT, { fieldViolations: [{ field: "name", description: "msg" }] }],
  ["CONTROLLER_PRESENT", GrpcCode.FAILED_PRECONDITION, { preconditionViolations: [{ type: "CONTROLLER", subject: VM, description: "msg" }] }],
  ["NOT_CONTROLLER", GrpcCode.PERMISSION_DENIED],
  ["VM_UNHOOKING", GrpcCode.UNAVAILABLE],
  ["VM_DISCONNECTED", GrpcCode.FAILED_PRECONDITION, { preconditionViolations: [{ type: "STATE", subject: VM, description: "msg" }] }],
  ["EVENT_NOT_PENDING", GrpcCode.NOT_FOUND, { resourceInfo: { resourceType: "kvmi.v1.Event", resourceName: VCPU, description: "msg" } }],
  ["SESSION_STATE", GrpcCode.FAILED_PRECONDITION, { preconditionViolations: [{ type: "SESSION", subject: VM, description: "msg" }] }],
  ["TOO_MANY_IN_FLIGHT", GrpcCode.RESOURCE_EXHAUSTED],
  ["QUOTA_EXCEEDED", GrpcCode.RESOURCE_EXHAUSTED],
  ["CANCELLED", GrpcCode.CANCELLED],
  ["DEADLINE_EXCEEDED", GrpcCode.DEADLINE_EXCEEDED],
];

for (const [code, grpcCode, details] of BRIDGE_ROWS) {
  ROWS.push({
    name: `BridgeError ${code} -> ${GrpcCode[grpcCode]}`,
    error: new BridgeError(code, "msg", { vm: UUID, vcpu: 2 }),
    code: grpcCode,
    reason: code,
    metadata: { vm: UUID, vcpu: "2" },
    message: "msg",
    ...(details !== undefined && { expect: details }),
  });
}

/** The trailer a grpc-js client receives, decoded with the decoder the SDK uses. */
function parseStatusDetails(metadata: Metadata): StatusDetails | undefined {
  const value = metadata.get(STATUS_DETAILS_KEY)[0];
  const st = value instanceof Uint8Array ? decodeStatus(value) : undefined;
  return st === undefined ? undefined : readStatusDetails(st);
}

/** Decodes what a client receives, the same way any gRPC client would. */
function received(row: Row): { status: ReturnType<typeof toGrpcStatus>; details: StatusDetails } {
  const status = toGrpcStatus(row.error, row.context);
  const details = parseStatusDetails(status.metadata);
  expect(details).toBeDefined();
  return { status, details: details! };
}

describe.each(ROWS)("$name", (row) => {
  it("maps code, message, ErrorInfo and details", () => {
    const { status, details } = received(row);
    expect(status.code).toBe(row.code);
    expect(details.code).toBe(row.code);
    expect(details.message).toBe(status.details);
    if (typeof row.message === "string") expect(status.details).toBe(row.message);
    else if (row.message !== undefined) expect(status.details).toMatch(row.message);
    expect(details.reason).toBe(row.reason);
    expect(details.domain).toBe(ERROR_DOMAIN);
    expect(details.metadata).toEqual(row.metadata);
    expect(details.fieldViolations).toEqual(row.expect?.fieldViolations ?? []);
    const resourceInfo = row.expect?.resourceInfo;
    if (resourceInfo === undefined) expect(details.resourceInfo).toBeUndefined();
    else {
      const { owner, ...rest } = details.resourceInfo!;
      expect(owner).toBe("");
      expect(rest).toEqual(resourceInfo);
    }
    expect(details.retryDelayMs).toEqual(row.expect?.retryDelayMs);
    expect(details.preconditionViolations).toEqual(row.expect?.preconditionViolations ?? []);
  });

  it("puts ErrorInfo first and agrees with statusToProto", () => {
    const { status } = received(row);
    const bytes = status.metadata.get(STATUS_DETAILS_KEY)[0] as Buffer;
    const st = fromBinary(StatusSchema, new Uint8Array(bytes));
    expect(anyIs(st.details[0]!, ErrorInfoSchema)).toBe(true);
    expect(st).toEqual(statusToProto(row.error, row.context));
  });
});

describe("unknown errors", () => {
  const SECRET = "/var/run/secret-token-123";
  const unknowns: Array<[string, unknown]> = [
    ["Error", new Error(`ENOENT: no such file ${SECRET}`)],
    ["TypeError", new TypeError(`cannot read ${SECRET}`)],
    ["a thrown string", SECRET],
    ["null", null],
    ["undefined", undefined],
    ["a status-like object", { code: GrpcCode.NOT_FOUND, details: SECRET }],
    ["an error named like a KvmiRemoteError", Object.assign(new Error(SECRET), { name: "KvmiRemoteError", errno: 2 })],
  ];

  it.each(unknowns)("%s -> INTERNAL 'internal error' without leaking", (_, err) => {
    const status = toGrpcStatus(err, { command: "KVMI_VM_READ_PHYSICAL", vm: UUID });
    expect(status.code).toBe(GrpcCode.INTERNAL);
    expect(status.details).toBe("internal error");
    const bytes = status.metadata.get(STATUS_DETAILS_KEY)[0] as Buffer;
    expect(bytes.toString("latin1")).not.toContain("secret-token");
    const details = parseStatusDetails(status.metadata)!;
    expect(details.reason).toBe("INTERNAL");
    expect(details.metadata).toEqual({ command: "KVMI_VM_READ_PHYSICAL", vm: UUID });
  });
});

describe("context", () => {
  it("fills what the error lacks from the caller, and keeps the error's own values", () => {
    const err = new KvmiRemoteError(errno.KVM_EPERM, { command: "KVMI_VCPU_PAUSE" });
    const details = parseStatusDetails(toGrpcStatus(err, { command: "ignored", vm: UUID, vcpu: 1 }).metadata)!;
    expect(details).toEqual(expect.objectContaining({ command: "KVMI_VCPU_PAUSE", vm: UUID, vcpu: 1, errno: 1 }));
  });
});

describe("the shared decoder (@kvmi/proto/status-details)", () => {
  it("reads a google.rpc.Status and its binary form; a trailer it cannot decode is no status", () => {
    const st = statusToProto(new KvmiRemoteError(errno.KVM_EAGAIN, VCPU_CTX("KVMI_VCPU_GET_INFO")));
    expect(readStatusDetails(st)).toEqual(expect.objectContaining({ reason: "KVMI_TRY_AGAIN", errno: 11, errnoName: "KVM_EAGAIN", vcpu: 2, retryDelayMs: 100 }));
    const bytes = toGrpcStatus(new KvmiTransportError("x")).metadata.get(STATUS_DETAILS_KEY)[0] as Buffer;
    expect(readStatusDetails(decodeStatus(bytes)!).reason).toBe("KVMI_SESSION_LOST");
    expect(decodeStatus(new Uint8Array([0xff, 0xff, 0xff]))).toBeUndefined();
  });
});

describe("BRIDGE_ERROR_STATUS", () => {
  it("has a row for every bridge code tested above", () => {
    expect(Object.keys(BRIDGE_ERROR_STATUS).sort()).toEqual(BRIDGE_ROWS.map(([code]) => code).sort());
  });
});
