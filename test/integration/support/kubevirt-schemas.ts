// SPDX-License-Identifier: Apache-2.0
/**
 * JSON schemas (ajv) for the KubeVirt objects this repository ships, written from KubeVirt's Go
 * types (staging/src/kubevirt.io/api/core/v1/types.go, schema.go, plugin/v1alpha1/types.go and
 * pkg/hooks/hooks.go on main; the fields used here are the same in v1.6-v1.9). They cover the
 * fields our manifests use and refuse any other property at the levels they describe, so that a
 * misspelled field (which the API server would drop or KubeVirt's JSON decoding ignore) fails here.
 */
import AjvModule from "ajv";

// ajv is CommonJS: its class is the default export under Node's ESM interop. The test tree resolves
// the root node_modules' ajv (6, eslint's), the service its own (8): both are handled below.
type SchemaError = { instancePath?: string; dataPath?: string; message?: string; params?: unknown };
type ValidateFunction = ((data: unknown) => boolean) & { errors?: SchemaError[] | null };
const Ajv = ((AjvModule as unknown as { default?: unknown }).default ?? AjvModule) as new (options: object) => { compile(schema: object): ValidateFunction };
const where = (e: SchemaError): string => e.instancePath ?? e.dataPath ?? "";

const quantity = { anyOf: [{ type: "string", pattern: "^[0-9.]+([EPTGMK]i?|[mkMGTPE]|e[0-9]+)?$" }, { type: "number" }] };
const stringMap = { type: "object", additionalProperties: { type: "string" } };
const objectMeta = {
  type: "object",
  properties: { name: { type: "string", pattern: "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$" }, namespace: { type: "string" }, labels: stringMap, annotations: stringMap },
  additionalProperties: false,
};
const resources = { type: "object", properties: { requests: { type: "object", additionalProperties: quantity }, limits: { type: "object", additionalProperties: quantity } }, additionalProperties: false };

const vmiSpec = {
  type: "object",
  required: ["domain"],
  additionalProperties: false,
  properties: {
    domain: {
      type: "object",
      required: ["devices"],
      additionalProperties: false,
      properties: {
        cpu: { type: "object", properties: { cores: { type: "integer", minimum: 1 }, sockets: { type: "integer" }, threads: { type: "integer" } }, additionalProperties: false },
        memory: { type: "object", properties: { guest: quantity }, additionalProperties: false },
        resources,
        firmware: { type: "object", properties: { uuid: { type: "string" }, serial: { type: "string" } } },
        devices: {
          type: "object",
          additionalProperties: false,
          properties: {
            disks: {
              type: "array",
              items: {
                type: "object",
                required: ["name"],
                additionalProperties: false,
                properties: { name: { type: "string" }, disk: { type: "object", properties: { bus: { enum: ["virtio", "sata", "scsi", "usb"] } }, additionalProperties: false } },
              },
            },
            interfaces: {
              type: "array",
              items: {
                type: "object",
                required: ["name"],
                additionalProperties: false,
                properties: {
                  name: { type: "string" },
                  masquerade: { type: "object", additionalProperties: false },
                  bridge: { type: "object", additionalProperties: false },
                  ports: {
                    type: "array",
                    items: { type: "object", required: ["port"], additionalProperties: false, properties: { name: { type: "string" }, port: { type: "integer", minimum: 1, maximum: 65535 }, protocol: { enum: ["TCP", "UDP"] } } },
                  },
                },
              },
            },
          },
        },
      },
    },
    networks: { type: "array", items: { type: "object", required: ["name"], additionalProperties: false, properties: { name: { type: "string" }, pod: { type: "object" }, multus: { type: "object" } } } },
    volumes: {
      type: "array",
      items: {
        type: "object",
        required: ["name"],
        additionalProperties: false,
        properties: { name: { type: "string" }, containerDisk: { type: "object", required: ["image"], properties: { image: { type: "string" } }, additionalProperties: false }, cloudInitNoCloud: { type: "object" } },
      },
    },
  },
};

/** One entry of the hooks.kubevirt.io/hookSidecars annotation (pkg/hooks/hooks.go HookSidecar). */
export const hookSidecarSchema = {
  type: "object",
  additionalProperties: false,
  properties: {
    image: { type: "string" },
    imagePullPolicy: { enum: ["Always", "IfNotPresent", "Never"] },
    command: { type: "array", items: { type: "string" } },
    args: { type: "array", items: { type: "string" } },
    configMap: { type: "object", required: ["name", "key", "hookPath"], additionalProperties: false, properties: { name: { type: "string" }, key: { type: "string" }, hookPath: { type: "string" } } },
    pvc: { type: "object", required: ["name"], additionalProperties: false, properties: { name: { type: "string" }, volumePath: { type: "string" }, sharedComputePath: { type: "string" } } },
  },
};

