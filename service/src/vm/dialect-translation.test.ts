// SPDX-License-Identifier: Apache-2.0
/**
 * toDialectBody: a kvmi.v1 (v9-shaped) request as each VM's dialect wants it, read from the tables
 * only. Expected ids are written out from docs/protocol/v9.md, v12.md and kvmi-v7.md.
 */
import { encodeCommand, KvmiNotInDialectError, kvmiV7, v12, v9, V9_COMMANDS } from "@kvmi/kvm-bridge/wire";
import { describe, expect, it } from "vitest";
import { toDialectBody } from "./dialect-translation.js";

/** kvmi.v1's id of event kind PF (`EventType - 1`: v9's id). */
const API_PF = 9;

describe("toDialectBody", () => {
  it("hands a complete v9 body back as the same object (no copy on the hot path)", () => {
    const read = { gpa: 0x1000n, size: 16 };
    expect(toDialectBody(v9, "KVMI_VM_READ_PHYSICAL", read)).toBe(read);
    const access = { entries: [{ gpa: 0x2000n, access: 7, visible: 0 }] };
    expect(toDialectBody(v9, "KVMI_VM_SET_PAGE_ACCESS", access)).toBe(access);
  });

  it("renumbers CHECK_COMMAND's id by op: the identity on v9, the dialect's own id elsewhere", () => {
    const check = { id: 6 }; // v9 KVMI_VM_READ_PHYSICAL
    expect(toDialectBody(v9, "KVMI_VM_CHECK_COMMAND", check)).toMatchObject({ id: 6 });
    expect(toDialectBody(kvmiV7, "KVMI_VM_CHECK_COMMAND", check)).toMatchObject({ id: 17 });
    expect(toDialectBody(v12, "KVMI_VM_CHECK_COMMAND", check)).toMatchObject({ id: 12 });
    expect(() => toDialectBody(v12, "KVMI_VM_CHECK_COMMAND", { id: 17 })).toThrow(KvmiNotInDialectError); // GET_MAX_GFN
  });

  it("renumbers event ids by kind on every dialect", () => {
    const enable = { event_id: API_PF, enable: 1 };
    expect(toDialectBody(v9, "KVMI_VCPU_CONTROL_EVENTS", enable)).toMatchObject({ event_id: 9 });
    expect(toDialectBody(kvmiV7, "KVMI_VCPU_CONTROL_EVENTS", enable)).toMatchObject({ event_id: 6 });
    expect(toDialectBody(v12, "KVMI_VCPU_CONTROL_EVENTS", enable)).toMatchObject({ event_id: 17 });
  });

  it("fills the fields kvmi.v1 does not carry with zero (kvmi-v7's SET_PAGE_ACCESS view)", () => {
    const body = toDialectBody(kvmiV7, "KVMI_VM_SET_PAGE_ACCESS", { entries: [{ gpa: 0x2000n, access: 1, visible: 0 }] });
    expect(body).toMatchObject({ view: 0 });
  });

  it("encodes every v9 command body exactly as before it went through toDialectBody", () => {
    const samples: Partial<Record<keyof typeof V9_COMMANDS, Record<string, unknown>>> = {
      KVMI_VM_READ_PHYSICAL: { gpa: 0x1000n, size: 16 },
      KVMI_VM_WRITE_PHYSICAL: { gpa: 0x1000n, data: Uint8Array.of(1, 2, 3) },
      KVMI_VM_SET_PAGE_ACCESS: { entries: [{ gpa: 0x2000n, access: 7, visible: 0 }] },
      KVMI_VCPU_CONTROL_CR: { cr: 3, enable: 1 },
    };
    for (const [name, body] of Object.entries(samples)) {
      const spec = V9_COMMANDS[name as keyof typeof V9_COMMANDS];
      const converted = toDialectBody(v9, name as keyof typeof V9_COMMANDS, body);
      expect(encodeCommand(v9, spec, 1, converted, 0), name).toEqual(encodeCommand(v9, spec, 1, body, 0));
    }
  });
});
