// SPDX-License-Identifier: Apache-2.0
/**
 * The value parsers of the configuration schema (options.ts): each takes a raw value (a string
 * from a flag or the environment, any JSON value from the file) and returns the typed value or a
 * message saying what is wrong, never throwing, so that every error is reported at once.
 */
import { KNOWN_DIALECT_NAMES } from "@kvmi/kvm-bridge/wire";
import { accessSync, constants as fsConstants, statSync } from "node:fs";
import { resolve } from "node:path";
import { formatGrpcListen, formatHostPort, formatKvmiListen, parseGrpcListen, parseHostPort, parseKvmiListen } from "./address.js";
import type { ParseResult } from "./address.js";

/** Where a raw value comes from; used to resolve relative paths and to name it in errors. */
export interface ValueContext {
  /** Directory relative paths are resolved against (cwd, or the config file's directory). */
  readonly baseDir: string;
}

/** Parses and validates one raw value. */
export type Parser<T> = (raw: unknown, ctx: ValueContext) => ParseResult<T>;

/**
 * Largest timer Node can arm: setTimeout() treats anything above 2^31-1 ms as 1 ms.
 * @see https://nodejs.org/api/timers.html#settimeoutcallback-delay-args
 */
export const MAX_TIMER_MS = 2_147_483_647;

/** A successful parse. */
export const ok = <T>(value: T): ParseResult<T> => ({ ok: true, value });
const fail = <T>(error: string): ParseResult<T> => ({ ok: false, error });

function show(raw: unknown): string {
  return typeof raw === "string" ? JSON.stringify(raw) : String(JSON.stringify(raw) ?? raw);
}

export function integer(min: number, max: number, unit: string): Parser<number> {
  return (raw) => {
    let value: number;
    if (typeof raw === "number") value = raw;
    else if (typeof raw === "string" && /^\s*\d+\s*$/.test(raw)) value = Number(raw);
    else return fail(`${show(raw)} is not a whole number${unit ? ` of ${unit}` : ""}`);
    if (!Number.isSafeInteger(value)) return fail(`${show(raw)} is not a whole number${unit ? ` of ${unit}` : ""}`);
    if (value < min || value > max) return fail(`${value} is out of range ${min}..${max}${unit ? ` ${unit}` : ""}`);
    return ok(value);
  };
}

export const boolean: Parser<boolean> = (raw) => {
  if (typeof raw === "boolean") return ok(raw);
  if (typeof raw === "string") {
    const text = raw.trim().toLowerCase();
    if (["true", "1", "yes", "on"].includes(text)) return ok(true);
    if (["false", "0", "no", "off"].includes(text)) return ok(false);
  }
  return fail(`${show(raw)} is not a boolean (true|false)`);
};

export function oneOf<const V extends readonly string[]>(values: V): Parser<V[number]> {
  return (raw) =>
    typeof raw === "string" && (values as readonly string[]).includes(raw)
      ? ok(raw as V[number])
      : fail(`${show(raw)} is not one of ${values.join("|")}`);
}

export function nonEmptyString(raw: unknown): ParseResult<string> {
  return typeof raw === "string" && raw.trim() !== "" ? ok(raw) : fail(`${show(raw)} is not a non-empty string`);
}

/**
 * A path to a readable regular file, resolved against the context directory. The check runs at
 * start-up so that a missing certificate is reported with every other error, not at first use.
 */
export const readableFile: Parser<string | undefined> = (raw, ctx) => {
  const text = nonEmptyString(raw);
  if (!text.ok) return fail(text.error);
  const path = resolve(ctx.baseDir, text.value);
  try {
    if (!statSync(path).isFile()) return fail(`"${path}" is not a regular file`);
    accessSync(path, fsConstants.R_OK);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return fail(`file "${path}" does not exist`);
    if (code === "EACCES") return fail(`file "${path}" is not readable by this process`);
    return fail(`file "${path}" cannot be read (${code ?? String(error)})`);
  }
  return ok(path);
};

/** Splits `a,b , c` into trimmed, non-empty items. */
function splitList(text: string): string[] {
  return text
    .split(",")
    .map((item) => item.trim())
    .filter((item) => item !== "");
}

/** Flattens a list raw value: repeated flags (string[]), a comma list, or a file array. */
function listItems(raw: unknown): ParseResult<string[]> {
  if (typeof raw === "string") return ok(splitList(raw));
  if (Array.isArray(raw)) {
    const items: string[] = [];
    for (const item of raw) {
      if (typeof item !== "string") return fail(`list item ${show(item)} is not a string`);
      items.push(...splitList(item));
    }
    return ok(items);
  }
  return fail(`${show(raw)} is not a list of strings`);
}

