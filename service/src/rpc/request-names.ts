// SPDX-License-Identifier: Apache-2.0
/**
 * The names in a request, brought to the one form the handlers parse (`vms/{uuid}` and
 * `vms/{uuid}/vcpus/{index}`, resource-names.ts) before any handler runs, so every client
 * language gets the same two conveniences (proto/kvmi/v1/command.proto header, docs/conventions.md):
 *
 * - **Display names.** `vms/-/by-name/{display_name}` (and `…/vcpus/{index}`) stands for the VM
 *   whose handshake name is `{display_name}`: the `-` collection wildcard of AIP-159 followed by a
 *   lookup key, resolved against the registry here. No VM with that name is NOT_FOUND; several
 *   (two QEMUs started with the same `-name`) is INVALID_ARGUMENT listing their UUIDs, since the
 *   bridge must not guess which one a mutating call meant. A VM that is connected wins over
 *   remembered disconnected records of the same name (a restarted QEMU keeps its name).
 * - **Field names.** `vcpu` (vCPU requests) and `vm` (GetVm, WatchVms, ReleaseVm) were added
 *   beside the first release's `name`, which stays with the same meaning, deprecated. The newer
 *   field wins; both set and different is INVALID_ARGUMENT.
 */
import { KvmiArgumentError } from "@kvmi/kvm-bridge";
import type { VmRegistry } from "@kvmi/kvm-bridge";
import { BridgeError } from "../mapping/bridge-error.js";
import { parseVmName, vmName } from "../mapping/resource-names.js";

/** Prefix of a VM named by its display name. */
export const BY_NAME_PREFIX = "vms/-/by-name/";

/** The request fields that may hold a name (strings only: `vcpu` is a number in other messages). */
type NamedRequest = { vm?: unknown; name?: unknown; vcpu?: unknown };

/**
 * Resolves `vms/-/by-name/{display_name}[/vcpus/{index}]` to `vms/{uuid}[/vcpus/{index}]`; any other
 * value is returned as it is (its own parser judges it).
 */
export function resolveDisplayName(value: string, registry: VmRegistry, field: string): string {
  if (!value.startsWith(BY_NAME_PREFIX)) return value;
  const m = /^(.+?)(\/vcpus\/[^/]*)?$/s.exec(value.slice(BY_NAME_PREFIX.length));
  if (m === null) throw new KvmiArgumentError(field, `${field} "${value}" has no display name after ${BY_NAME_PREFIX}`);
  const display = m[1]!;
  const matches = registry.list().filter((r) => r.name === display);
  const connected = matches.filter((r) => r.state !== "unhooked");
  const candidates = connected.length > 0 ? connected : matches;
  if (candidates.length === 0) {
    throw new BridgeError("VM_NOT_FOUND", `no VM known to this bridge has the display name "${display}" (${field} "${value}")`, {}, { field });
  }
  if (candidates.length > 1) {
    const uuids = candidates.map((r) => vmName(r.uuid)).join(", ");
    throw new KvmiArgumentError(field, `display name "${display}" is ambiguous: ${candidates.length} VMs have it (${uuids}); name one by its UUID`);
  }
  return `${vmName(candidates[0]!.uuid)}${m[2] ?? ""}`;
}

/** Picks the newer field over the deprecated `name`; both set and different is a mistake. */
function merged(newer: string, newerField: string, legacy: string): string {
  if (newer === "") return legacy;
  if (legacy !== "" && legacy !== newer) throw new KvmiArgumentError(newerField, `${newerField} "${newer}" and the deprecated name "${legacy}" disagree: set only ${newerField}`);
  return newer;
}

/**
 * `name` when its VM part is a well-formed `vms/{uuid}` (or empty, which the handler reports as
 * missing); otherwise INVALID_ARGUMENT naming the field the caller really set, before the two
 * fields are made one and that attribution is lost.
 */
function checkedName(name: string, field: string): string {
  if (name !== "") parseVmName(name.split("/vcpus/")[0]!, field);
  return name;
}

/**
 * Rewrites the name fields of a decoded request in place: after it, `name` holds the vCPU name of a
 * vCPU request or the VM name of a registry request, `vm` the VM name of a VM-scoped command, all
 * with UUIDs. Cheap when there is nothing to do (the per-command path runs it).
 * @throws KvmiArgumentError or BridgeError (VM_NOT_FOUND) as described above.
 */
export function normalizeRequestNames(request: unknown, registry: VmRegistry): void {
  if (request === null || typeof request !== "object") return;
  const r = request as NamedRequest;
  const hasName = typeof r.name === "string";
  if (typeof r.vcpu === "string" && hasName) {
    const field = r.vcpu === "" ? "name" : "vcpu";
    r.name = checkedName(resolveDisplayName(merged(r.vcpu, "vcpu", r.name as string), registry, field), field);
    r.vcpu = r.name;
    return;
  }
  if (typeof r.vm === "string" && hasName) {
    const field = r.vm === "" ? "name" : "vm";
    r.name = checkedName(resolveDisplayName(merged(r.vm, "vm", r.name as string), registry, field), field);
    r.vm = r.name;
    return;
  }
  if (typeof r.vm === "string" && r.vm.startsWith(BY_NAME_PREFIX)) r.vm = resolveDisplayName(r.vm, registry, "vm");
}
