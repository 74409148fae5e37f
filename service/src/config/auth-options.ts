// SPDX-License-Identifier: Apache-2.0
/**
 * The identity, policy and audit options of the bridge (docs/authorization.md), declared like
 * every other option (options.ts spreads {@link AUTH_OPTIONS} into its table) and checked across
 * options by {@link checkAuthOptions}. The parsers are local: options.ts imports this module, so
 * this one must not import values back from it.
 */
import { accessSync, constants as fsConstants, statSync } from "node:fs";
import { dirname, resolve } from "node:path";
import type { ParseResult } from "./address.js";
import type { OptionSpec } from "./options.js";

/** `policy`: enforce the policy file (required off loopback); `none`: every caller may do everything. */
export const AUTHORIZATION_MODES = ["policy", "none"] as const;
/** One of {@link AUTHORIZATION_MODES}. */
export type AuthorizationMode = (typeof AUTHORIZATION_MODES)[number];

/** The options of this module, part of `BridgeConfig`. */
export interface AuthConfig {
  /** Whether calls are authorized; `none` must be given explicitly to serve off loopback without a policy. */
  readonly authorization: AuthorizationMode;
  /** The YAML policy file; reloaded on change and on SIGHUP. */
  readonly policyFile: string | undefined;
  /** JWKS file (`{"keys": [...]}`) that bearer JWTs are verified against; enables bearer tokens. */
  readonly jwtJwksFile: string | undefined;
  /** Accepted JWT issuers (`iss`), e.g. the cluster's service-account issuer. */
  readonly jwtIssuer: readonly string[];
  /** Accepted JWT audiences (`aud`), e.g. `kvmi-bridge`. */
  readonly jwtAudience: readonly string[];
  /** JWT claim holding the caller's groups. */
  readonly jwtGroupsClaim: string;
  /** Audit file (JSON lines, hash-chained); unset: no audit file. */
  readonly auditFile: string | undefined;
  /** Also write audit records to stdout. */
  readonly auditStdout: boolean;
  /** Size at which the audit file rotates, in bytes. */
  readonly auditMaxBytes: number;
  /** Rotated audit files kept. */
  readonly auditMaxFiles: number;
}

const ok = <T>(value: T): ParseResult<T> => ({ ok: true, value });
const fail = <T>(error: string): ParseResult<T> => ({ ok: false, error });
const show = (raw: unknown): string => String(JSON.stringify(raw) ?? raw);

function nonEmpty(raw: unknown): ParseResult<string> {
  return typeof raw === "string" && raw.trim() !== "" ? ok(raw.trim()) : fail(`${show(raw)} is not a non-empty string`);
}

const readableFile: OptionSpec<string | undefined>["parse"] = (raw, ctx) => {
  const text = nonEmpty(raw);
  if (!text.ok) return fail(text.error);
  const path = resolve(ctx.baseDir, text.value);
  try {
    if (!statSync(path).isFile()) return fail(`"${path}" is not a regular file`);
    accessSync(path, fsConstants.R_OK);
  } catch (error) {
    return fail(`file "${path}" cannot be read (${(error as NodeJS.ErrnoException).code ?? String(error)})`);
  }
  return ok(path);
};

/** A file the bridge will create or append to: its directory must exist and be writable. */
const writableFile: OptionSpec<string | undefined>["parse"] = (raw, ctx) => {
  const text = nonEmpty(raw);
  if (!text.ok) return fail(text.error);
  const path = resolve(ctx.baseDir, text.value);
  try {
    accessSync(dirname(path), fsConstants.W_OK);
  } catch (error) {
    return fail(`directory "${dirname(path)}" is not writable (${(error as NodeJS.ErrnoException).code ?? String(error)})`);
  }
  return ok(path);
};

const stringList: OptionSpec<readonly string[]>["parse"] = (raw) => {
  const items = typeof raw === "string" ? [raw] : Array.isArray(raw) ? raw : undefined;
  if (items === undefined || !items.every((item) => typeof item === "string")) return fail(`${show(raw)} is not a list of strings`);
  return ok(items.flatMap((item: string) => item.split(",")).map((item) => item.trim()).filter((item) => item !== ""));
};

const boolean: OptionSpec<boolean>["parse"] = (raw) => {
  if (typeof raw === "boolean") return ok(raw);
  const text = typeof raw === "string" ? raw.trim().toLowerCase() : "";
  if (["true", "1", "yes", "on"].includes(text)) return ok(true);
  if (["false", "0", "no", "off"].includes(text)) return ok(false);
  return fail(`${show(raw)} is not a boolean (true|false)`);
};

