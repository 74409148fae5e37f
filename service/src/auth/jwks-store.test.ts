// SPDX-License-Identifier: Apache-2.0
// The JWKS follows its file: a rotated key set is in force after a change (watched) or a SIGHUP
// reload, tokens verified with the old set are verified again, and a bad file keeps the keys in
// force with a clear error in the log and the audit trail.
import { mkdtempSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { exportJWK, generateKeyPair, SignJWT } from "jose";
import type { CryptoKey, JWK } from "jose";
import { afterEach, beforeAll, beforeEach, describe, expect, it, vi } from "vitest";
import type { Logger } from "@kvmi/kvm-bridge";
import type { AuditEvent, AuditTrail } from "../audit/audit-log.js";
import { loadJwksStore } from "./jwks-store.js";
import type { JwksStore } from "./jwks-store.js";
import { createJwtVerifier } from "./jwt.js";

const ISSUER = "https://kubernetes.default.svc.cluster.local";
const AUDIENCE = "kvmi-bridge";
const SUBJECT = "system:serviceaccount:introspection:scanner";

let oldKey: { private: CryptoKey; jwk: JWK };
let newKey: { private: CryptoKey; jwk: JWK };
let dir: string;
let file: string;
let store: JwksStore | undefined;
const logged: Array<{ level: string; fields: Record<string, unknown>; msg: string | undefined }> = [];
const audited: AuditEvent[] = [];

function keepingLogger(): Logger {
  const keep = (level: string) => (fields: Record<string, unknown>, msg?: string) => void logged.push({ level, fields, msg });
  return { trace: () => undefined, debug: () => undefined, info: keep("info"), warn: keep("warn"), error: keep("error"), child: () => keepingLogger() };
}
const audit = { record: (event: AuditEvent) => void audited.push(event), close: () => undefined } as unknown as AuditTrail;

async function keyPair(kid: string): Promise<{ private: CryptoKey; jwk: JWK }> {
  const pair = await generateKeyPair("ES256");
  return { private: pair.privateKey, jwk: { ...(await exportJWK(pair.publicKey)), kid, alg: "ES256", use: "sig" } };
}

function token(key: { private: CryptoKey; jwk: JWK }): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({ iss: ISSUER, aud: AUDIENCE, sub: SUBJECT, iat: now, exp: now + 600 })
    .setProtectedHeader({ alg: "ES256", kid: key.jwk.kid! })
    .sign(key.private);
}

/** Replaces the file the way a Secret volume does: a new file renamed over the old one. */
function replaceJwks(text: string): void {
  const tmp = `${file}.tmp`;
  writeFileSync(tmp, text);
  renameSync(tmp, file);
}

beforeAll(async () => {
  oldKey = await keyPair("sa-2025");
  newKey = await keyPair("sa-2026");
});

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "kvmi-jwks-store-"));
  file = join(dir, "jwks.json");
  writeFileSync(file, JSON.stringify({ keys: [oldKey.jwk] }));
  logged.length = 0;
  audited.length = 0;
});

afterEach(() => {
  store?.close();
  store = undefined;
  rmSync(dir, { recursive: true, force: true });
});

describe("loadJwksStore", () => {
  it("follows a rotation of the file: the new keys verify, tokens of a removed key are refused even if verified before", async () => {
    store = loadJwksStore({ file, logger: keepingLogger(), audit, debounceMs: 20 });
    const verifier = createJwtVerifier({ jwks: store, issuers: [ISSUER], audiences: [AUDIENCE] });
    const oldToken = await token(oldKey);
    const newToken = await token(newKey);
    expect((await verifier.verify(oldToken)).name).toBe(SUBJECT);
    await expect(verifier.verify(newToken)).rejects.toMatchObject({ code: "UNAUTHENTICATED" });

    replaceJwks(JSON.stringify({ keys: [newKey.jwk] }));
    await vi.waitFor(() => expect(logged.map((l) => l.msg)).toContain("JWKS reloaded"), { timeout: 5_000, interval: 20 });
    expect((await verifier.verify(newToken)).name).toBe(SUBJECT);
    // Cached as verified a moment ago, but its key is gone: verified again, and refused.
    await expect(verifier.verify(oldToken)).rejects.toMatchObject({ code: "UNAUTHENTICATED" });
    expect(audited.map((e) => [e.action, e["reason"], e["result"], e["keys"]])).toEqual([
      ["jwks_reload", "start", "ok", 1],
      ["jwks_reload", "file changed", "ok", 1],
    ]);
  });

  it("keeps the keys in force when the new file is bad, says why, and takes the next good one (SIGHUP)", async () => {
    store = loadJwksStore({ file, logger: keepingLogger(), audit, watch: false });
    const verifier = createJwtVerifier({ jwks: store, issuers: [ISSUER], audiences: [AUDIENCE] });
    const oldToken = await token(oldKey);
    for (const bad of ["{ not json", JSON.stringify({ keys: [] }), JSON.stringify({ keys: "none" })]) {
      replaceJwks(bad);
      expect(store.reload("SIGHUP")).toBe(false);
      expect((await verifier.verify(oldToken)).name).toBe(SUBJECT);
    }
    rmSync(file);
    expect(store.reload("SIGHUP")).toBe(false);
    const errors = logged.filter((l) => l.level === "error");
    expect(errors.map((l) => l.msg)).toEqual(Array(4).fill("JWKS reload failed; the previous keys stay in force"));
    expect(errors.map((l) => l.fields["error"])).toEqual([
      expect.stringMatching(/is not readable JSON/),
      expect.stringMatching(/has no "keys" array with at least one key/),
      expect.stringMatching(/has no "keys" array/),
      expect.stringMatching(/ENOENT/),
    ]);
    expect(audited.filter((e) => e["result"] === "invalid")).toHaveLength(4);

    writeFileSync(file, JSON.stringify({ keys: [oldKey.jwk, newKey.jwk] }));
    expect(store.reload("SIGHUP")).toBe(true);
    expect((await verifier.verify(await token(newKey))).name).toBe(SUBJECT);
    expect((await verifier.verify(oldToken)).name).toBe(SUBJECT);
    // The same content again is no change: nothing logged or audited.
    const before = audited.length;
    expect(store.reload("SIGHUP")).toBe(true);
    expect(audited).toHaveLength(before);
  });

  it("refuses to start on a bad file, naming it", () => {
    writeFileSync(file, JSON.stringify({ keys: [] }));
    expect(() => loadJwksStore({ file, logger: keepingLogger(), audit, watch: false })).toThrow(file);
  });
});
