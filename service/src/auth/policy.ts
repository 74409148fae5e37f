// SPDX-License-Identifier: Apache-2.0
/**
 * The policy file: which identities may use which verbs on which VMs. YAML, validated against a
 * JSON schema (ajv, every error with its path), compiled once into matchers (picomatch globs).
 * Default deny: a call is allowed only when a grant names the caller, the verb and the VM.
 *
 * docs/authorization.md is the user's reference; keep the two in step.
 */
import { Ajv } from "ajv";
import type { ErrorObject } from "ajv";
import picomatch from "picomatch";
import { parseDocument } from "yaml";
import type { Verb } from "../mapping/access-error.js";
import type { Identity } from "./identity.js";

/** Every verb, in order of how much they allow. */
export const VERBS: readonly Verb[] = ["list", "read", "observe", "control", "release", "admin"];

/**
 * What a granted verb implies: reading a VM's memory without seeing it listed would be odd, and a
 * controller observes events anyway. `admin` implies everything.
 */
const IMPLIES: { readonly [V in Verb]: readonly Verb[] } = {
  list: ["list"],
  read: ["read", "list"],
  observe: ["observe", "list"],
  control: ["control", "observe", "read", "list"],
  release: ["release", "list"],
  admin: VERBS,
};

/** What the policy knows about a VM. */
export interface VmFacts {
  readonly uuid: string;
  /** The device manager's name of the VM (QEMU `-name`), "" when unknown. */
  readonly name: string;
}

/** A compiled, immutable policy. */
export interface Policy {
  /** True when a grant gives `identity` the `verb` on `vm` (undefined: bridge-wide, only `vms: all` grants). */
  allows(identity: Identity, verb: Verb, vm: VmFacts | undefined): boolean;
  /** The labels of a VM: derived from its name (KubeVirt) and the static `vmLabels` map. */
  labelsOf(vm: VmFacts): Readonly<Record<string, string>>;
  /** Number of grants, for the reload log line. */
  readonly grantCount: number;
}

/** A policy file that does not validate: every problem, each with its path in the document. */
export class PolicyError extends Error {
  readonly code = "KVMI_BRIDGE_POLICY_INVALID";
  constructor(
    readonly source: string,
    readonly errors: readonly string[],
  ) {
    super(`policy ${source} is invalid (${errors.length} ${errors.length === 1 ? "error" : "errors"}):\n  - ${errors.join("\n  - ")}`);
    this.name = "PolicyError";
  }
}

const UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";
const nonEmptyStrings = { type: "array", minItems: 1, items: { type: "string", minLength: 1 } } as const;

/** The JSON schema of the policy file (draft-07, as ajv's default). */
export const POLICY_SCHEMA = {
  type: "object",
  additionalProperties: false,
  required: ["version", "grants"],
  properties: {
    version: { const: 1 },
    vmLabels: {
      type: "object",
      propertyNames: { pattern: UUID_PATTERN },
      additionalProperties: { type: "object", additionalProperties: { type: "string" } },
    },
    grants: {
      type: "array",
      items: {
        type: "object",
        additionalProperties: false,
        required: ["verbs", "vms"],
        // A grant names identities, groups or both.
        if: { not: { required: ["groups"] } },
        then: { required: ["identities"] },
        properties: {
          description: { type: "string" },
          identities: nonEmptyStrings,
          groups: nonEmptyStrings,
          verbs: { type: "array", minItems: 1, uniqueItems: true, items: { enum: VERBS } },
          vms: {
            if: { type: "string" },
            then: { const: "all" },
            else: {
                type: "array",
                minItems: 1,
                items: {
                  type: "object",
                  additionalProperties: false,
                  minProperties: 1,
                  maxProperties: 1,
                  properties: {
                    uuid: { type: "string", pattern: UUID_PATTERN },
                    name: { type: "string", minLength: 1 },
                    labels: { type: "object", minProperties: 1, additionalProperties: { type: "string" } },
                  },
                },
              },
          },
        },
      },
    },
  },
} as const;

/** The file as the schema shapes it. */
interface PolicyDocument {
  readonly version: 1;
  readonly vmLabels?: Readonly<Record<string, Readonly<Record<string, string>>>>;
  readonly grants: ReadonlyArray<{
    readonly identities?: readonly string[];
    readonly groups?: readonly string[];
    readonly verbs: readonly Verb[];
    readonly vms: "all" | ReadonlyArray<{ readonly uuid?: string; readonly name?: string; readonly labels?: Readonly<Record<string, string>> }>;
  }>;
}

const ajv = new Ajv({ allErrors: true, strict: true, strictRequired: false, allowUnionTypes: true });
const validate = ajv.compile<PolicyDocument>(POLICY_SCHEMA);

/**
 * KubeVirt names the libvirt domain, and so QEMU's `-name`, `NAMESPACE_NAME`; a namespace is a
 * DNS-1123 label and holds no `_`, so the first `_` splits the two.
 */
const KUBEVIRT_DOMAIN_NAME = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?)_(.+)$/;
/** Labels derived from a KubeVirt domain name. */
export const KUBEVIRT_NAMESPACE_LABEL = "kubevirt.io/namespace";
export const KUBEVIRT_NAME_LABEL = "kubevirt.io/name";