function integer(min: number, max: number): OptionSpec<number>["parse"] {
  return (raw) => {
    const value = typeof raw === "number" ? raw : typeof raw === "string" && /^\s*\d+\s*$/.test(raw) ? Number(raw) : NaN;
    if (!Number.isSafeInteger(value)) return fail(`${show(raw)} is not a whole number`);
    return value < min || value > max ? fail(`${value} is out of range ${min}..${max}`) : ok(value);
  };
}

/** The option table of this module (keys are file spellings; options.ts derives flags and env). */
export const AUTH_OPTIONS: { readonly [K in keyof AuthConfig]-?: OptionSpec<AuthConfig[K]> } = {
  authorization: {
    shape: "scalar",
    valueName: `<${AUTHORIZATION_MODES.join("|")}>`,
    description:
      "policy: enforce --policy-file (required unless gRPC listens on loopback, where no policy allows all); none: no authorization at all (logged at start).",
    defaultValue: "policy",
    parse: (raw) =>
      typeof raw === "string" && (AUTHORIZATION_MODES as readonly string[]).includes(raw)
        ? ok(raw as AuthorizationMode)
        : fail(`${show(raw)} is not one of ${AUTHORIZATION_MODES.join("|")}`),
  },
  policyFile: {
    shape: "scalar",
    valueName: "<file>",
    description: "YAML policy granting identities verbs on VMs (default deny); reloaded on change and SIGHUP.",
    defaultValue: undefined,
    parse: readableFile,
  },
  jwtJwksFile: {
    shape: "scalar",
    valueName: "<file>",
    description: "JWKS file to verify bearer JWTs against (e.g. the cluster's service-account keys); enables bearer tokens; reloaded on change and SIGHUP.",
    defaultValue: undefined,
    parse: readableFile,
  },
  jwtIssuer: {
    shape: "list",
    valueName: "<iss>",
    description: "Accepted JWT issuers, e.g. https://kubernetes.default.svc.cluster.local (required with --jwt-jwks-file).",
    defaultValue: [],
    parse: stringList,
  },
  jwtAudience: {
    shape: "list",
    valueName: "<aud>",
    description: "Accepted JWT audiences, e.g. kvmi-bridge (required with --jwt-jwks-file).",
    defaultValue: [],
    parse: stringList,
  },
  jwtGroupsClaim: {
    shape: "scalar",
    valueName: "<claim>",
    description: "JWT claim holding the caller's groups, matched by the policy's `groups`.",
    defaultValue: "groups",
    parse: nonEmpty,
  },
  auditFile: {
    shape: "scalar",
    valueName: "<file>",
    description: "Append-only, hash-chained JSON-lines audit file (check with `kvmi-bridge audit verify FILE`); see also --audit-stdout.",
    defaultValue: undefined,
    parse: writableFile,
  },
  auditStdout: {
    shape: "bool",
    valueName: "",
    description: "Also write audit records to stdout (each carries \"audit\": true besides the log lines).",
    defaultValue: false,
    parse: boolean,
  },
  auditMaxBytes: {
    shape: "scalar",
    valueName: "<bytes>",
    description: "Size at which the audit file rotates to FILE.1, FILE.2, …",
    defaultValue: 64 * 1024 * 1024,
    parse: integer(4096, Number.MAX_SAFE_INTEGER),
  },
  auditMaxFiles: {
    shape: "scalar",
    valueName: "<n>",
    description: "Rotated audit files kept besides the live one.",
    defaultValue: 5,
    parse: integer(1, 1000),
  },
};

/**
 * Checks the auth options against each other and the listener.
 * @param plaintextLoopback whether gRPC listens on loopback or a unix socket.
 */
export function checkAuthOptions(
  c: Partial<AuthConfig>,
  plaintextLoopback: boolean | undefined,
  name: (key: keyof AuthConfig | "grpcListen") => string,
  errors: string[],
): void {
  if (c.authorization === "none" && c.policyFile !== undefined) {
    errors.push(`${name("policyFile")}: --authorization none disables the policy; drop one of the two`);
  }
  if (c.authorization === "policy" && c.policyFile === undefined && plaintextLoopback === false) {
    errors.push(
      `${name("grpcListen")}: gRPC listens off loopback, so a policy is required: give --policy-file, ` +
        "or --authorization none to let every caller that reaches the port do everything",
    );
  }
  if (c.jwtJwksFile !== undefined) {
    if ((c.jwtIssuer ?? []).length === 0) errors.push(`${name("jwtJwksFile")}: bearer JWTs need at least one accepted issuer (--jwt-issuer)`);
    if ((c.jwtAudience ?? []).length === 0) errors.push(`${name("jwtJwksFile")}: bearer JWTs need at least one accepted audience (--jwt-audience)`);
  } else {
    for (const key of ["jwtIssuer", "jwtAudience"] as const) {
      if ((c[key] ?? []).length > 0) errors.push(`${name(key)}: needs --jwt-jwks-file, the keys to verify tokens with`);
    }
  }
}
