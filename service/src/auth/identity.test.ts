// SPDX-License-Identifier: Apache-2.0
// Identities from client certificates (SPIFFE URI SAN, then DNS SAN, then CN), bearer tokens and
// the transport.
import { readFileSync } from "node:fs";
import { X509Certificate } from "node:crypto";
import { Metadata } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestPki } from "../server/testdata/test-pki.js";
import type { TestPki } from "../server/testdata/test-pki.js";
import { createIdentityResolver, identityFromCertificate } from "./identity.js";
import type { CallCredentials } from "./identity.js";

let pki: TestPki;
beforeAll(() => {
  pki = createTestPki();
});
afterAll(() => pki.dispose());

function der(path: string): Uint8Array {
  return new X509Certificate(readFileSync(path)).raw;
}

describe("identityFromCertificate", () => {
  it("prefers the SPIFFE URI SAN over DNS SANs and the CN", () => {
    const cert = pki.issueClient("spiffe", { cn: "ignored-cn", san: "DNS:scanner.example.org,URI:https://not-spiffe.example,URI:spiffe://example.org/ns/intro/sa/scanner" });
    expect(identityFromCertificate(der(cert.cert))).toEqual({ name: "spiffe://example.org/ns/intro/sa/scanner", source: "spiffe", groups: [] });
  });

  it("takes the first DNS SAN when there is no SPIFFE ID", () => {
    const cert = pki.issueClient("dns", { cn: "ignored-cn", san: "URI:https://not-spiffe.example,DNS:node-1.example.org,DNS:node-2.example.org" });
    expect(identityFromCertificate(der(cert.cert))).toEqual({ name: "node-1.example.org", source: "dns", groups: [] });
  });

  it("falls back to the subject CN", () => {
    expect(identityFromCertificate(der(pki.client.cert))).toEqual({ name: "kvmi-bridge test client", source: "cn", groups: [] });
  });

  it("keeps a SAN with a comma whole (no string splitting)", () => {
    const cert = pki.issueClient("comma", { cn: "x", san: "URI:spiffe://example.org/a%2C%20DNS:evil" });
    expect(identityFromCertificate(der(cert.cert))?.name).toBe("spiffe://example.org/a%2C%20DNS:evil");
  });
});

function call(options: { authorization?: string; certDer?: Uint8Array; fingerprint?: string }): CallCredentials {
  const metadata = new Metadata();
  if (options.authorization !== undefined) metadata.set("authorization", options.authorization);
  return {
    metadata,
    getPeer: () => "ipv4:127.0.0.1:40000",
    getAuthContext: () =>
      options.certDer === undefined
        ? {}
        : { transportSecurityType: "ssl", sslPeerCertificate: { raw: Buffer.from(options.certDer), fingerprint256: options.fingerprint ?? "fp" } as never },
  };
}

describe("createIdentityResolver", () => {
  it("calls plaintext loopback callers local, and others anonymous", () => {
    expect(createIdentityResolver({ plaintextLoopback: true }).resolve(call({}))).toMatchObject({ identity: { name: "local", source: "local" }, peer: "ipv4:127.0.0.1:40000" });
    expect(createIdentityResolver({ plaintextLoopback: false }).resolve(call({}))).toMatchObject({ identity: { name: "anonymous" } });
  });

  it("uses the verified client certificate", () => {
    const resolved = createIdentityResolver({ plaintextLoopback: false }).resolve(call({ certDer: der(pki.client.cert) }));
    expect(resolved).toMatchObject({ identity: { name: "kvmi-bridge test client", source: "cn" } });
  });

  it("refuses a bearer token when no JWKS is configured, and a malformed authorization value", () => {
    const resolver = createIdentityResolver({ plaintextLoopback: true });
    expect(() => resolver.resolve(call({ authorization: "Bearer abc.def.ghi" }))).toThrow(expect.objectContaining({ code: "UNAUTHENTICATED" }));
    expect(() => resolver.resolve(call({ authorization: "Basic dXNlcg==" }))).toThrow(expect.objectContaining({ code: "UNAUTHENTICATED" }));
  });

  it("lets a verified bearer token win over the connection's certificate (a proxy forwarding its user)", async () => {
    const resolver = createIdentityResolver({
      plaintextLoopback: false,
      jwt: { verify: async (token) => ({ name: `sub-of-${token}`, source: "jwt", groups: ["g"] }) },
    });
    const principal = await resolver.resolve(call({ authorization: "Bearer tkn", certDer: der(pki.client.cert) }));
    expect(principal.identity).toEqual({ name: "sub-of-tkn", source: "jwt", groups: ["g"] });
  });
});
