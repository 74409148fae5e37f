// SPDX-License-Identifier: Apache-2.0
/**
 * Resource names of kvmi.v1 (AIP-122): `vms/{vm}` and `vms/{vm}/vcpus/{vcpu}`, where `{vm}` is the
 * lowercase hyphenated UUID QEMU sent in the handshake and `{vcpu}` the decimal KVMI vCPU index
 * (0-based, `kvmi_vcpu_hdr.vcpu`, a u16 on the wire).
 *
 * Parsing is strict: one spelling per resource, so that a name can be used as a map key and
 * compared as a string. A malformed name is a {@link KvmiArgumentError} (INVALID_ARGUMENT with a
 * BadRequest field violation, see `status.ts`); whether the VM exists is the caller's question.
 *
 * @see ../../../proto/kvmi/v1/command.proto (header comment) and vm.proto (`Vm.name`)
 */
import { KvmiArgumentError } from "@kvmi/kvm-bridge";

/** Collection segment of VM names. */
const VMS = "vms";
/** Collection segment of vCPU names. */
const VCPUS = "vcpus";
/** Largest vCPU index the wire can carry (`kvmi_vcpu_hdr.vcpu` is a u16). */
export const MAX_VCPU_INDEX = 0xffff;

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const UUID_ANY_CASE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const INDEX = /^(0|[1-9][0-9]*)$/;
const EXAMPLE_UUID = "5b8a3c7e-1d2f-4e6a-9b0c-7d8e9f0a1b2c";

/** A parsed vCPU name. */
export interface VcpuRef {
  /** VM UUID, lowercase hyphenated. */
  readonly vm: string;
  /** KVMI vCPU index. */
  readonly vcpu: number;
}

/** Formats the resource name of a VM: `vms/{uuid}`. */
export function vmName(uuid: string): string {
  return `${VMS}/${uuid}`;
}

/** Formats the resource name of a vCPU: `vms/{uuid}/vcpus/{index}`. */
export function vcpuName(uuid: string, vcpu: number): string {
  return `${VMS}/${uuid}/${VCPUS}/${vcpu}`;
}

function checkUuid(uuid: string, name: string, field: string): void {
  if (UUID.test(uuid)) return;
  if (UUID_ANY_CASE.test(uuid)) {
    throw new KvmiArgumentError(field, `${field} "${name}" must spell the VM UUID in lowercase`);
  }
  throw new KvmiArgumentError(
    field,
    `${field} "${name}" does not hold a VM UUID: expected 8-4-4-4-12 lowercase hex digits, e.g. ${vmName(EXAMPLE_UUID)}`,
  );
}

function requireNonEmpty(name: string, field: string): void {
  if (name === "") throw new KvmiArgumentError(field, `${field} is required`);
}

/**
 * Names already parsed, as clients repeat the same few on every command (the regular expressions
 * showed in profiles of the session path). Only valid names are kept, at most {@link MEMO_LIMIT}.
 */
const MEMO_LIMIT = 4096;
const parsedVms = new Map<string, string>();
const parsedVcpus = new Map<string, VcpuRef>();

function remember<T>(memo: Map<string, T>, name: string, value: T): T {
  if (memo.size >= MEMO_LIMIT) memo.clear();
  memo.set(name, value);
  return value;
}

/**
 * Parses `vms/{uuid}` and returns the UUID.
 * @param field the request field the name came from, for the error (`vm` or `name`).
 * @throws KvmiArgumentError when the name is empty or malformed.
 */
export function parseVmName(name: string, field = "vm"): string {
  return parsedVms.get(name) ?? remember(parsedVms, name, parseVmNameUncached(name, field));
}

function parseVmNameUncached(name: string, field: string): string {
  requireNonEmpty(name, field);
  const parts = name.split("/");
  if (parts.length !== 2 || parts[0] !== VMS) {
    throw new KvmiArgumentError(field, `${field} "${name}" is not a VM name: expected ${VMS}/{uuid}, e.g. ${vmName(EXAMPLE_UUID)}`);
  }
  checkUuid(parts[1]!, name, field);
  return parts[1]!;
}

/**
 * Parses `vms/{uuid}/vcpus/{index}`. The index must be a plain decimal number (no sign, no leading
 * zeros) of at most 65535; whether it is below the VM's vCPU count is checked by the caller with
 * {@link checkVcpuIndex} once the VM is resolved.
 * @param field the request field the name came from, for the error (normally `name`).
 * @throws KvmiArgumentError when the name is empty or malformed.
 */
export function parseVcpuName(name: string, field = "name"): VcpuRef {
  return parsedVcpus.get(name) ?? remember(parsedVcpus, name, parseVcpuNameUncached(name, field));
}

function parseVcpuNameUncached(name: string, field: string): VcpuRef {
  requireNonEmpty(name, field);
  const parts = name.split("/");
  if (parts.length !== 4 || parts[0] !== VMS || parts[2] !== VCPUS) {
    throw new KvmiArgumentError(
      field,
      `${field} "${name}" is not a vCPU name: expected ${VMS}/{uuid}/${VCPUS}/{index}, e.g. ${vcpuName(EXAMPLE_UUID, 0)}`,
    );
  }
  checkUuid(parts[1]!, name, field);
  const index = parts[3]!;
  if (!INDEX.test(index)) {
    throw new KvmiArgumentError(field, `${field} "${name}" has an invalid vCPU index "${index}": expected a decimal number such as 0`);
  }
  const vcpu = Number(index);
  if (vcpu > MAX_VCPU_INDEX) {
    throw new KvmiArgumentError(field, `${field} "${name}" has vCPU index ${index}, above the largest possible index ${MAX_VCPU_INDEX}`);
  }
  return Object.freeze({ vm: parts[1]!, vcpu });
}
