// SPDX-License-Identifier: Apache-2.0
// connect() and handles without a bridge: the connection is lazy, so nothing here does I/O.
import { describe, expect, it } from "vitest";
import { connect } from "./client.js";
import { InvalidArgumentError } from "./errors.js";

describe("connect", () => {
  it("takes a target or a UNIX socket path", () => {
    const tcp = connect({ target: "127.0.0.1:50051" });
    const unix = connect({ unix: "/run/kvmi-bridge/grpc.sock" });
    expect(tcp.target).toBe("127.0.0.1:50051");
    expect(unix.target).toBe("unix:/run/kvmi-bridge/grpc.sock");
    tcp.close();
    unix.close();
    expect(() => connect({})).toThrow(TypeError);
  });

  it("hands out VM handles by UUID or vms/UUID only", async () => {
    const client = connect({ target: "127.0.0.1:1" });
    const uuid = "5b8a3c7e-1d2f-4e6a-9b0c-7d8e9f0a1b2c";
    const vm = client.vm(`vms/${uuid}`, { sessionId: "s-1" });
    expect(vm).toMatchObject({ uuid, name: `vms/${uuid}`, sessionId: "s-1" });
    expect(vm.withSession(undefined).sessionId).toBeUndefined();
    expect(() => client.vm("emu-0")).toThrow(InvalidArgumentError);
    await expect(client.attach("emu-0", { role: "observer" })).rejects.toBeInstanceOf(InvalidArgumentError);
    client.close();
  });
});
