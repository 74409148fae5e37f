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

/** The identity key a controller is bound to (see VmHost.attach). */
export function ownerOf(principal: Principal): string {
  return identityKey(principal.identity);
}

/** Remembers the principal the authorization point resolved for `call` (whose metadata is `metadata`). */
export function rememberPrincipal(call: object, metadata: Metadata, principal: Principal): void {
  principals.set(call, principal);
  principalsByMetadata.set(metadata, principal);
}