function glob(pattern: string): (text: string) => boolean {
  // dot: a glob's `*` also matches names starting with a dot; the rest follows picomatch defaults
  // (`*` stops at `/`, `**` crosses it), which suits SPIFFE IDs and label values alike.
  return picomatch(pattern, { dot: true });
}

function ajvMessage(error: ErrorObject): string {
  const path = error.instancePath === "" ? "(top level)" : error.instancePath;
  const params = error.params as Record<string, unknown>;
  if (error.keyword === "additionalProperties") return `${path}: unknown key "${String(params["additionalProperty"])}"`;
  if (error.keyword === "enum") return `${path}: ${error.message} (${(params["allowedValues"] as unknown[]).join(", ")})`;
  if (error.keyword === "propertyNames") return `${path}: key "${String(params["propertyName"])}" is not a VM UUID`;
  if (error.keyword === "required" && params["missingProperty"] === "identities") return `${path}: needs "identities" or "groups"`;
  if (error.keyword === "const") return `${path}: must be ${JSON.stringify(params["allowedValue"])}`;
  if (error.keyword === "pattern" && params["pattern"] === UUID_PATTERN) return `${path}: is not a VM UUID`;
  return `${path}: ${error.message ?? error.keyword}`;
}

/**
 * Parses, validates and compiles a policy.
 * @param source the file name, for messages.
 * @throws PolicyError listing every YAML and schema error with its path.
 */
export function compilePolicy(text: string, source: string): Policy {
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) throw new PolicyError(source, doc.errors.map((e) => `YAML ${e.message.split("\n")[0]}`));
  const value: unknown = doc.toJS();
  if (!validate(value)) {
    // "if" errors only say that a "then"/"else" branch failed, whose own errors are listed too;
    // a propertyNames failure is reported once, by its own keyword.
    const messages = (validate.errors ?? [])
      .filter((e) => e.keyword !== "if" && !e.schemaPath.includes("/propertyNames/"))
      .map(ajvMessage);
    throw new PolicyError(source, [...new Set(messages)]);
  }
  return compileDocument(value);
}

function compileDocument(doc: PolicyDocument): Policy {
  const staticLabels = new Map(Object.entries(doc.vmLabels ?? {}).map(([uuid, labels]) => [uuid.toLowerCase(), labels]));
  const labelsOf = (vm: VmFacts): Readonly<Record<string, string>> => {
    const derived: Record<string, string> = {};
    const kubevirt = KUBEVIRT_DOMAIN_NAME.exec(vm.name);
    if (kubevirt !== null) {
      derived[KUBEVIRT_NAMESPACE_LABEL] = kubevirt[1]!;
      derived[KUBEVIRT_NAME_LABEL] = kubevirt[3]!;
    }
    return { ...derived, ...staticLabels.get(vm.uuid.toLowerCase()) };
  };

  const grants = doc.grants.map((grant) => {
    const identities = (grant.identities ?? []).map(glob);
    const groups = new Set(grant.groups ?? []);
    const verbs = new Set(grant.verbs.flatMap((verb) => IMPLIES[verb]));
    const selectors =
      grant.vms === "all"
        ? "all"
        : grant.vms.map((selector): ((vm: VmFacts) => boolean) => {
            if (selector.uuid !== undefined) {
              const uuid = selector.uuid.toLowerCase();
              return (vm) => vm.uuid.toLowerCase() === uuid;
            }
            if (selector.name !== undefined) {
              const matches = glob(selector.name);
              return (vm) => vm.name !== "" && matches(vm.name);
            }
            const wanted = Object.entries(selector.labels!).map(([key, pattern]) => [key, glob(pattern)] as const);
            return (vm) => {
              const labels = labelsOf(vm);
              return wanted.every(([key, matches]) => labels[key] !== undefined && matches(labels[key]));
            };
          });
    return {
      names: (identity: Identity) => identities.some((matches) => matches(identity.name)) || identity.groups.some((g) => groups.has(g)),
      verbs,
      selects: (vm: VmFacts | undefined) => selectors === "all" || (vm !== undefined && selectors.some((selects) => selects(vm))),
    };
  });

  return {
    grantCount: grants.length,
    labelsOf,
    allows(identity, verb, vm) {
      return grants.some((grant) => grant.verbs.has(verb) && grant.names(identity) && grant.selects(vm));
    },
  };
}

/** A policy that allows everything: no policy file on loopback, or `--authorization none`. */
export const ALLOW_ALL: Policy = Object.freeze({ grantCount: 0, labelsOf: () => ({}), allows: () => true });

/**
 * `kvmi-bridge policy check FILE…`: validates policy files before they are deployed (a ConfigMap
 * update, a SIGHUP). Returns the exit code: 0 valid, 1 invalid, 2 usage.
 */
export function runPolicyCommand(args: readonly string[], io: { stdout(text: string): void; stderr(text: string): void }, read: (path: string) => string): number {
  const [verb, ...files] = args;
  if (verb !== "check" || files.length === 0) {
    io.stderr("usage: kvmi-bridge policy check FILE [FILE...]\n  validates authorization policy files and lists every error\n");
    return 2;
  }
  let ok = true;
  for (const file of files) {
    try {
      const policy = compilePolicy(read(file), file);
      io.stdout(`${file}: valid, ${policy.grantCount} grant(s)\n`);
    } catch (err) {
      ok = false;
      io.stderr(`${err instanceof PolicyError ? err.message : `${file}: cannot read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`}\n`);
    }
  }
  return ok ? 0 : 1;
}
