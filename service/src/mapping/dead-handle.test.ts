// SPDX-License-Identifier: Apache-2.0
/**
 * Dead-handle matrix (conventions §7 item 5, after kvm-ioctls' `test_faulty_vcpu_fd`): every v9
 * command on a KVMI channel whose device manager dropped fails with the same error class,
 * KvmiTransportError naming the command, VM and vCPU, and maps to UNAVAILABLE with reason
 * KVMI_SESSION_LOST; nothing is written. The gRPC side of the same matrix (every command RPC on a
 * VM whose device manager dropped) is test/e2e/dead-handle.test.ts.
 */
import { Socket } from "node:net";
import { createKvmiChannel, KvmiTimeoutError, KvmiTransportError } from "@kvmi/kvm-bridge";
import { v9, V9_COMMANDS } from "@kvmi/kvm-bridge/wire";
import type { V9CommandName } from "@kvmi/kvm-bridge/wire";
import { describe, expect, it } from "vitest";
import { GrpcCode, mapError } from "./status.js";

const UUID = "0d2e7c1a-5b6f-4a3e-8c9d-1e2f3a4b5c6d";

describe.each(Object.keys(V9_COMMANDS) as V9CommandName[])("%s on a dropped device manager", (name) => {
  it("fails with KvmiTransportError (not a timeout), mapped to UNAVAILABLE / KVMI_SESSION_LOST", async () => {
    const socket = new Socket();
    const written: unknown[] = [];
    socket.write = ((chunk: unknown) => written.push(chunk)) as never;
    const channel = createKvmiChannel(socket, { vm: UUID, dialect: v9 });
    channel.close("device manager disconnected");
    const vcpu = V9_COMMANDS[name].scope === "vcpu" ? 1 : undefined;
    const err = await channel.command(V9_COMMANDS[name].op, {} as never, vcpu).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(KvmiTransportError);
    expect(err).not.toBeInstanceOf(KvmiTimeoutError);
    expect((err as KvmiTransportError).context).toEqual({ command: name, vm: UUID, ...(vcpu !== undefined && { vcpu }) });
    const mapped = mapError(err);
    expect(mapped).toMatchObject({ code: GrpcCode.UNAVAILABLE, reason: "KVMI_SESSION_LOST", known: true });
    expect(mapped.metadata).toEqual({ command: name, vm: UUID, ...(vcpu !== undefined && { vcpu: String(vcpu) }) });
    expect(written).toEqual([]);
    expect(channel.pendingCommands).toBe(0);
  });
});
