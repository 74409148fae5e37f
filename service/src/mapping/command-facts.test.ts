// SPDX-License-Identifier: Apache-2.0
/**
 * The command facts table (command-facts.ts) against lists written here from session.proto and
 * the KVMI docs, not read from the table: which commands change the guest (the list `VmHost`
 * enforces), which may be repeated safely, and how each is undone.
 */
import { getOption } from "@bufbuild/protobuf";
import { V9_COMMANDS } from "@kvmi/kvm-bridge/wire";
import type { V9CommandName } from "@kvmi/kvm-bridge/wire";
import { guest_effect, GuestEffect, IntrospectionService } from "@kvmi/proto";
import { describe, expect, it } from "vitest";
import { COMMAND_FACTS, COMMAND_FACTS_BY_OP, MUTATING_COMMANDS } from "./command-facts.js";

/** session.proto, SessionCommand: the commands an observer may not send. */
const CHANGE_THE_GUEST: readonly V9CommandName[] = [
  "KVMI_VM_CONTROL_EVENTS",
  "KVMI_VM_WRITE_PHYSICAL",
  "KVMI_VCPU_PAUSE",
  "KVMI_VCPU_CONTROL_EVENTS",
  "KVMI_VCPU_SET_REGISTERS",
  "KVMI_VM_CONTROL_CLEANUP",
  "KVMI_VCPU_CONTROL_CR",
  "KVMI_VCPU_INJECT_EXCEPTION",
  "KVMI_VCPU_SET_XSAVE",
  "KVMI_VCPU_CONTROL_MSR",
  "KVMI_VM_SET_PAGE_ACCESS",
  "KVMI_VCPU_CONTROL_SINGLESTEP",
];

/** Each call acts again: a further pause (kvmi-abi §4 id 9), a further exception (id 16). */
const NOT_REPEATABLE: readonly V9CommandName[] = ["KVMI_VCPU_PAUSE", "KVMI_VCPU_INJECT_EXCEPTION"];

describe("COMMAND_FACTS", () => {
  it("has one entry per v9 command, under its own name", () => {
    expect(Object.keys(COMMAND_FACTS).sort()).toEqual(Object.keys(V9_COMMANDS).sort());
    for (const [name, facts] of Object.entries(COMMAND_FACTS)) expect(facts.command).toBe(name);
  });

  it("is keyed by the dialect-neutral op too", () => {
    // v9's commands and the commands v9 lacks that kvmi.v1 has RPCs for (kvmi-v7's GET_PAGE_ACCESS).
    expect(COMMAND_FACTS_BY_OP.size).toBe(Object.keys(V9_COMMANDS).length + 1);
    expect(COMMAND_FACTS_BY_OP.get("GET_PAGE_ACCESS")).toMatchObject({
      command: "KVMI_GET_PAGE_ACCESS",
      method: "getPageAccess",
      effect: GuestEffect.NONE,
      mutating: false,
      idempotent: true,
      undo: undefined,
    });
    expect(COMMAND_FACTS_BY_OP.get("READ_PHYSICAL")?.command).toBe("KVMI_VM_READ_PHYSICAL");
    expect(COMMAND_FACTS_BY_OP.get("PAUSE_VCPU")).toMatchObject({ command: "KVMI_VCPU_PAUSE", mutating: true, idempotent: false });
  });

  it("MUTATING_COMMANDS, the list VmHost enforces, is exactly the commands that change the guest", () => {
    expect([...MUTATING_COMMANDS].sort()).toEqual([...CHANGE_THE_GUEST].sort());
  });

  it("marks every command idempotent except a pause and an exception injection", () => {
    const notIdempotent = Object.values(COMMAND_FACTS).filter((f) => !f.idempotent).map((f) => f.command);
    expect(notIdempotent.sort()).toEqual([...NOT_REPEATABLE].sort());
  });

  it("takes mutating and idempotent from the guest_effect option of the command's RPC", () => {
    for (const facts of Object.values(COMMAND_FACTS)) {
      const method = IntrospectionService.methods.find((m) => m.localName === facts.method);
      expect(method, facts.method).toBeDefined();
      const effect = getOption(method!, guest_effect);
      expect(effect, facts.method).not.toBe(GuestEffect.UNSPECIFIED);
      expect(facts.effect).toBe(effect);
      expect(facts.mutating).toBe(effect !== GuestEffect.NONE);
    }
  });

  it("says how the ledger undoes each change, and why when there is nothing to undo", () => {
    const undo = Object.fromEntries(Object.values(COMMAND_FACTS).filter((f) => f.undo !== undefined).map((f) => [f.command, f.undo]));
    expect(undo).toEqual({
      KVMI_VM_CONTROL_EVENTS: "vm-event",
      KVMI_VM_WRITE_PHYSICAL: "memory",
      KVMI_VCPU_CONTROL_EVENTS: "vcpu-event",
      KVMI_VCPU_CONTROL_CR: "cr",
      KVMI_VCPU_CONTROL_MSR: "msr",
      KVMI_VCPU_CONTROL_SINGLESTEP: "singlestep",
      KVMI_VM_SET_PAGE_ACCESS: "page-access",
      KVMI_VCPU_PAUSE: "none",
      KVMI_VCPU_INJECT_EXCEPTION: "none",
      KVMI_VCPU_SET_REGISTERS: "none",
      KVMI_VCPU_SET_XSAVE: "none",
      KVMI_VM_CONTROL_CLEANUP: "none",
    });
    for (const facts of Object.values(COMMAND_FACTS)) {
      if (facts.undo === "none") expect(facts.undoReason, facts.command).toMatch(/\w/);
      else expect(facts.undoReason, facts.command).toBeUndefined();
    }
  });
});
