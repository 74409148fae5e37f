// SPDX-License-Identifier: Apache-2.0
/**
 * The QEMU introspection cookie secret. QEMU hashes the secret object's bytes as they are (a
 * `-object secret,file=...` keeps a trailing newline), so the bridge must not trim them either.
 */
import { readFileSync } from "node:fs";
import type { BridgeConfig } from "./options.js";

/**
 * Returns the cookie secret bytes from `secretFile` (read now, so a rotated file is picked up by
 * the next handshake) or from the inline `secret`, or `undefined` when neither is configured.
 *
 * @throws the `fs` error when `secretFile` disappeared after start-up validation.
 */
export function readSecret(config: Pick<BridgeConfig, "secret" | "secretFile">): Buffer | undefined {
  if (config.secretFile !== undefined) return readFileSync(config.secretFile);
  if (config.secret !== undefined) return Buffer.from(config.secret, "utf8");
  return undefined;
}
