// SPDX-License-Identifier: Apache-2.0
/**
 * The principal of each call that passed the authorization point (authorization.ts), for its
 * handler and the access log. A module of its own so that the handlers' helpers (call-context.ts)
 * and the authorization point, which uses those helpers to fail calls, do not import each other.
 */
import type { Metadata } from "@grpc/grpc-js";
import { identityKey } from "../auth/access-control.js";
import type { IdentitySource, Principal } from "../auth/identity.js";
import type { AccessLogCaller, CallerAuth } from "../log/index.js";

const principals = new WeakMap<object, Principal>();
/**
 * The same principals by the call's request metadata: the one object grpc-js hands both the
 * handler and the interceptors, so that the access log can name the caller ({@link callerOfMetadata}).
 */
const principalsByMetadata = new WeakMap<Metadata, Principal>();

/**
 * The principal of a call that passed the guard.
 * @throws Error when the call did not pass it (a handler served outside {@link guardImplementation}).
 */
export function principalOf(call: object): Principal {
  const principal = principals.get(call);
  if (principal === undefined) throw new Error("the call has no principal: its handler is not guarded");
  return principal;
}

/** The caller of a call whose request metadata is `metadata`, once the guard resolved it (access log). */
export function callerOfMetadata(metadata: Metadata): AccessLogCaller | undefined {
  const principal = principalsByMetadata.get(metadata);
  if (principal === undefined) return undefined;
  return { identity: principal.identity.name, auth: authOf(principal.identity.source) };
}

function authOf(source: IdentitySource): CallerAuth {
  switch (source) {
    case "spiffe":
    case "dns":
    case "cn":
      return "mtls";
    case "jwt":
    case "local":
    case "anonymous":
      return source;
    default:
      return source satisfies never;
  }
}

/**
 * Who a caller is for quotas and for the controller binding (see VmHost.attach): its identity
 * key. Anonymous callers (no certificate or token where none is required off loopback) are told
 * apart by their host (docs/decisions/0142): as one identity, any of them could use up
 * every anonymous caller's per-identity quota, and drive a controller another host attached with
 * its session id.
 */
export function ownerOf(principal: Principal): string {
  const key = identityKey(principal.identity);
  return principal.identity.source === "anonymous" ? `${key}@${peerHost(principal.peer)}` : key;
}

/** The host of a grpc-js server peer (`10.0.0.7:51234`, `::1:51234`): the port is per connection. */
export function peerHost(peer: string): string {
  const colon = peer.lastIndexOf(":");
  return colon > 0 && /^\d+$/.test(peer.slice(colon + 1)) ? peer.slice(0, colon) : peer;
}

/** Remembers the principal the authorization point resolved for `call` (whose metadata is `metadata`). */
export function rememberPrincipal(call: object, metadata: Metadata, principal: Principal): void {
  principals.set(call, principal);
  principalsByMetadata.set(metadata, principal);
}
