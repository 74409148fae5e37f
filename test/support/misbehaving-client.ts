// SPDX-License-Identifier: Apache-2.0
/**
 * A client that misbehaves, in its own process (`node --import tsx test/support/misbehaving-client.ts
 * TARGET PLAN_JSON`), so that the test process stays free to be the well-behaved neighbour whose
 * latency it measures, and so that SIGKILL makes the client vanish as a crashed tool would. It
 * reports on stdout, one JSON object per line:
 *
 * - `{"opened": n}` once every stream of the plan is open (requests written);
 * - `{"end": {"kind": "session"|"watcher"|"batcher", "code": 8, "limit": "maxSessionsPerIdentity"}}`
 *   per stream the bridge ended (`limit`: the QuotaFailure's limit, if any);
 * - `{"cancelled": n}` after cancelling its streams (`cancelAfterMs`).
 *
 * Plans (`kind`):
 * - `streams`: `sessions` Session streams that attach as observers to `vm` and `watchers` WatchVms
 *   streams, over `connections` HTTP/2 connections; none of them is ever read;
 * - `unread-batches`: one session attached as observer that sends `batches` BatchReadMemory
 *   commands of `rangeBytes` at `gpa` and never reads a result.
 */
import { create } from "@bufbuild/protobuf";
import { Client, credentials, Metadata } from "@grpc/grpc-js";
import type { ClientDuplexStream, ClientReadableStream, StatusObject } from "@grpc/grpc-js";
import { AddressSpace, IntrospectionService, Role, SessionRequestSchema, WatchVmsRequestSchema } from "@kvmi/proto";
import type { SessionRequest, SessionResponse, WatchVmsResponse } from "@kvmi/proto";
import { decodeStatus, readStatusDetails, STATUS_DETAILS_KEY } from "@kvmi/proto/status-details";
import { createServiceDefinition } from "@kvmi/service/testing";

/** What the misbehaving client does. */
export type MisbehaviourPlan =
  | { readonly kind: "streams"; readonly vm: string; readonly sessions: number; readonly watchers: number; readonly connections: number }
  | {
      readonly kind: "unread-batches";
      readonly vm: string;
      readonly batches: number;
      readonly gpa: number;
      readonly rangeBytes: number;
      /** Cancels the session this long after sending everything; never when absent. */
      readonly cancelAfterMs?: number;
    };

const BRIDGE = createServiceDefinition(IntrospectionService);

const print = (line: Record<string, unknown>): void => void process.stdout.write(`${JSON.stringify(line)}\n`);

function quotaLimitOf(status: StatusObject): string | undefined {
  const value = status.metadata?.get(STATUS_DETAILS_KEY)[0];
  const st = value instanceof Uint8Array ? decodeStatus(value) : undefined;
  return (st === undefined ? undefined : readStatusDetails(st))?.quotaViolations?.[0]?.description.split(":")[0];
}

function reportEnd<T extends NodeJS.EventEmitter>(kind: string, stream: T): T {
  stream.on("error", () => undefined);
  stream.on("status", (status: StatusObject) => print({ end: { kind, code: status.code, limit: quotaLimitOf(status) } }));
  return stream;
}

function openSession(client: Client, kind: string, vm: string): ClientDuplexStream<SessionRequest, SessionResponse> {
  const session = reportEnd(kind, client.makeBidiStreamRequest(BRIDGE.session.path, BRIDGE.session.requestSerialize, BRIDGE.session.responseDeserialize, new Metadata()));
  session.write(create(SessionRequestSchema, { message: { case: "attach", value: { vm, role: Role.OBSERVER } } }));
  // Never read: the stream is not consumed (no 'data' listener), so grpc-js stops taking messages
  // once its buffers are full and the bridge's writes back up.
  session.pause();
  return session;
}

async function streams(target: string, plan: Extract<MisbehaviourPlan, { kind: "streams" }>): Promise<void> {
  // Own subchannel per client: separate HTTP/2 connections, as separate tools would have.
  const clients = Array.from({ length: plan.connections }, () => new Client(target, credentials.createInsecure(), { "grpc.use_local_subchannel_pool": 1 }));
  const most = Math.max(plan.sessions, plan.watchers);
  for (let i = 0; i < most; i++) {
    if (i % 100 === 0) await new Promise((r) => setImmediate(r));
    const client = clients[i % clients.length]!;
    if (i < plan.sessions) openSession(client, "session", plan.vm);
    if (i < plan.watchers) {
      const watcher: ClientReadableStream<WatchVmsResponse> = reportEnd(
        "watcher",
        client.makeServerStreamRequest(BRIDGE.watchVms.path, BRIDGE.watchVms.requestSerialize, BRIDGE.watchVms.responseDeserialize, create(WatchVmsRequestSchema, {})),
      );
      watcher.pause();
    }
  }
  print({ opened: plan.sessions + plan.watchers });
}

async function unreadBatches(target: string, plan: Extract<MisbehaviourPlan, { kind: "unread-batches" }>): Promise<void> {
  const client = new Client(target, credentials.createInsecure(), { "grpc.use_local_subchannel_pool": 1 });
  const session = openSession(client, "batcher", plan.vm);
  const range = { address: BigInt(plan.gpa), length: BigInt(plan.rangeBytes), space: AddressSpace.PHYSICAL };
  for (let id = 1n; id <= BigInt(plan.batches); id++) {
    session.write(create(SessionRequestSchema, { message: { case: "command", value: { id, request: { case: "batchReadMemory", value: { vm: plan.vm, ranges: [range] } } } } }));
    if (id % 200n === 0n) await new Promise((r) => setImmediate(r));
  }
  print({ opened: 1 });
  if (plan.cancelAfterMs !== undefined) {
    await new Promise((r) => setTimeout(r, plan.cancelAfterMs));
    session.cancel();
    print({ cancelled: 1 });
  }
}

const [target, planText] = process.argv.slice(2);
if (target === undefined || planText === undefined) {
  process.stderr.write("usage: misbehaving-client.ts TARGET PLAN_JSON\n");
  process.exit(2);
}
const plan = JSON.parse(planText) as MisbehaviourPlan;
await (plan.kind === "streams" ? streams(target, plan) : unreadBatches(target, plan));
// Stays until killed: the streams it opened are the misbehaviour.
setInterval(() => undefined, 1 << 30);
