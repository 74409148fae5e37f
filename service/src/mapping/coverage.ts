// SPDX-License-Identifier: Apache-2.0
/**
 * The wire-field ledger of the mapping (conventions §4 item 5): every field of every layout the API
 * touches is either carried (declared by the mapping tables beside their code) or listed here in
 * {@link NOT_CARRIED} with the reason. `coverage.test.ts` walks the layout tables of
 * `@kvmi/kvm-bridge/wire` and fails on a field that is neither, on a declaration naming a field that
 * does not exist, and on a proto target that does not exist.
 */
import { layouts } from "@kvmi/kvm-bridge/wire";
import { COMMAND_WIRE_FIELDS } from "./commands.js";
import { EVENT_WIRE_FIELDS } from "./events.js";
import { REGISTER_WIRE_FIELDS } from "./registers.js";
import { STATUS_WIRE_FIELDS } from "./status.js";
import { VM_WIRE_FIELDS } from "./vm.js";
import type { NotCarried, WireFieldMapping } from "./wire-coverage.js";

/** Every wire field the mapping carries, from all tables. */
export const WIRE_FIELD_MAPPINGS: readonly WireFieldMapping[] = [
  ...REGISTER_WIRE_FIELDS,
  ...COMMAND_WIRE_FIELDS,
  ...EVENT_WIRE_FIELDS,
  ...VM_WIRE_FIELDS,
  ...STATUS_WIRE_FIELDS,
];

const COUNT = "element count of the tail that follows: derived from the length of the repeated proto field / bytes, and written by the encoder from the tail";
const FRAMING = "transport framing handled by kvm-bridge (message framing and size-prefix), no API meaning";

/** Wire fields deliberately not carried in kvmi.v1, with the reason. Padding is never listed. */
export const NOT_CARRIED: readonly NotCarried[] = [
  // kvmi_msg_hdr (kvmi-abi §3.1). `seq` of events is carried (Event.seq).
  { wire: `${layouts.kvmiMsgHdr.name}.id`, reason: "message id: chosen by kvm-bridge from the command table (and 0 for events); the RPC or SessionCommand case names the command" },
  { wire: `${layouts.kvmiMsgHdr.name}.size`, reason: FRAMING },
  // kvmi_event (kvmi-abi §3.3)
  { wire: `${layouts.kvmiEvent.name}.size`, reason: "sizeof(kvmi_event) as the kernel sees it: used by the decoder to locate the payload (forward compatibility), no API meaning" },
  // kvmi_event_reply (kvmi-abi §3.4)
  { wire: `${layouts.kvmiEventReply.name}.event`, reason: "echo of the pending event's id, written by the encoder from the event spec; an EventReply names its event by (vcpu, seq)" },
  // Count fields of variable tails
  { wire: `${layouts.kvmiVmWritePhysical.name}.size`, reason: COUNT },
  { wire: `${layouts.kvmiVcpuGetRegisters.name}.nmsrs`, reason: COUNT },
  { wire: `${layouts.kvmMsrs.name}.nmsrs`, reason: COUNT },
  { wire: `${layouts.kvmiVmSetPageAccess.name}.count`, reason: COUNT },
  { wire: `${layouts.qemuVmiArch.name}.e820_count`, reason: COUNT },
  // Headers of variable tails: nothing but the count.
  { wire: `${layouts.kvmiVcpuGetRegistersReply.name}.msrs`, reason: "the kvm_msrs header holds only nmsrs; the entries after it are GetRegistersResponse.msrs" },
  { wire: `${layouts.qemuVmiToIntrospectorE820.name}.arch`, reason: "qemu_vmi_arch holds only e820_count; the entries after it are Vm.e820_entries" },
  // QEMU handshake (kvmi-abi §2.3)
  { wire: `${layouts.qemuVmiToIntrospector.name}.struct_size`, reason: FRAMING },
  { wire: `${layouts.qemuVmiToIntrospectorMaxGpa.name}.struct_size`, reason: FRAMING },
  { wire: `${layouts.qemuVmiToIntrospectorE820.name}.struct_size`, reason: FRAMING },
];
