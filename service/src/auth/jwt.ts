// SPDX-License-Identifier: Apache-2.0
/**
 * Bearer JWT verification against a JWKS file (no network): signature, `iss`, `aud`, `exp`/`nbf`
 * with a small clock tolerance, all by jose. Kubernetes projected ServiceAccount tokens verify as
 * they are: their issuer is the cluster's service-account issuer, their JWKS is what the API server
 * publishes at `/openid/v1/jwks`, and `sub` is `system:serviceaccount:NAMESPACE:NAME`.
 *
 * @see https://kubernetes.io/docs/tasks/configure-pod-container/configure-service-account/#serviceaccount-token-volume-projection
 */
import { readFileSync } from "node:fs";
import { createLocalJWKSet, jwtVerify } from "jose";
import type { JSONWebKeySet, JWTVerifyGetKey } from "jose";
import { unauthenticated } from "../mapping/access-error.js";
import type { Identity } from "./identity.js";

/** The keys tokens are verified with, as they are now (a JWKS file that is reloaded). */
export interface JwksSource {
  /** The current key set; a new object after each reload that changed it. */
  current(): JWTVerifyGetKey;
}

/** Options of {@link createJwtVerifier}. */
export interface JwtVerifierOptions {
  /** The JWKS document (`{"keys": [...]}`), or a source that follows its file (jwks-store.ts). */
  readonly jwks: JSONWebKeySet | JwksSource;
  /** Accepted `iss` values (at least one). */
  readonly issuers: readonly string[];
  /** Accepted `aud` values (at least one), e.g. `kvmi-bridge`. */
  readonly audiences: readonly string[];
  /** Claim holding the caller's groups (a string or an array of strings); default `groups`. */
  readonly groupsClaim?: string;
  /** Clock skew tolerated on exp/nbf/iat, in seconds; default 30. */
  readonly clockToleranceSeconds?: number;
  /** Clock, for tests. */
  readonly now?: () => Date;
}

/** Verifies bearer tokens. */
export interface JwtVerifier {
  /** @throws AccessError UNAUTHENTICATED when the token is not valid here (the reason is in the message). */
  verify(token: string): Promise<Identity>;
}

/** Verified tokens kept, so that a client sending the same token on every call pays once. */
const MAX_CACHED_TOKENS = 512;
/** Tokens above this size are refused before parsing (Kubernetes tokens are ~1 KiB). */
const MAX_TOKEN_BYTES = 16 * 1024;
const ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"];

/**
 * Reads and checks a JWKS file.
 * @throws Error naming the file when it is not a JSON Web Key Set.
 */
export function readJwksFile(path: string): JSONWebKeySet {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(path, "utf8"));
  } catch (err) {
    throw new Error(`JWKS file "${path}" is not readable JSON (${(err as Error).message})`);
  }
  const keys = (parsed as { keys?: unknown }).keys;
  if (!Array.isArray(keys) || keys.length === 0) throw new Error(`JWKS file "${path}" has no "keys" array with at least one key`);
  // createLocalJWKSet validates the set's shape; keys are imported lazily on first use.
  createLocalJWKSet(parsed as JSONWebKeySet);
  return parsed as JSONWebKeySet;
}

/** Creates a verifier. */
export function createJwtVerifier(options: JwtVerifierOptions): JwtVerifier {
  const source: JwksSource = isJwksSource(options.jwks) ? options.jwks : fixedKeys(createLocalJWKSet(options.jwks));
  const groupsClaim = options.groupsClaim ?? "groups";
  /** Verified tokens, with the key set that verified them: a reload that changes the keys re-verifies. */
  const cache = new Map<string, { readonly identity: Identity; readonly expiresAtMs: number; readonly keys: JWTVerifyGetKey }>();
  const now = options.now ?? (() => new Date());
  return {
    async verify(token) {
      if (token.length > MAX_TOKEN_BYTES) throw unauthenticated("the bearer token is too large");
      const keys = source.current();
      const cached = cache.get(token);
      if (cached !== undefined && cached.keys === keys && cached.expiresAtMs > now().getTime()) return cached.identity;
      cache.delete(token);
      let payload;
      try {
        ({ payload } = await jwtVerify(token, keys, {
          issuer: [...options.issuers],
          audience: [...options.audiences],
          algorithms: ALGORITHMS,
          clockTolerance: options.clockToleranceSeconds ?? 30,
          currentDate: now(),
          requiredClaims: ["exp", "sub"],
        }));
      } catch (err) {
        // jose's messages say what failed ("\"exp\" claim timestamp check failed", "unexpected
        // \"aud\" claim value") without echoing the token; the code is stable.
        const code = (err as { code?: string }).code ?? "ERR_JWT_INVALID";
        throw unauthenticated(`the bearer token is not valid here: ${code} ${(err as Error).message}`);
      }
      const raw = payload[groupsClaim];
      const groups = typeof raw === "string" ? [raw] : Array.isArray(raw) ? raw.filter((g): g is string => typeof g === "string") : [];
      const identity: Identity = { name: payload.sub!, source: "jwt", groups };
      if (cache.size >= MAX_CACHED_TOKENS) cache.delete(cache.keys().next().value!);
      cache.set(token, { identity, expiresAtMs: payload.exp! * 1000, keys });
      return identity;
    },
  };
}

function isJwksSource(jwks: JSONWebKeySet | JwksSource): jwks is JwksSource {
  return typeof (jwks as Partial<JwksSource>).current === "function";
}

function fixedKeys(keys: JWTVerifyGetKey): JwksSource {
  return { current: () => keys };
}
