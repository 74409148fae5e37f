// SPDX-License-Identifier: Apache-2.0
/**
 * Every dialect table this package carries, and the lookup by the name users type
 * (`--dialect kvmi-v7`, `--kvmi-dialect v12`). Choosing a table by name happens here and only
 * here: what follows reads the table (docs/decisions/0010-dialect-model.md).
 */
import { KvmiArgumentError } from "../../errors.js";
import type { Dialect } from "../dialect.js";
import { kvmiV7 } from "./kvmi-v7.js";
import { v12 } from "./v12.js";
import { v9 } from "./v9.js";

/** The dialects, the default (v9, the first milestone's) first. */
export const KNOWN_DIALECTS: readonly Dialect[] = Object.freeze([v9, v12, kvmiV7]);

/** The names `dialectByName` accepts, for help texts and errors. */
export const KNOWN_DIALECT_NAMES: readonly string[] = Object.freeze(KNOWN_DIALECTS.map((d) => d.name));

/**
 * The dialect called `name` (`v9`, `v12`, `kvmi-v7`).
 * @throws KvmiArgumentError naming the known dialects when there is none of that name.
 */
export function dialectByName(name: string, field = "dialect"): Dialect {
  const dialect = KNOWN_DIALECTS.find((d) => d.name === name);
  if (dialect === undefined) {
    throw new KvmiArgumentError(field, `${field} must be one of ${KNOWN_DIALECT_NAMES.join(", ")}, got ${JSON.stringify(name)}`);
  }
  return dialect;
}
