// SPDX-License-Identifier: Apache-2.0
/**
 * Small builders the v12 and kvmi-v7 tables share, so that each table reads as a list of facts
 * (op, wire id, kernel name, scope, layouts) with the usual values filled in once.
 */
import type { BodySchema, CommandSpec, Dialect, EventActionName, EventSpec } from "../dialect.js";
import type { Layout } from "../layout.js";

/** A body with no bytes. */
export const NO_BODY: BodySchema = Object.freeze({ layout: null });

/** A body that is exactly one layout. */
export const body = (layout: Layout): BodySchema => Object.freeze({ layout });

type CommandFacts = Pick<CommandSpec, "op" | "id" | "name" | "scope"> &
  Partial<Omit<CommandSpec, "op" | "id" | "name" | "scope">>;

/**
 * A command with the common defaults: VM commands run on the receive thread and vCPU commands as
 * vCPU jobs, empty request and reply, not always allowed, fixed-size (zero-extended when short).
 */
export function command(facts: CommandFacts): CommandSpec {
  return Object.freeze({
    dispatch: facts.scope === "vm" ? "receive-thread" : "vcpu-job",
    request: NO_BODY,
    reply: NO_BODY,
    alwaysAllowed: false,
    closesOnShortTail: false,
    ...facts,
  });
}

type EventFacts = Pick<EventSpec, "kind" | "id" | "name"> & Partial<Omit<EventSpec, "kind" | "id" | "name">>;

const CONTINUE_CRASH: readonly EventActionName[] = Object.freeze(["CONTINUE", "CRASH"]);

/** A vCPU event with the common defaults: enabled per vCPU, no payload or reply data, CONTINUE/CRASH. */
export function event(facts: EventFacts): EventSpec {
  return Object.freeze({
    scope: "vcpu",
    enable: "vcpu-control-events",
    payload: null,
    replyData: null,
    actions: CONTINUE_CRASH,
    ...facts,
  });
}

/** Sorts and freezes the lists of a dialect table. */
export function finishDialect(dialect: Dialect): Dialect {
  return Object.freeze({
    ...dialect,
    commands: Object.freeze([...dialect.commands].sort((a, b) => a.id - b.id)),
    events: Object.freeze([...dialect.events].sort((a, b) => a.id - b.id)),
  });
}
