// SPDX-License-Identifier: Apache-2.0
/**
 * The live JWKS: read at start, read again when its file changes (a Kubernetes Secret or ConfigMap
 * volume's symlink swap included) or on SIGHUP, like the policy (policy-store.ts). The cluster's
 * service-account signing keys rotate; a bridge that read them only at start would refuse every
 * token signed with a new key until restarted. A reload that fails (unreadable, not JSON, not a key
 * set) keeps the keys in force and logs why; sessions are never dropped (a
 * session's identity was established when it opened; each call verifies its token again, with
 * the keys in force then).
 */
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { createLocalJWKSet } from "jose";
import type { JWTVerifyGetKey } from "jose";
import type { Logger } from "@kvmi/kvm-bridge";
import type { AuditTrail } from "../audit/audit-log.js";
import { watchConfigFile } from "./file-watch.js";
import { readJwksFile } from "./jwt.js";
import type { JwksSource } from "./jwt.js";

/** The current key set, kept up to date. */
export interface JwksStore extends JwksSource {
  /** Reads the file again now. True when the keys in force are the file's, false when it was bad. */
  reload(reason: string): boolean;
  /** Stops watching. */
  close(): void;
}

/** Options of {@link loadJwksStore}. */
export interface JwksStoreOptions {
  readonly file: string;
  readonly logger: Logger;
  readonly audit: AuditTrail;
  /** Watch the file; default true. */
  readonly watch?: boolean;
  /** Quiet period after a change before reloading, in ms; default 200. */
  readonly debounceMs?: number;
}

/**
 * Loads the JWKS file and starts watching it.
 * @throws Error naming the file when the first load fails: the bridge must not start without the
 *   keys it was given.
 */
export function loadJwksStore(options: JwksStoreOptions): JwksStore {
  const { file, logger, audit } = options;
  const read = (): { keys: JWTVerifyGetKey; digest: string; count: number } => {
    const text = readFileSync(file, "utf8");
    const jwks = readJwksFile(file);
    return { keys: createLocalJWKSet(jwks), digest: createHash("sha256").update(text).digest("hex"), count: jwks.keys.length };
  };
  let { keys, digest, count } = read();
  logger.info({ jwks: file, keys: count, sha256: digest }, "JWKS loaded");
  audit.record({ action: "jwks_reload", reason: "start", file, sha256: digest, result: "ok", keys: count });

  const reload = (reason: string): boolean => {
    let next: ReturnType<typeof read>;
    try {
      next = read();
    } catch (err) {
      const error = (err as NodeJS.ErrnoException).code === "ENOENT" ? `cannot read ${file}: ENOENT` : (err as Error).message;
      logger.error({ jwks: file, reason, error }, "JWKS reload failed; the previous keys stay in force");
      audit.record({ action: "jwks_reload", reason, file, result: "invalid", errors: [error] });
      return false;
    }
    if (next.digest === digest) return true;
    ({ keys, digest, count } = next);
    logger.info({ jwks: file, reason, keys: count, sha256: digest }, "JWKS reloaded");
    audit.record({ action: "jwks_reload", reason, file, sha256: digest, result: "ok", keys: count });
    return true;
  };

  const stopWatching =
    options.watch === false
      ? () => undefined
      : watchConfigFile({ file, what: "JWKS", logger, onChange: () => reload("file changed"), ...(options.debounceMs !== undefined && { debounceMs: options.debounceMs }) });

  return { current: () => keys, reload, close: stopWatching };
}