const kinds: Record<string, object> = {
  "kubevirt.io/v1/VirtualMachineInstance": { type: "object", required: ["apiVersion", "kind", "metadata", "spec"], additionalProperties: false, properties: { apiVersion: {}, kind: {}, metadata: objectMeta, spec: vmiSpec } },
  "kubevirt.io/v1/VirtualMachine": {
    type: "object",
    required: ["apiVersion", "kind", "metadata", "spec"],
    additionalProperties: false,
    properties: {
      apiVersion: {},
      kind: {},
      metadata: objectMeta,
      spec: {
        type: "object",
        required: ["template"],
        additionalProperties: false,
        properties: {
          runStrategy: { enum: ["Always", "RerunOnFailure", "Manual", "Halted", "Once", "WaitAsReceiver"] },
          template: { type: "object", required: ["spec"], additionalProperties: false, properties: { metadata: objectMeta, spec: vmiSpec } },
        },
      },
    },
  },
  "kubevirt.io/v1/KubeVirt": {
    type: "object",
    required: ["apiVersion", "kind", "metadata", "spec"],
    additionalProperties: false,
    properties: {
      apiVersion: {},
      kind: {},
      metadata: objectMeta,
      spec: {
        type: "object",
        additionalProperties: false,
        properties: {
          configuration: {
            type: "object",
            additionalProperties: false,
            properties: {
              developerConfiguration: { type: "object", additionalProperties: false, properties: { featureGates: { type: "array", items: { type: "string" }, uniqueItems: true } } },
              supportContainerResources: {
                type: "array",
                items: { type: "object", required: ["type", "resources"], additionalProperties: false, properties: { type: { enum: ["hotplug-disk", "sidecar", "guest-console-log", "virtiofs", "vmexport"] }, resources } },
              },
            },
          },
        },
      },
    },
  },
  "plugin.kubevirt.io/v1alpha1/Plugin": {
    type: "object",
    required: ["apiVersion", "kind", "metadata", "spec"],
    additionalProperties: false,
    properties: {
      apiVersion: {},
      kind: {},
      metadata: objectMeta,
      spec: {
        type: "object",
        additionalProperties: false,
        properties: {
          condition: { type: "string" },
          failureStrategy: { enum: ["Fail", "Ignore"] },
          domainHooks: {
            type: "array",
            items: {
              type: "object",
              additionalProperties: false,
              // Exactly one of cel or sidecar (DomainHook).
              oneOf: [{ required: ["cel"] }, { required: ["sidecar"] }],
              properties: {
                cel: { type: "object", required: ["expression"], additionalProperties: false, properties: { expression: { type: "string", minLength: 1 } } },
                sidecar: { type: "object", required: ["socketPath"], additionalProperties: false, properties: { socketPath: { type: "string", minLength: 1, maxLength: 108, pattern: "^/var/run/kubevirt-plugin/.+\\.sock$" } } },
                condition: { type: "string" },
                failureStrategy: { enum: ["Fail", "Ignore"] },
                timeout: { type: "string", pattern: "^([0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$" },
              },
            },
          },
        },
      },
    },
  },
};

const ajv = new Ajv({ allErrors: true, strict: false });
const compiled = new Map<string, ValidateFunction>(Object.entries(kinds).map(([key, schema]) => [key, ajv.compile(schema)]));
const hookSidecar = ajv.compile(hookSidecarSchema);

/** Whether `apiVersion`/`kind` is one of the KubeVirt kinds above. */
export function isKubevirtKind(apiVersion: string, kind: string): boolean {
  return compiled.has(`${apiVersion}/${kind}`);
}

/** The schema errors of one KubeVirt object (annotation entries included); [] when valid. */
export function kubevirtErrors(object: { apiVersion: string; kind: string } & Record<string, unknown>): string[] {
  const validate = compiled.get(`${object.apiVersion}/${object.kind}`);
  if (validate === undefined) return [`no schema for ${object.apiVersion} ${object.kind}`];
  const errors = validate(object) ? [] : (validate.errors ?? []).map((e) => `${where(e) || "/"} ${e.message}${e.params ? ` ${JSON.stringify(e.params)}` : ""}`);
  const metas = [object.metadata, (object.spec as { template?: { metadata?: unknown } } | undefined)?.template?.metadata];
  for (const meta of metas) {
    const raw = (meta as { annotations?: Record<string, string> } | undefined)?.annotations?.["hooks.kubevirt.io/hookSidecars"];
    if (raw === undefined) continue;
    let list: unknown;
    try {
      list = JSON.parse(raw);
    } catch {
      errors.push("hooks.kubevirt.io/hookSidecars is not JSON");
      continue;
    }
    if (!Array.isArray(list)) errors.push("hooks.kubevirt.io/hookSidecars is not a list");
    else for (const [i, entry] of list.entries()) if (!hookSidecar(entry)) errors.push(...(hookSidecar.errors ?? []).map((e) => `hookSidecars[${i}]${where(e)} ${e.message} ${JSON.stringify(e.params)}`));
  }
  return errors;
}
