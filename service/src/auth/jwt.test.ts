// SPDX-License-Identifier: Apache-2.0
// Bearer JWTs against a JWKS: valid, expired, wrong issuer/audience/key, Kubernetes projected
// ServiceAccount tokens as the API server issues them, and the group claim.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { exportJWK, generateKeyPair, SignJWT } from "jose";
import type { CryptoKey, JWK, JWTPayload } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createJwtVerifier, readJwksFile } from "./jwt.js";
import type { JwtVerifier } from "./jwt.js";

const ISSUER = "https://kubernetes.default.svc.cluster.local";
const AUDIENCE = "kvmi-bridge";
const NOW = new Date("2026-01-01T12:00:00Z");
const nowSeconds = Math.floor(NOW.getTime() / 1000);

let signingKey: CryptoKey;
let otherKey: CryptoKey;
let jwk: JWK;
let verifier: JwtVerifier;
let dir: string;

beforeAll(async () => {
  const pair = await generateKeyPair("RS256");
  signingKey = pair.privateKey;
  otherKey = (await generateKeyPair("RS256")).privateKey;
  jwk = { ...(await exportJWK(pair.publicKey)), kid: "k8s-sa-key", alg: "RS256", use: "sig" };
  dir = mkdtempSync(join(tmpdir(), "kvmi-jwt-test-"));
  const file = join(dir, "jwks.json");
  writeFileSync(file, JSON.stringify({ keys: [jwk] }));
  verifier = createJwtVerifier({ jwks: readJwksFile(file), issuers: [ISSUER], audiences: [AUDIENCE], now: () => NOW });
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function sign(payload: JWTPayload, options: { key?: CryptoKey; kid?: string } = {}): Promise<string> {
  return new SignJWT(payload).setProtectedHeader({ alg: "RS256", kid: options.kid ?? "k8s-sa-key" }).sign(options.key ?? signingKey);
}

/** The claims of a projected ServiceAccount token (kubelet-requested, audience kvmi-bridge). */
function serviceAccountClaims(overrides: JWTPayload = {}): JWTPayload {
  return {
    aud: [AUDIENCE],
    exp: nowSeconds + 3600,
    iat: nowSeconds - 60,
    nbf: nowSeconds - 60,
    iss: ISSUER,
    jti: "5c1f3e5e-0000-4000-8000-000000000000",
    "kubernetes.io": {
      namespace: "introspection",
      node: { name: "node-1", uid: "0f6b8f3e-1111-4000-8000-000000000000" },
      pod: { name: "scanner-7d9f", uid: "0f6b8f3e-2222-4000-8000-000000000000" },
      serviceaccount: { name: "scanner", uid: "0f6b8f3e-3333-4000-8000-000000000000" },
    },
    sub: "system:serviceaccount:introspection:scanner",
    ...overrides,
  };
}

async function rejection(token: string): Promise<{ code: string; message: string }> {
  return verifier.verify(token).then(
    () => {
      throw new Error("the token was accepted");
    },
    (err: { code: string; message: string }) => err,
  );
}

describe("createJwtVerifier", () => {
  it("accepts a Kubernetes projected ServiceAccount token as it is", async () => {
    expect(await verifier.verify(await sign(serviceAccountClaims()))).toEqual({
      name: "system:serviceaccount:introspection:scanner",
      source: "jwt",
      groups: [],
    });
  });

  it("reads groups from the group claim (a list or one string)", async () => {
    expect((await verifier.verify(await sign(serviceAccountClaims({ groups: ["vmi-admins", 7, "readers"] })))).groups).toEqual(["vmi-admins", "readers"]);
    expect((await verifier.verify(await sign(serviceAccountClaims({ groups: "solo" })))).groups).toEqual(["solo"]);
  });

  it.each([
    ["an expired token", serviceAccountClaims({ exp: nowSeconds - 120 }), /exp/],
    ["a token not valid yet", serviceAccountClaims({ nbf: nowSeconds + 600 }), /nbf/],
    ["a wrong audience", serviceAccountClaims({ aud: ["vault"] }), /aud/],
    ["a wrong issuer", serviceAccountClaims({ iss: "https://evil.example" }), /iss/],
    ["no exp", (() => { const c = serviceAccountClaims(); delete c.exp; return c; })(), /exp/],
    ["no sub", (() => { const c = serviceAccountClaims(); delete c.sub; return c; })(), /sub/],
  ])("refuses %s with UNAUTHENTICATED", async (_what, claims, reason) => {
    const err = await rejection(await sign(claims));
    expect(err.code).toBe("UNAUTHENTICATED");
    expect(err.message).toMatch(reason);
  });

  it("refuses a token signed by another key, and garbage", async () => {
    expect((await rejection(await sign(serviceAccountClaims(), { key: otherKey }))).code).toBe("UNAUTHENTICATED");
    expect((await rejection(await sign(serviceAccountClaims(), { key: otherKey, kid: "unknown" }))).code).toBe("UNAUTHENTICATED");
    expect((await rejection("not.a.jwt")).code).toBe("UNAUTHENTICATED");
    expect((await rejection("x".repeat(20_000))).message).toMatch(/too large/);
  });

  it("refuses an unsigned (alg none) token", async () => {
    const header = Buffer.from(JSON.stringify({ alg: "none" })).toString("base64url");
    const body = Buffer.from(JSON.stringify(serviceAccountClaims())).toString("base64url");
    expect((await rejection(`${header}.${body}.`)).code).toBe("UNAUTHENTICATED");
  });
});

describe("readJwksFile", () => {
  it("names the file when it is not a key set", () => {
    const bad = join(dir, "bad.json");
    writeFileSync(bad, '{"keys": []}');
    expect(() => readJwksFile(bad)).toThrow(/bad\.json.*no "keys"/);
    writeFileSync(bad, "{");
    expect(() => readJwksFile(bad)).toThrow(/not readable JSON/);
  });
});
