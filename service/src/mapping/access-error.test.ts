// SPDX-License-Identifier: Apache-2.0
// The status of the authorization point's errors: PERMISSION_DENIED / UNAUTHENTICATED with the
// verb and the VM in ErrorInfo, through the one error table.
import { describe, expect, it } from "vitest";
import { permissionDenied, unauthenticated } from "./access-error.js";
import { GrpcCode, parseStatusDetails, toGrpcStatus } from "./status.js";

const VM = "4c4c4544-0000-4000-8000-00000000000a";

describe("AccessError in the status table", () => {
  it("maps a denial to PERMISSION_DENIED with ErrorInfo verb and vm", () => {
    const status = toGrpcStatus(permissionDenied("control", VM), { command: "KVMI_VM_WRITE_PHYSICAL" });
    expect(status.code).toBe(GrpcCode.PERMISSION_DENIED);
    expect(status.details).toBe(`the policy does not grant "control" on vms/${VM} to this caller`);
    expect(parseStatusDetails(status.metadata!)).toMatchObject({
      reason: "PERMISSION_DENIED",
      vm: VM,
      command: "KVMI_VM_WRITE_PHYSICAL",
      metadata: { verb: "control", vm: VM },
    });
  });

  it("maps an invalid credential to UNAUTHENTICATED", () => {
    const status = toGrpcStatus(unauthenticated("the bearer token is not valid here: ERR_JWT_EXPIRED"));
    expect(status.code).toBe(GrpcCode.UNAUTHENTICATED);
    expect(parseStatusDetails(status.metadata!)).toMatchObject({ reason: "UNAUTHENTICATED", metadata: {} });
  });
});
