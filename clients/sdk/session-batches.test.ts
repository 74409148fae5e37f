// SPDX-License-Identifier: Apache-2.0
/**
 * The SDK hides event batching (docs/decisions/0160-event-batches.md): it asks for EventBatch on
 * attach, hands out each event of a batch as its own item, and writes the replies made in one turn
 * as one EventReplyBatch when the bridge said it accepts them, else one EventReply each. Driven
 * through a fake session stream, so every written message is seen.
 */
import { EventEmitter } from "node:events";
import { create } from "@bufbuild/protobuf";
import { EventSchema, Role, SessionResponseSchema } from "@kvmi/proto";
import type { Event, SessionRequest, SessionResponse } from "@kvmi/proto";
import { describe, expect, it } from "vitest";
import type { Channel } from "./channel.js";
import { DEFAULT_RETRY_POLICY } from "./retry.js";
import { openSession } from "./session.js";
import type { Session } from "./session.js";

const UUID = "6b1f6c1e-0d3a-4f51-9c55-3f1c0f0a7e01";

/** A ClientDuplexStream stand-in: records writes, emits what the test pushes. */
class FakeCall extends EventEmitter {
  readonly written: SessionRequest[] = [];
  writableEnded = false;
  readableEnded = false;

  write(message: SessionRequest, callback?: (err?: Error | null) => void): boolean {
    this.written.push(message);
    queueMicrotask(() => callback?.(null));
    return true;
  }
  push(message: Parameters<typeof create<typeof SessionResponseSchema>>[1]): void {
    this.emit("data", create(SessionResponseSchema, message) satisfies SessionResponse);
  }
  pause(): void {}
  resume(): void {}
  cancel(): void {}
  end(): void {
    this.writableEnded = true;
  }
}

function crEvent(vcpu: number, seq: number): Event {
  return create(EventSchema, { vm: `vms/${UUID}`, vcpu, seq, payload: { case: "cr", value: { cr: 3, oldValue: 0x1000n, newValue: 0x2000n + BigInt(vcpu) } } });
}

async function attach(eventBatches: boolean): Promise<{ call: FakeCall; session: Session }> {
  const call = new FakeCall();
  const channel = { session: () => call } as unknown as Channel;
  const opened = openSession(channel, UUID, { role: "controller" }, DEFAULT_RETRY_POLICY);
  call.push({ message: { case: "attached", value: { role: Role.CONTROLLER, vm: { name: `vms/${UUID}` }, session: { sessionId: "s1", eventBatches } } } });
  return { call, session: await opened };
}

/** Answers the next `n` events with CONTINUE as a tool's loop would; returns their seqs. */
async function continueEvents(session: Session, n: number): Promise<number[]> {
  const seqs: number[] = [];
  const replies: Array<Promise<void>> = [];
  for await (const item of session.events()) {
    if (item.kind !== "event") continue;
    seqs.push(item.seq);
    replies.push(item.continue());
    if (seqs.length === n) break;
  }
  await Promise.all(replies);
  return seqs;
}

describe("SDK event batches", () => {
  it("asks for event batches on attach", async () => {
    const { call } = await attach(true);
    const first = call.written[0]!.message;
    expect(first.case).toBe("attach");
    expect(first.case === "attach" && first.value.eventBatches).toBe(true);
  });

  it("hands out each event of a batch as its own item and answers them in one EventReplyBatch", async () => {
    const { call, session } = await attach(true);
    call.push({ message: { case: "events", value: { events: [crEvent(0, 10), crEvent(1, 11), crEvent(2, 12)] } } });
    expect(await continueEvents(session, 3)).toEqual([10, 11, 12]);
    const replies = call.written.slice(1);
    expect(replies).toHaveLength(1);
    const batch = replies[0]!.message;
    expect(batch.case).toBe("eventReplies");
    if (batch.case !== "eventReplies") return;
    expect(batch.value.replies.map((r) => [r.vcpu, r.seq])).toEqual([
      [0, 10],
      [1, 11],
      [2, 12],
    ]);
  });

  it("answers a lone event with a plain EventReply", async () => {
    const { call, session } = await attach(true);
    call.push({ message: { case: "event", value: crEvent(1, 20) } });
    expect(await continueEvents(session, 1)).toEqual([20]);
    const reply = call.written.slice(1);
    expect(reply.map((r) => r.message.case)).toEqual(["eventReply"]);
  });

  it("sends one EventReply per event to a bridge that does not accept batches", async () => {
    const { call, session } = await attach(false);
    call.push({ message: { case: "event", value: crEvent(0, 30) } });
    call.push({ message: { case: "event", value: crEvent(1, 31) } });
    expect(await continueEvents(session, 2)).toEqual([30, 31]);
    expect(call.written.slice(1).map((r) => r.message.case)).toEqual(["eventReply", "eventReply"]);
  });

  it("writes the turn's replies before a release", async () => {
    const { call, session } = await attach(true);
    call.push({ message: { case: "events", value: { events: [crEvent(0, 40), crEvent(1, 41)] } } });
    const items = session.events();
    const a = (await items.next()).value;
    const b = (await items.next()).value;
    if (a?.kind !== "event" || b?.kind !== "event") throw new Error("expected two events");
    const replied = Promise.all([a.continue(), b.continue()]);
    const released = session.release({ timeoutMs: 50 });
    call.readableEnded = true;
    call.emit("status", { code: 0, details: "", metadata: undefined });
    await replied;
    await released;
    expect(call.written.slice(1).map((r) => r.message.case)).toEqual(["eventReplies", "release"]);
  });
});
