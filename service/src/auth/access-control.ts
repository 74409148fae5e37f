// SPDX-License-Identifier: Apache-2.0
/**
 * The authorization decision, in one place: does this principal hold this verb on this VM under
 * the policy in force now? Denials are audited here; callers only ask. The table of which call
 * needs which verb is `rules.ts`; the gRPC side that applies it to every call is
 * `rpc/authorization.ts`.
 */
import type { AuditTrail } from "../audit/audit-log.js";
import { permissionDenied } from "../mapping/access-error.js";
import type { Verb } from "../mapping/access-error.js";
import type { CallCredentials, Identity, IdentityResolver, Principal } from "./identity.js";
import type { Policy } from "./policy.js";

/** The authorization point. */
export interface AccessControl {
  /** False when every caller may do everything (no policy on loopback, `--authorization none`). */
  readonly enforcing: boolean;
  /** The principal of a call; see {@link IdentityResolver.resolve}. */
  principal(call: CallCredentials): Principal | Promise<Principal>;
  /**
   * Checks a verb on a VM (undefined: bridge-wide).
   * @param what the RPC or session command, for the audit record of a denial.
   * @throws AccessError PERMISSION_DENIED (audited) when the policy does not grant it.
   */
  authorize(principal: Principal, verb: Verb, vm: string | undefined, what: string): void;
  /** The same decision without audit, for filtering lists (ListVms, WatchVms). */
  allows(principal: Principal, verb: Verb, vm: string): boolean;
}

/** Options of {@link createAccessControl}. */
export interface AccessControlOptions {
  readonly identities: IdentityResolver;
  /** The policy in force now (asked on every decision, so reloads apply at once). */
  readonly policy: () => Policy;
  readonly enforcing: boolean;
  /** The device manager's name of a VM, "" when unknown (for name globs and KubeVirt labels). */
  readonly vmName: (uuid: string) => string;
  readonly audit: AuditTrail;
}

/** Who an identity is, as one string: what a controller is bound to. */
export function identityKey(identity: Identity): string {
  return `${identity.source}:${identity.name}`;
}

/** Creates the authorization point. */
export function createAccessControl(options: AccessControlOptions): AccessControl {
  const { policy, vmName, audit } = options;
  const allows = (principal: Principal, verb: Verb, vm: string | undefined): boolean =>
    !options.enforcing || policy().allows(principal.identity, verb, vm === undefined ? undefined : { uuid: vm, name: vmName(vm) });
  return {
    enforcing: options.enforcing,
    principal: (call) => options.identities.resolve(call),
    allows,
    authorize(principal, verb, vm, what) {
      if (allows(principal, verb, vm)) return;
      audit.record({
        action: "denied",
        identity: principal.identity.name,
        source: principal.identity.source,
        peer: principal.peer,
        verb,
        ...(vm !== undefined && { vm }),
        call: what,
      });
      throw permissionDenied(verb, vm);
    },
  };
}
