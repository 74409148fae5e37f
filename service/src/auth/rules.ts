// SPDX-License-Identifier: Apache-2.0
/**
 * Which verb each RPC and each Session command needs, and how to find its VM: the table the
 * authorization point applies (`rpc/authorization.ts`). `rules.test.ts` walks the service
 * descriptor and the SessionCommand oneof, so a new RPC or command without a row fails the build.
 */
import type { Verb } from "../mapping/access-error.js";
import { parseVmName } from "../mapping/resource-names.js";

/** How an RPC is authorized. */
export type RpcRule =
  /** The verb on the VM the request names, checked before the handler runs. */
  | { readonly kind: "vm"; readonly verb: Verb }
  /** The handler returns only the VMs the caller holds the verb on (ListVms, WatchVms). */
  | { readonly kind: "filter"; readonly verb: Verb }
  /** ReleaseVm: `release`, or `admin` when a controller of another identity is attached. */
  | { readonly kind: "release-vm" }
  /** The Session stream: every SessionRequest is checked by {@link SESSION_REQUEST_VERBS} and {@link COMMAND_VERBS}. */
  | { readonly kind: "session" };

/**
 * SessionCommand cases with no unary RPC: SetEventFilter changes what the bridge answers on the
 * controller's behalf, so it is `control` (docs/event-filters.md).
 */
const SESSION_ONLY_COMMAND_VERBS: Readonly<Record<string, Verb>> = { setEventFilter: "control" };

/** SessionCommand cases that have no unary RPC (no row in {@link RPC_RULES}). */
export const SESSION_ONLY_COMMANDS: ReadonlySet<string> = new Set(Object.keys(SESSION_ONLY_COMMAND_VERBS));

/**
 * The verb of each command, by its RPC local name, which is also its SessionCommand case.
 * `control` for exactly the commands that change the guest (vm-host.ts MUTATING_COMMANDS;
 * rules.test.ts checks the two agree).
 */
export const COMMAND_VERBS: Readonly<Record<string, Verb>> = {
  getVersion: "read",
  checkCommand: "read",
  checkEvent: "read",
  getVmInfo: "read",
  controlVmEvents: "control",
  readPhysicalMemory: "read",
  writePhysicalMemory: "control",
  getVcpuInfo: "read",
  pauseVcpu: "control",
  controlVcpuEvents: "control",
  getRegisters: "read",
  setRegisters: "control",
  getCpuid: "read",
  controlCleanup: "control",
  controlCr: "control",
  injectException: "control",
  getMaxGfn: "read",
  getXcr: "read",
  getXsave: "read",
  setXsave: "control",
  getMtrrType: "read",
  controlMsr: "control",
  setPageAccess: "control",
  controlSingleStep: "control",
  translateGva: "read",
  getPageAccess: "read",
  batchReadMemory: "read",
  ...SESSION_ONLY_COMMAND_VERBS,
};

/** Every RPC of IntrospectionService, by local name. */
export const RPC_RULES: Readonly<Record<string, RpcRule>> = {
  getVm: { kind: "vm", verb: "list" },
  listVms: { kind: "filter", verb: "list" },
  watchVms: { kind: "filter", verb: "list" },
  releaseVm: { kind: "release-vm" },
  session: { kind: "session" },
  dumpMemory: { kind: "vm", verb: "read" },
  ...Object.fromEntries(Object.entries(COMMAND_VERBS).filter(([method]) => !SESSION_ONLY_COMMANDS.has(method)).map(([method, verb]) => [method, { kind: "vm", verb } as const])),
};

/**
 * The verb of each SessionRequest message besides `command` (whose verb is its command's):
 * attaching needs `observe` or `control` by role; answering events is the controller's
 * (`control`), one by one or in an EventReplyBatch (each reply of the batch passes the same check);
 * releasing one's own session needs nothing more than having attached.
 */
export const SESSION_REQUEST_VERBS = {
  attach: "by-role",
  command: "by-command",
  eventReply: "control",
  eventReplies: "control",
  release: "none",
} as const satisfies Readonly<Record<string, Verb | "by-role" | "by-command" | "none">>;

/**
 * The VM UUID a request names: its `vm` (`vms/{uuid}`) or its `name` (`vms/{uuid}` or
 * `vms/{uuid}/vcpus/{n}`).
 * @throws KvmiArgumentError (INVALID_ARGUMENT) when the name does not parse: the same answer the
 *   handler would give, before anything runs.
 */
export function requestVm(request: unknown): string {
  const named = request as { vm?: unknown; name?: unknown };
  if (typeof named.vm === "string") return parseVmName(named.vm, "vm");
  const name = typeof named.name === "string" ? named.name : "";
  return parseVmName(name.split("/vcpus/")[0]!, "name");
}