export const kvmiListen: Parser<readonly string[]> = (raw, ctx) => {
  const items = listItems(raw);
  if (!items.ok) return fail(items.error);
  if (items.value.length === 0) return fail("at least one address is required (unix:PATH or tcp:HOST:PORT)");
  const problems: string[] = [];
  const seen = new Set<string>();
  const out: string[] = [];
  for (const item of items.value) {
    // `DIALECT@ADDRESS` chooses the dialect of one listener (kvmi-v7@unix:/run/kvmi/libkvmi.sock).
    const { dialect, address } = splitListenDialect(item);
    if (dialect !== undefined && !KNOWN_DIALECT_NAMES.includes(dialect)) {
      problems.push(`${item}: the dialect before @ must be one of ${KNOWN_DIALECT_NAMES.join(", ")}`);
      continue;
    }
    const parsed = parseKvmiListen(address, ctx.baseDir);
    if (!parsed.ok) {
      problems.push(parsed.error);
      continue;
    }
    const normal = formatKvmiListen(parsed.value);
    if (seen.has(normal)) problems.push(`${normal} is listed twice`);
    seen.add(normal);
    out.push(dialect === undefined ? normal : `${dialect}@${normal}`);
  }
  return problems.length > 0 ? fail(problems.join("; ")) : ok(out);
};

/**
 * Splits `DIALECT@ADDRESS` (a kvmiListen entry with its own dialect) from a plain address. Only a
 * prefix before `unix:` or `tcp:` counts, so a unix path holding `@` stays a path.
 */
export function splitListenDialect(item: string): { readonly dialect: string | undefined; readonly address: string } {
  const match = /^([a-z0-9-]+)@((?:unix|tcp):.*)$/.exec(item);
  return match === null ? { dialect: undefined, address: item } : { dialect: match[1]!, address: match[2]! };
}

/** `UID:GID`, both numeric: names would need the host's user database, which a container may lack. */
export const socketOwner: Parser<{ readonly uid: number; readonly gid: number } | undefined> = (raw) => {
  const match = typeof raw === "string" ? /^\s*(\d{1,10}):(\d{1,10})\s*$/.exec(raw) : null;
  if (match === null) return fail(`${show(raw)} is not a numeric owner like "107:107" (uid:gid)`);
  const [uid, gid] = [Number(match[1]), Number(match[2])];
  if (uid > 0xffff_fffe || gid > 0xffff_fffe) return fail(`${show(raw)}: uid and gid must be below 4294967295`);
  return ok({ uid, gid });
};

export const socketMode: Parser<number> = (raw) => {
  if (typeof raw === "number") {
    // YAML reads 0660 as decimal 660 and 0o660 as 432: both are ambiguous, so insist on a string.
    return fail(`${raw} is a number; write the mode as a quoted octal string, e.g. "0660"`);
  }
  if (typeof raw !== "string" || !/^0?[0-7]{3}$/.test(raw.trim())) {
    return fail(`${show(raw)} is not an octal permission mode like "0660"`);
  }
  return ok(Number.parseInt(raw.trim(), 8));
};

export const metricsListen: Parser<string> = (raw) => {
  if (raw === false || raw === "off") return ok("off");
  if (typeof raw !== "string") return fail(`${show(raw)} is neither HOST:PORT nor "off"`);
  const parsed = parseHostPort(raw);
  return parsed.ok ? ok(formatHostPort(parsed.value)) : fail(`${parsed.error} (or "off" to disable metrics)`);
};

export const grpcListen: Parser<string> = (raw, ctx) => {
  if (typeof raw !== "string") return fail(`${show(raw)} is neither HOST:PORT nor unix:PATH`);
  const parsed = parseGrpcListen(raw, ctx.baseDir);
  return parsed.ok ? ok(formatGrpcListen(parsed.value)) : fail(parsed.error);
};

export const timeoutMs = integer(1, MAX_TIMER_MS, "ms");

/**
 * Deadlines per name (e.g. per event): `cr=1000,msr=2000` (flag, env, or a string in the file), repeated flags,
 * or a mapping `{cr: 1000}` in the file.
 */
export function msPerName<const N extends readonly string[]>(names: N, noun: string): Parser<Readonly<Partial<Record<N[number], number>>>> {
  return (raw) => {
    const entries: Array<[string, unknown]> = [];
    if (typeof raw === "string" || Array.isArray(raw)) {
      const items = listItems(raw);
      if (!items.ok) return fail(items.error);
      for (const item of items.value) {
        const eq = item.indexOf("=");
        if (eq <= 0) return fail(`"${item}" is not EVENT=MS (e.g. cr=1000)`);
        entries.push([item.slice(0, eq).trim(), item.slice(eq + 1).trim()]);
      }
    } else if (raw !== null && typeof raw === "object") {
      entries.push(...Object.entries(raw));
    } else {
      return fail(`${show(raw)} is neither EVENT=MS,... nor a mapping of event to ms`);
    }
    const problems: string[] = [];
    const out: Partial<Record<N[number], number>> = {};
    for (const [name, value] of entries) {
      if (!(names as readonly string[]).includes(name)) {
        problems.push(`unknown ${noun} "${name}" (${noun}s: ${names.join(", ")})`);
        continue;
      }
      const ms = timeoutMs(value, { baseDir: "" });
      if (ms.ok) out[name as N[number]] = ms.value;
      else problems.push(`${name}: ${ms.error}`);
    }
    return problems.length > 0 ? fail(problems.join("; ")) : ok(out);
  };
}
