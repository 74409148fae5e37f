// SPDX-License-Identifier: Apache-2.0
/**
 * THE one path of every non-streaming call of the SDK, whatever carries it: the {@link Transport}
 * interface (unary RPCs of a VmHandle, or the session stream), the retry decision per method
 * (AIP-194, from the proto's `guest_effect` option), and {@link dispatch}. Separate from the typed
 * methods in `commands.ts` because the session and the client plug their transports in here, and
 * the retry rule must stay the same for both.
 * @internal
 */
import { getOption } from "@bufbuild/protobuf";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { guest_effect, GuestEffect, IntrospectionService } from "@kvmi/proto";
import type { SessionCommand } from "@kvmi/proto";
import { createRequest } from "./channel.js";
import type { CallOptions } from "./channel.js";
import { withRetry } from "./retry.js";
import type { RetryPolicy } from "./retry.js";
import type { RequestOf, ResponseOf, ServiceMethods, UnaryMethodName } from "./rpc-methods.js";

const REPEATABLE_EFFECTS: ReadonlySet<GuestEffect> = new Set([GuestEffect.NONE, GuestEffect.IDEMPOTENT]);

/** The commands a session can run: the KVMI commands plus BatchReadMemory (`SessionCommand.request` cases). */
export type CommandName = Exclude<SessionCommand["request"]["case"], undefined | SessionOnlyCommand>;
/** SessionCommand cases with no unary RPC; the session exposes them as methods of its own (setEventFilter). */
export type SessionOnlyCommand = "setEventFilter";

/**
 * The methods the SDK retries on UNAVAILABLE (AIP-194): those whose `(kvmi.v1.guest_effect)`
 * (proto/kvmi/v1/guest_effect.proto) says a repetition is harmless, reads and idempotent changes,
 * read from the descriptor the bridge reads too. A pause or an exception injection
 * (GUEST_EFFECT_REPEATED) and anything undeclared is never retried automatically.
 */
export const IDEMPOTENT_METHODS: ReadonlySet<UnaryMethodName> = new Set(
  IntrospectionService.methods
    .filter((m) => m.methodKind === "unary" && REPEATABLE_EFFECTS.has(getOption(m, guest_effect)))
    .map((m) => m.localName as UnaryMethodName),
);

/** Carries one request of a method and returns its response. @internal */
export interface Transport<N extends UnaryMethodName = UnaryMethodName> {
  /** One attempt; rejects with any error (normalized by {@link dispatch}). */
  run<M extends N>(name: M, request: RequestOf<M>, options: CallOptions): Promise<ResponseOf<M>>;
  /** False once the transport is gone for good (a closed session). */
  readonly usable: boolean;
}

/**
 * THE one path of every non-streaming call of the SDK: builds the request and runs it with the
 * retry policy (idempotent methods on UNAVAILABLE only). @internal
 */
export function dispatch<N extends UnaryMethodName, M extends N>(
  transport: Transport<N>,
  policy: RetryPolicy,
  name: M,
  init: MessageInitShape<ServiceMethods[M]["input"]>,
  options: CallOptions = {},
): Promise<ResponseOf<M>> {
  const request = createRequest(name, init);
  return withRetry(() => transport.run(name, request, options), {
    idempotent: IDEMPOTENT_METHODS.has(name),
    policy,
    signal: options.signal,
    canRetry: () => transport.usable,
  });
}
