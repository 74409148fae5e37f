// SPDX-License-Identifier: Apache-2.0
/**
 * Applies the authorization table (auth/rules.ts) to every RPC of the service: each handler is
 * wrapped so that, before it runs, the caller's principal is resolved (certificate, bearer JWT or
 * `local`), remembered for the handler ({@link principalOf}), and checked against the rule of its
 * method. A method without a rule makes {@link guardImplementation} throw at start-up, so a new
 * RPC cannot be served unchecked. Session messages are checked by session-rpc.ts through
 * {@link authorizeSessionCommand}, with the same table.
 */
import type { Metadata, ServerDuplexStream, ServerUnaryCall, ServerWritableStream, UntypedServiceImplementation, sendUnaryData } from "@grpc/grpc-js";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import type { AccessControl } from "../auth/access-control.js";
import { identityKey } from "../auth/access-control.js";
import type { IdentitySource, Principal } from "../auth/identity.js";
import type { AccessLogCaller, CallerAuth } from "../log/index.js";
import { COMMAND_VERBS, requestVm, RPC_RULES } from "../auth/rules.js";
import type { RpcRule } from "../auth/rules.js";
import type { Verb } from "../mapping/access-error.js";
import type { ErrorContext } from "../mapping/status.js";
import type { RpcDeps } from "./call-context.js";
import { failStream, failure } from "./call-context.js";

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

/** The verb ReleaseVm needs: `admin` when a controller of another identity is attached. */
function releaseVerb(deps: RpcDeps, principal: Principal, vm: string): Verb {
  const controller = deps.hosts.get(vm)?.sessions.find((s) => s.role === "controller");
  return controller !== undefined && controller.owner !== ownerOf(principal) ? "admin" : "release";
}

/** Checks a method's rule for one request; for `filter` and `session` rules the handler checks. */
function checkRule(deps: RpcDeps, access: AccessControl, rule: RpcRule, principal: Principal, request: unknown, method: string): void {
  switch (rule.kind) {
    case "vm": {
      access.authorize(principal, rule.verb, requestVm(request), method);
      return;
    }
    case "release-vm": {
      const vm = requestVm(request);
      access.authorize(principal, releaseVerb(deps, principal, vm), vm, method);
      return;
    }
    case "filter":
    case "session":
      return;
    default:
      rule satisfies never;
  }
}

type AnyCall = ServerUnaryCall<unknown, unknown> | ServerWritableStream<unknown, unknown> | ServerDuplexStream<unknown, unknown>;

/** Resolves the principal (sync when no token needs verifying), then runs `next` or `fail`. */
function withPrincipal(access: AccessControl, call: AnyCall, next: (principal: Principal) => void, fail: (err: unknown) => void): void {
  let resolved: Principal | Promise<Principal>;
  try {
    resolved = access.principal(call);
  } catch (err) {
    return fail(err);
  }
  const run = (principal: Principal): void => {
    principals.set(call, principal);
    principalsByMetadata.set(call.metadata, principal);
    try {
      next(principal);
    } catch (err) {
      fail(err);
    }
  };
  if (resolved instanceof Promise) resolved.then(run, fail);
  else run(resolved);
}

/**
 * Wraps every handler of `implementation` with the authorization point.
 * @throws Error at start-up when a method of `service` has no rule in RPC_RULES.
 */
export function guardImplementation(
  service: GenService<GenServiceMethods>,
  implementation: UntypedServiceImplementation,
  deps: RpcDeps,
  access: AccessControl,
  /** What an error of a method is about (command, VM), as its handler would report it. */
  contextOf: (method: string, request: unknown) => ErrorContext = () => ({}),
): UntypedServiceImplementation {
  const guarded: UntypedServiceImplementation = {};
  for (const method of service.methods) {
    const rule = RPC_RULES[method.localName];
    if (rule === undefined) throw new Error(`${service.typeName}.${method.name} has no authorization rule (auth/rules.ts)`);
    const handler = implementation[method.localName] as (...args: unknown[]) => void;
    const name = method.localName;
    if (method.methodKind === "unary") {
      guarded[name] = (call: ServerUnaryCall<unknown, unknown>, callback: sendUnaryData<unknown>) =>
        withPrincipal(
          access,
          call,
          (principal) => {
            checkRule(deps, access, rule, principal, call.request, name);
            handler(call, callback);
          },
          (err) => callback(failure(deps, name, err, contextOf(name, call.request))),
        );
    } else if (method.methodKind === "server_streaming") {
      guarded[name] = (call: ServerWritableStream<unknown, unknown>) =>
        withPrincipal(
          access,
          call,
          (principal) => {
            checkRule(deps, access, rule, principal, call.request, name);
            handler(call);
          },
          (err) => failStream(call, failure(deps, name, err, contextOf(name, call.request))),
        );
    } else {
      // Streams the client writes to: the rule is checked per message by the handler. A Readable
      // only flows once the handler listens, so nothing is lost while a token is verified.
      guarded[name] = (call: ServerDuplexStream<unknown, unknown>) =>
        withPrincipal(access, call, () => handler(call), (err) => failStream(call, failure(deps, name, err)));
    }
  }
  return guarded;
}

/**
 * Checks one session command (its SessionCommand case) on the session's VM.
 * @throws AccessError PERMISSION_DENIED; Error for a case without a rule (never served unchecked).
 */
export function authorizeSessionCommand(access: AccessControl, principal: Principal, commandCase: string, vm: string): void {
  const verb = COMMAND_VERBS[commandCase];
  if (verb === undefined) throw new Error(`session command ${commandCase} has no authorization rule (auth/rules.ts)`);
  access.authorize(principal, verb, vm, `session.${commandCase}`);
}
