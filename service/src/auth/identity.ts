// SPDX-License-Identifier: Apache-2.0
/**
 * Who is calling: the identity of a gRPC call, from (in this order) a bearer JWT in the
 * `authorization` metadata, the verified mTLS client certificate, or the transport (loopback
 * plaintext = `local`). docs/authorization.md describes the model; decision record 0030 says why.
 *
 * Certificates are parsed with pkijs (ASN.1 DER, not the string forms Node prints), tokens are
 * verified with jose: nothing security-relevant is parsed by hand here.
 */
import { Certificate, GeneralName } from "pkijs";
import type { Metadata } from "@grpc/grpc-js";
import type { PeerCertificate } from "node:tls";
import { unauthenticated } from "../mapping/access-error.js";
import type { JwtVerifier } from "./jwt.js";

/** Where an identity comes from. */
export type IdentitySource = "spiffe" | "dns" | "cn" | "jwt" | "local" | "anonymous";

/** A caller, as the policy and the audit trail see it. */
export interface Identity {
  /** The name policies match: a SPIFFE ID, a DNS name, a subject CN, a JWT `sub`, `local` or `anonymous`. */
  readonly name: string;
  readonly source: IdentitySource;
  /** Groups from the JWT's group claim; empty for certificates. */
  readonly groups: readonly string[];
}

/** A caller plus where it connected from, for the audit trail. */
export interface Principal {
  readonly identity: Identity;
  /** grpc-js' peer address (`ipv4:127.0.0.1:51234`, `unix:`). */
  readonly peer: string;
}

/** The identity of plaintext callers on loopback or a unix socket (development). */
export const LOCAL_IDENTITY: Identity = Object.freeze({ name: "local", source: "local", groups: Object.freeze([]) });
/** The identity of callers that present nothing on a TLS or non-loopback listener. */
export const ANONYMOUS_IDENTITY: Identity = Object.freeze({ name: "anonymous", source: "anonymous", groups: Object.freeze([]) });

const OID_COMMON_NAME = "2.5.4.3";
const OID_SUBJECT_ALT_NAME = "2.5.29.17";
/** GeneralName CHOICE tags (RFC 5280 §4.2.1.6). */
const GENERAL_NAME_DNS = 2;
const GENERAL_NAME_URI = 6;

/**
 * The identity a client certificate proves: its first `spiffe://` URI SAN, else its first DNS SAN,
 * else its subject CN. Undefined when it has none of them.
 * @param der the certificate as DER (grpc-js `sslPeerCertificate.raw`).
 * @see https://github.com/spiffe/spiffe/blob/main/standards/X509-SVID.md (the SPIFFE ID is a URI SAN)
 */
export function identityFromCertificate(der: Uint8Array): Identity | undefined {
  const cert = Certificate.fromBER(new Uint8Array(der));
  const sans: GeneralName[] = [];
  for (const extension of cert.extensions ?? []) {
    if (extension.extnID !== OID_SUBJECT_ALT_NAME) continue;
    const parsed = extension.parsedValue as { altNames?: GeneralName[] } | undefined;
    sans.push(...(parsed?.altNames ?? []));
  }
  const uri = sans.find((n) => n.type === GENERAL_NAME_URI && typeof n.value === "string" && n.value.startsWith("spiffe://"));
  if (uri !== undefined) return { name: uri.value as string, source: "spiffe", groups: [] };
  const dns = sans.find((n) => n.type === GENERAL_NAME_DNS && typeof n.value === "string" && n.value !== "");
  if (dns !== undefined) return { name: dns.value as string, source: "dns", groups: [] };
  const cn = cert.subject.typesAndValues.find((tv) => tv.type === OID_COMMON_NAME);
  const text = (cn?.value.valueBlock as { value?: unknown } | undefined)?.value;
  return typeof text === "string" && text !== "" ? { name: text, source: "cn", groups: [] } : undefined;
}

/** What the resolver needs to know about a call (a subset of grpc-js' server call). */
export interface CallCredentials {
  readonly metadata: Metadata;
  getPeer(): string;
  getAuthContext(): { readonly sslPeerCertificate?: PeerCertificate | undefined; readonly transportSecurityType?: string | undefined };
}

/** Options of {@link createIdentityResolver}. */
export interface IdentityResolverOptions {
  /** True when the listener is plaintext on loopback or a unix socket: callers without credentials are `local`. */
  readonly plaintextLoopback: boolean;
  /** Verifies bearer tokens; without it a bearer token is refused (UNAUTHENTICATED). */
  readonly jwt?: JwtVerifier | undefined;
}

/** Resolves the identity of calls. */
export interface IdentityResolver {
  /**
   * The principal of a call. Synchronous for certificates and `local`; a promise when a bearer
   * token must be verified.
   * @throws AccessError UNAUTHENTICATED for a malformed, expired or untrusted token.
   */
  resolve(call: CallCredentials): Principal | Promise<Principal>;
}

const BEARER = /^Bearer\s+(\S+)\s*$/i;
/** Certificates seen recently, by DER bytes: a connection's calls share one certificate object. */
const MAX_CACHED_CERTIFICATES = 256;

/** Creates the resolver for one listener. */
export function createIdentityResolver(options: IdentityResolverOptions): IdentityResolver {
  const certificates = new Map<string, Identity | undefined>();
  const fromCertificate = (cert: PeerCertificate): Identity | undefined => {
    const key = cert.fingerprint256;
    if (certificates.has(key)) return certificates.get(key);
    const identity = identityFromCertificate(cert.raw);
    if (certificates.size >= MAX_CACHED_CERTIFICATES) certificates.delete(certificates.keys().next().value!);
    certificates.set(key, identity);
    return identity;
  };
  return {
    resolve(call) {
      const peer = call.getPeer();
      const header = call.metadata.get("authorization")[0];
      if (header !== undefined) {
        const match = typeof header === "string" ? BEARER.exec(header) : null;
        if (match === null) throw unauthenticated("the authorization metadata must be \"Bearer <JWT>\"");
        if (options.jwt === undefined) throw unauthenticated("this bridge accepts no bearer tokens (no JWKS is configured)");
        return options.jwt.verify(match[1]!).then((identity) => ({ identity, peer }));
      }
      const cert = call.getAuthContext().sslPeerCertificate;
      if (cert?.raw !== undefined) {
        const identity = fromCertificate(cert);
        if (identity === undefined) throw unauthenticated("the client certificate names no SPIFFE ID, DNS name or common name");
        return { identity, peer };
      }
      return { identity: options.plaintextLoopback ? LOCAL_IDENTITY : ANONYMOUS_IDENTITY, peer };
    },
  };
}
