// SPDX-License-Identifier: Apache-2.0
/**
 * Applies the authorization table (auth/rules.ts) to every RPC of the service: each handler is
 * wrapped so that, before it runs, the caller's principal is resolved (certificate, bearer JWT or
 * `local`), remembered for the handler (principals.ts), and checked against the rule of its
 * method. A method without a rule makes {@link guardImplementation} throw at start-up, so a new
 * RPC cannot be served unchecked. Session messages are checked by session-rpc.ts through
 * {@link authorizeSessionCommand}, with the same table.
 */
import type { ServerDuplexStream, ServerUnaryCall, ServerWritableStream, UntypedServiceImplementation, sendUnaryData } from "@grpc/grpc-js";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import type { AccessControl } from "../auth/access-control.js";
import type { Principal } from "../auth/identity.js";
import { COMMAND_VERBS, requestVm, RPC_RULES } from "../auth/rules.js";
import type { RpcRule } from "../auth/rules.js";
import type { Verb } from "../mapping/access-error.js";
import type { ErrorContext } from "../mapping/status.js";
import type { RpcDeps } from "./call-context.js";
import { failStream, failure } from "./call-context.js";
import { ownerOf, rememberPrincipal } from "./principals.js";

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
    rememberPrincipal(call, call.metadata, principal);
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
