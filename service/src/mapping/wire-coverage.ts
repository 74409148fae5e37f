// SPDX-License-Identifier: Apache-2.0
/**
 * How the mapping tables declare which wire fields they carry (conventions §4 item 5: "a test fails
 * if a layout field is neither mapped nor listed as ignored").
 *
 * A wire field is named `<C struct>.<C field>` after the layout tables (`kvm_regs.rip`,
 * `kvmi_vm_read_physical.gpa`). A variable tail is named after the struct it follows, as C declares
 * it (`kvmi_vm_write_physical.data`, `kvmi_vcpu_get_registers_reply.entries`); a tail with no fixed
 * part is named `<command>.<request|reply>.<tail>` (`KVMI_VM_READ_PHYSICAL.reply.data`). A proto
 * field is named `<message>.<field>` with the proto (snake_case) field name, `kvmi.v1` messages by
 * their short name and others by their full name (`google.rpc.ErrorInfo.metadata`).
 */

/** One wire field carried to or from one proto field. */
export interface WireFieldMapping {
  /** `<C struct>.<C field>` (or a tail name, see the module comment). */
  readonly wire: string;
  /** `<message>.<proto field>`. */
  readonly proto: string;
}

/** A wire field deliberately not carried in the API, with the reason. */
export interface NotCarried {
  readonly wire: string;
  readonly reason: string;
}

/**
 * Declares `struct.field -> message.field` pairs for one struct.
 * @param pairs C field name -> proto field name (snake_case).
 */
export function mapFields(struct: string, message: string, pairs: Readonly<Record<string, string>>): WireFieldMapping[] {
  return Object.entries(pairs).map(([wire, proto]) => ({ wire: `${struct}.${wire}`, proto: `${message}.${proto}` }));
}
