// SPDX-License-Identifier: Apache-2.0
/**
 * The live policy: loaded at start, reloaded when its file changes (fs.watch on the directory, so
 * that a Kubernetes ConfigMap's symlink swap is seen) or on SIGHUP. A reload that fails keeps the
 * policy in force and logs every error; sessions are never dropped, because every call and every
 * session command asks {@link PolicyStore.current} again.
 */
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import type { Logger } from "@kvmi/kvm-bridge";
import type { AuditTrail } from "../audit/audit-log.js";
import { watchConfigFile } from "./file-watch.js";
import { compilePolicy, PolicyError } from "./policy.js";
import type { Policy } from "./policy.js";

/** The current policy, kept up to date. */
export interface PolicyStore {
  current(): Policy;
  /**
   * Reads the file again now. Returns true when the new policy is in force (or unchanged), false
   * when it was invalid and the previous one stays.
   */
  reload(reason: string): boolean;
  /** Stops watching. */
  close(): void;
}

/** Options of {@link loadPolicyStore}. */
export interface PolicyStoreOptions {
  readonly file: string;
  readonly logger: Logger;
  readonly audit: AuditTrail;
  /** Watch the file; default true. */
  readonly watch?: boolean;
  /** Quiet period after a change before reloading, in ms (editors write in several steps); default 200. */
  readonly debounceMs?: number;
}

/**
 * Loads the policy file and starts watching it.
 * @throws PolicyError (every error) or the fs error, when the first load fails: the bridge must
 *   not start without the policy it was given.
 */
export function loadPolicyStore(options: PolicyStoreOptions): PolicyStore {
  const { file, logger, audit } = options;
  const read = (): { policy: Policy; digest: string } => {
    const text = readFileSync(file, "utf8");
    return { policy: compilePolicy(text, file), digest: createHash("sha256").update(text).digest("hex") };
  };
  let { policy, digest } = read();
  logger.info({ policy: file, grants: policy.grantCount, sha256: digest }, "authorization policy loaded");
  audit.record({ action: "policy_reload", reason: "start", file, sha256: digest, result: "ok", grants: policy.grantCount });

  const reload = (reason: string): boolean => {
    let next: { policy: Policy; digest: string };
    try {
      next = read();
    } catch (err) {
      const errors = err instanceof PolicyError ? err.errors : [`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`];
      logger.error({ policy: file, reason, errors }, "policy reload failed; the previous policy stays in force");
      audit.record({ action: "policy_reload", reason, file, result: "invalid", errors });
      return false;
    }
    if (next.digest === digest) return true;
    ({ policy, digest } = next);
    logger.info({ policy: file, reason, grants: policy.grantCount, sha256: digest }, "authorization policy reloaded");
    audit.record({ action: "policy_reload", reason, file, sha256: digest, result: "ok", grants: policy.grantCount });
    return true;
  };

  const stopWatching =
    options.watch === false
      ? () => undefined
      : watchConfigFile({ file, what: "policy", logger, onChange: () => reload("file changed"), ...(options.debounceMs !== undefined && { debounceMs: options.debounceMs }) });

  return {
    current: () => policy,
    reload,
    close: stopWatching,
  };
}
