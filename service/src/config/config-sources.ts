// SPDX-License-Identifier: Apache-2.0
/**
 * Reads the raw values of two of loadConfig's layers (load-config.ts): the command line
 * ({@link parseArgv}) and the config file ({@link readConfigFile}), each value labelled the way
 * the user spelled it. Apart from load-config.ts because this is syntax (flag forms, file formats,
 * "did you mean" suggestions); load-config.ts decides which value wins and parses it.
 */
import { readFileSync } from "node:fs";
import { dirname, extname, resolve } from "node:path";
import { parse as parseYaml } from "yaml";
import { OPTION_KEYS, OPTIONS, flagName } from "./options.js";
import type { BridgeConfig, ValueContext } from "./options.js";

/** The layer a value comes from; flags beat env, env beats the file. */
export type Layer = "flag" | "env" | "file";

/** One raw value from one layer. */
export interface RawValue {
  readonly layer: Layer;
  readonly value: unknown;
  /** How the user spelled it, for error messages. */
  readonly label: string;
  readonly ctx: ValueContext;
}

const META_FLAGS = new Set(["help", "print-config", "config"]);
const byFlag = new Map(OPTION_KEYS.map((key) => [flagName(key), key]));

/** What the command line says: the action flags, `--config`, and each option's raw value. */
export interface ParsedArgv {
  readonly help: boolean;
  readonly printConfig: boolean;
  readonly configPath: string | undefined;
  readonly values: ReadonlyArray<readonly [keyof BridgeConfig, RawValue]>;
}

/** Parses `argv` into raw flag values; list and map flags may repeat, other options may not. */
export function parseArgv(argv: readonly string[], ctx: ValueContext, errors: string[]): ParsedArgv {
  let help = false;
  let printConfig = false;
  let configPath: string | undefined;
  const scalars = new Map<keyof BridgeConfig, RawValue>();
  const repeated = new Map<keyof BridgeConfig, { label: string; items: string[] }>();
  for (let i = 0; i < argv.length; i++) {
    const token = argv[i]!;
    if (token === "-h") {
      help = true;
      continue;
    }
    if (token === "--") {
      for (const rest of argv.slice(i + 1)) errors.push(`unexpected argument "${rest}"`);
      break;
    }
    if (!token.startsWith("--")) {
      errors.push(`unexpected argument "${token}" (options start with --; see --help)`);
      continue;
    }
    const eq = token.indexOf("=");
    const name = token.slice(2, eq < 0 ? undefined : eq);
    const inline = eq < 0 ? undefined : token.slice(eq + 1);
    const label = `--${name}`;
    const takeValue = (): string | undefined => {
      if (inline !== undefined) return inline;
      const next = argv[i + 1];
      if (next === undefined || next.startsWith("--")) {
        errors.push(`${label}: needs a value`);
        return undefined;
      }
      i++;
      return next;
    };

    if (META_FLAGS.has(name)) {
      if (name === "config") {
        const value = takeValue();
        if (value !== undefined) {
          if (configPath !== undefined) errors.push(`--config: given more than once`);
          configPath = resolve(ctx.baseDir, value);
        }
      } else if (inline !== undefined) {
        errors.push(`${label}: takes no value`);
      } else if (name === "help") help = true;
      else printConfig = true;
      continue;
    }

    const negated = name.startsWith("no-") ? byFlag.get(name.slice(3)) : undefined;
    if (negated !== undefined && OPTIONS[negated].shape === "bool") {
      if (inline !== undefined) errors.push(`${label}: takes no value`);
      else setScalar(negated, { layer: "flag", value: false, label, ctx });
      continue;
    }
    const key = byFlag.get(name);
    if (key === undefined) {
      errors.push(`${label}: unknown option${suggest(label, [...[...byFlag.keys()].map((f) => `--${f}`), "--config", "--print-config", "--help"])}`);
      continue;
    }
    const shape = OPTIONS[key].shape;
    if (shape === "bool") {
      setScalar(key, { layer: "flag", value: inline ?? true, label, ctx });
    } else if (shape === "list" || shape === "map") {
      const value = takeValue();
      if (value === undefined) continue;
      const entry = repeated.get(key) ?? { label, items: [] };
      entry.items.push(value);
      repeated.set(key, entry);
    } else {
      const value = takeValue();
      if (value !== undefined) setScalar(key, { layer: "flag", value, label, ctx });
    }
  }
  function setScalar(key: keyof BridgeConfig, raw: RawValue): void {
    if (scalars.has(key)) errors.push(`${raw.label}: given more than once (as ${scalars.get(key)!.label})`);
    scalars.set(key, raw);
  }
  const values: Array<readonly [keyof BridgeConfig, RawValue]> = [...scalars];
  for (const [key, { label, items }] of repeated) values.push([key, { layer: "flag", value: items, label, ctx }]);
  return { help, printConfig, configPath, values };
}

/** The raw values of a `.yaml`, `.yml` or `.json` config file; `source` names how it was given. */
export function readConfigFile(path: string, source: string, errors: string[]): Array<readonly [keyof BridgeConfig, RawValue]> {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    errors.push(`${source}: cannot read "${path}" (${code === "ENOENT" ? "no such file" : (code ?? String(error))})`);
    return [];
  }
  const ext = extname(path).toLowerCase();
  let document: unknown;
  try {
    if (ext === ".json") document = JSON.parse(text);
    else if (ext === ".yaml" || ext === ".yml") document = parseYaml(text);
    else {
      errors.push(`${source}: "${path}" must end in .yaml, .yml or .json`);
      return [];
    }
  } catch (error) {
    errors.push(`${source}: "${path}" is not valid ${ext === ".json" ? "JSON" : "YAML"}: ${(error as Error).message.split("\n")[0]}`);
    return [];
  }
  if (document === null || document === undefined) return []; // An empty file configures nothing.
  if (typeof document !== "object" || Array.isArray(document)) {
    errors.push(`${source}: "${path}" must hold a mapping of option names to values`);
    return [];
  }
  const ctx: ValueContext = { baseDir: dirname(path) };
  const out: Array<readonly [keyof BridgeConfig, RawValue]> = [];
  for (const [name, value] of Object.entries(document)) {
    const label = `${name} in ${path}`;
    if (!Object.hasOwn(OPTIONS, name)) {
      errors.push(`${label}: unknown option${suggest(name, OPTION_KEYS)}`);
      continue;
    }
    if (value === null) continue; // null means "not set here", so a printed config can be fed back.
    out.push([name as keyof BridgeConfig, { layer: "file", value, label, ctx }]);
  }
  return out;
}

/** ` (did you mean X?)` for the closest candidate within a small edit distance, or "". */
export function suggest(input: string, candidates: Iterable<string>): string {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const candidate of candidates) {
    const distance = editDistance(input.toLowerCase(), candidate.toLowerCase());
    if (distance < bestDistance) {
      best = candidate;
      bestDistance = distance;
    }
  }
  return best !== undefined && bestDistance <= Math.max(2, Math.floor(input.length / 4)) ? ` (did you mean ${best}?)` : "";
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(previous[j]! + 1, current[j - 1]! + 1, previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    previous = current;
  }
  return previous[b.length]!;
}
