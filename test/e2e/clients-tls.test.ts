// SPDX-License-Identifier: Apache-2.0
// The SDK and kvmictl over mTLS: a bridge that requires client certificates accepts the SDK's
// `tls` options and kvmictl's --tls-* flags, and refuses a client without a certificate.
import { readFileSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connect, UnavailableError } from "@kvmi/clients";
import { createThrowAwayPki, KVMICTL_BIN, runNode, startClientsBridge } from "../support/clients-harness.js";
import type { ClientsBridge, ThrowAwayPki } from "../support/clients-harness.js";

let pki: ThrowAwayPki;
let bridge: ClientsBridge;
let tlsTarget: string;

beforeAll(async () => {
  pki = createThrowAwayPki();
  // The bridge has one listener, so the harness's own client speaks mTLS too.
  bridge = await startClientsBridge({
    vms: [{ name: "tls-vm", vcpus: 1, workload: { tickIntervalMs: 0 } }],
    bridgeArgs: ["--tls-cert", pki.serverCert, "--tls-key", pki.serverKey, "--tls-client-ca", pki.caCert],
    tls: { ca: readFileSync(pki.caCert), cert: readFileSync(pki.clientCert), key: readFileSync(pki.clientKey) },
  });
  // The server certificate names localhost (and 127.0.0.1).
  tlsTarget = bridge.target.replace(/^127\.0\.0\.1:/, "localhost:");
}, 30_000);

afterAll(async () => {
  await bridge?.stop();
  pki?.dispose();
});

describe("mTLS", () => {
  it("connects with a client certificate and reads guest state", async () => {
    const client = connect({
      target: tlsTarget,
      tls: { ca: readFileSync(pki.caCert, "utf8"), cert: readFileSync(pki.clientCert), key: readFileSync(pki.clientKey) },
    });
    try {
      const [vm] = await client.listVms();
      expect(vm?.displayName).toBe("tls-vm");
      expect((await client.vm(vm!.uuid).getVersion()).version).toBe(1);
    } finally {
      client.close();
    }
  });

  it("is refused without a client certificate or with plaintext", async () => {
    const noCert = connect({ target: tlsTarget, tls: { ca: readFileSync(pki.caCert) }, retry: { maxAttempts: 1 }, timeoutMs: 5000 });
    const plain = connect({ target: bridge.target, retry: { maxAttempts: 1 }, timeoutMs: 5000 });
    try {
      await expect(noCert.listVms()).rejects.toBeInstanceOf(UnavailableError);
      await expect(plain.listVms()).rejects.toBeInstanceOf(UnavailableError);
    } finally {
      noCert.close();
      plain.close();
    }
  });

  it("kvmictl takes --tls-ca, --tls-cert and --tls-key (and --tls-server-name)", async () => {
    const result = await runNode([
      KVMICTL_BIN, "--target", bridge.target, "--tls-ca", pki.caCert, "--tls-cert", pki.clientCert, "--tls-key", pki.clientKey,
      "--tls-server-name", "localhost", "vms", "list",
    ]);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toMatch(/tls-vm\s+HOOKED/);
  });
});
