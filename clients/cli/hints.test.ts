// SPDX-License-Identifier: Apache-2.0
// The one-line hints for connection failures, from the messages grpc-js 1.14 really produces
// (recorded against a refused port, an HTTP/1 server, a TLS server and a plaintext server).
import { describe, expect, it } from "vitest";
import { UnavailableError } from "@kvmi/clients";
import { connectionHint, lacksPort } from "./hints.js";

const unavailable = (lastError: string) =>
  new UnavailableError({ code: 14, message: `No connection established. Last error: ${lastError}. Resolution note: ` });

describe("connectionHint", () => {
  it("names the cause of each failure a newcomer meets", () => {
    const plain = { target: "127.0.0.1:1", tls: false };
    expect(connectionHint(unavailable("Error: connect ECONNREFUSED 127.0.0.1:1"), plain)).toMatch(/^cannot reach the bridge at 127\.0\.0\.1:1: connection refused\. Is kvmi-bridge running/);
    expect(connectionHint(unavailable("Error: connect ECONNREFUSED 127.0.0.1:443"), { target: "localhost", tls: false })).toMatch(/^--target localhost has no port, so gRPC dialed port 443/);
    expect(connectionHint(unavailable("Protocol error (2026-12-07T03:41:39.619Z)"), { target: "127.0.0.1:9464", tls: false })).toMatch(/is not a gRPC server \(it answered HTTP\/1\.x\): is that the metrics port\?/);
    expect(connectionHint(unavailable("Failed to connect (2026-12-07T03:41:40.050Z)"), { target: "b:443", tls: false })).toMatch(/it probably requires TLS; pass --tls-ca FILE/);
    expect(
      connectionHint(unavailable("Error: 803C:error:0A00010B:SSL routines:ssl3_get_record:wrong version number:../deps/openssl/ssl/record/ssl3_record.c:350:\n"), { target: "b:50051", tls: true }),
    ).toMatch(/does not speak TLS \(it answered in plaintext\): drop the --tls-\* flags/);
    expect(connectionHint(unavailable("Error: connect ENOENT /run/x.sock"), { target: "unix:/run/x.sock", tls: false })).toMatch(/no socket at \/run\/x\.sock/);
  });

  it("leaves other errors alone", () => {
    expect(connectionHint(new Error("boom"), { target: "a:1", tls: false })).toBeUndefined();
    expect(connectionHint(new UnavailableError({ code: 14, message: "the vCPU is not ready yet", reason: "KVMI_TRY_AGAIN" }), { target: "a:1", tls: false })).toBeUndefined();
  });
});

describe("lacksPort", () => {
  it("tells host:port from a bare host", () => {
    expect(["localhost", "dns:bridge", "dns:///bridge", "[::1]", "bridge.example"].map(lacksPort)).toEqual([true, true, true, true, true]);
    expect(["localhost:50051", "dns:bridge:50051", "[::1]:50051", "unix:/run/x.sock", "10.0.0.1:1"].map(lacksPort)).toEqual([false, false, false, false, false]);
  });
});
