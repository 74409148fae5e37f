// SPDX-License-Identifier: Apache-2.0
/**
 * Child processes of the fault tests, bounded: {@link spawnNode}, the bridge binary
 * ({@link startBridgeProcess}) and a controller that lives in its own process so that a test can
 * SIGKILL or SIGSTOP it ({@link startControllerProcess}).
 */
import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { SessionCommandRequest } from "./bridge-clients.js";
import { E2E_DIALECT, withTimeout } from "./bridge-harness.js";

/** The repository root. */
export const REPO_ROOT = resolve(fileURLToPath(new URL("../..", import.meta.url)));
/** `node service/bin/kvmi-bridge.mjs`: what `npx kvmi-bridge` runs. */
export const BRIDGE_BIN = join(REPO_ROOT, "service/bin/kvmi-bridge.mjs");
/** `node kvm-bridge/bin/kvmi-sim.mjs`: what `npx kvmi-sim` runs. */
export const KVMI_SIM_BIN = join(REPO_ROOT, "kvm-bridge/bin/kvmi-sim.mjs");

// -------------------------------------------------------------------------------------------------
// Child processes

/** How a child ended. */
export interface ChildExit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  /** `Date.now()` when it exited. */
  readonly at: number;
}

/** A running `node` child whose output the test reads while it runs. */
export interface NodeChild {
  readonly child: ChildProcess;
  stdout(): string;
  stderr(): string;
  /** stdout lines that parse as JSON objects (pino logs, the controller's reports), in order. */
  lines(): Array<Record<string, unknown>>;
  /** Resolves with the first JSON line matching `match` (already printed or printed later). */
  line(match: (line: Record<string, unknown>) => boolean, what: string, timeoutMs?: number): Promise<Record<string, unknown>>;
  /** Resolves with the first match of `pattern` in stdout or stderr. */
  output(pattern: RegExp, what: string, timeoutMs?: number): Promise<RegExpExecArray>;
  /** Settles when the process has exited. */
  readonly exited: Promise<ChildExit>;
  /** SIGKILLs the process if it still runs and waits (bounded) for its exit. */
  stop(): Promise<void>;
}

/** Starts `node ...args` in the repository root with piped stdout and stderr. */
export function spawnNode(args: readonly string[], env: NodeJS.ProcessEnv = {}): NodeChild {
  const child = spawn(process.execPath, [...args], { cwd: REPO_ROOT, stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...env } });
  let out = "";
  let err = "";
  const parsed: Array<Record<string, unknown>> = [];
  let partial = "";
  child.stdout!.on("data", (chunk: Buffer) => {
    const text = chunk.toString();
    out += text;
    const pieces = (partial + text).split("\n");
    partial = pieces.pop()!;
    for (const piece of pieces) {
      if (!piece.startsWith("{")) continue;
      try {
        parsed.push(JSON.parse(piece) as Record<string, unknown>);
      } catch {
        // not a JSON line
      }
    }
  });
  child.stderr!.on("data", (chunk: Buffer) => (err += chunk.toString()));
  const exited = new Promise<ChildExit>((resolveExit) =>
    child.once("exit", (code, signal) => resolveExit({ code, signal, at: Date.now() })),
  );
  const describe = (): string => `node ${args.join(" ").slice(0, 120)}`;
  const alive = (): void => {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new FatalError(`${describe()} exited (${child.exitCode ?? child.signalCode}):\n${out.slice(-2000)}\n${err.slice(-2000)}`);
    }
  };
  return {
    child,
    stdout: () => out,
    stderr: () => err,
    lines: () => parsed,
    exited,
    line: (match, what, timeoutMs = 10_000) =>
      poll(() => {
        const found = parsed.find(match);
        if (found === undefined) alive();
        return found;
      }, `${what} (from ${describe()})`, timeoutMs),
    output: (pattern, what, timeoutMs = 10_000) =>
      poll(() => {
        const found = pattern.exec(out) ?? pattern.exec(err);
        if (found === null) alive();
        return found ?? undefined;
      }, `${what} (from ${describe()})`, timeoutMs),
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      await withTimeout(exited, 5000, `${describe()} to exit`);
    },
  };
}

/** Ends a {@link poll} at once (the child exited). */
class FatalError extends Error {}

async function poll<T>(probe: () => T | undefined, what: string, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = probe();
    if (value !== undefined) return value;
    if (Date.now() >= deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** A bridge running as its own process (`node service/bin/kvmi-bridge.mjs`). */
export interface BridgeProcess {
  readonly proc: NodeChild;
  /** The gRPC target it printed. */
  readonly target: string;
  readonly kvmiPath: string;
  /** JSON log lines whose `msg` is `msg` (and which include `fields`, when given). */
  logs(msg: string, fields?: Record<string, unknown>): Array<Record<string, unknown>>;
}

/**
 * Starts the bridge binary on `kvmiPath` and gRPC 127.0.0.1:0 with metrics off and info logs (JSON
 * lines on stdout); resolves once it printed its gRPC endpoint.
 */
export async function startBridgeProcess(kvmiPath: string, extra: readonly string[] = []): Promise<BridgeProcess> {
  const proc = spawnNode([
    BRIDGE_BIN,
    "--kvmi-listen",
    `unix:${kvmiPath}`,
    "--grpc-listen",
    "127.0.0.1:0",
    "--metrics-listen",
    "off",
    "--log-level",
    "info",
    // The e2e project's dialect (KVMI_E2E_DIALECT), unless the test chose one.
    ...(extra.some((a) => a.startsWith("--kvmi-dialect")) ? [] : ["--kvmi-dialect", E2E_DIALECT.name]),
    ...extra,
  ]);
  try {
    const match = await proc.output(/gRPC endpoint : (\S+)/, "the bridge to serve", 20_000);
    return {
      proc,
      target: match[1]!,
      kvmiPath,
      logs: (msg, fields = {}) =>
        proc.lines().filter((l) => l["msg"] === msg && Object.entries(fields).every(([k, v]) => l[k] === v)),
    };
  } catch (err) {
    await proc.stop();
    throw err;
  }
}


/** JSON with bigint and byte arrays, for a plan handed to a child on its command line. */
function toPlanJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => {
    if (typeof v === "bigint") return { $big: v.toString() };
    if (v instanceof Uint8Array) return { $bytes: [...v] };
    return v;
  });
}

/**
 * The controller child: attaches to `vm` as CONTROLLER over its own gRPC connection, runs the
 * session commands of the plan one after the other (exit 3 on the first error), prints
 * `{"ready":…}`, then prints every event it receives as `{"event":{vcpu,seq,type}}` and every
 * unhook notice as `{"unhook":…}`, and never answers anything. A test kills it (SIGKILL: the
 * client is gone; SIGSTOP: the client hangs). Plain JS: it runs with `node --import tsx -e`.
 */
const CONTROLLER_SCRIPT = `
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { credentials, makeGenericClientConstructor, Metadata } from "@grpc/grpc-js";
import { IntrospectionService, Role, SessionRequestSchema, SessionResponseSchema } from "@kvmi/proto";
const [target, vm, planText] = process.argv.slice(1);
const plan = JSON.parse(planText, (_k, v) =>
  v !== null && typeof v === "object" && "$big" in v ? BigInt(v.$big) : v !== null && typeof v === "object" && "$bytes" in v ? Uint8Array.from(v.$bytes) : v);
const print = (o) => process.stdout.write(JSON.stringify(o, (_k, v) => (typeof v === "bigint" ? v.toString() : v)) + "\\n");
const method = IntrospectionService.method.session;
const Client = makeGenericClientConstructor({
  session: {
    path: "/" + IntrospectionService.typeName + "/" + method.name,
    requestStream: true,
    responseStream: true,
    requestSerialize: (m) => Buffer.from(toBinary(SessionRequestSchema, m)),
    requestDeserialize: (b) => fromBinary(SessionRequestSchema, b),
    responseSerialize: (m) => Buffer.from(toBinary(SessionResponseSchema, m)),
    responseDeserialize: (b) => fromBinary(SessionResponseSchema, b),
  },
}, "IntrospectionService");
const client = new Client(target, credentials.createInsecure());
const stream = client.session(new Metadata());
const send = (message) => stream.write(create(SessionRequestSchema, { message }));
let next = 0;
const step = () => {
  if (next < plan.length) {
    const id = BigInt(next + 1);
    send({ case: "command", value: { id, request: plan[next++] } });
  } else if (next++ === plan.length) print({ ready: true });
};
stream.on("data", (r) => {
  const m = r.message;
  if (m.case === "attached") { print({ attached: m.value.session.sessionId }); step(); }
  else if (m.case === "commandResult") {
    if (m.value.result.case === "error") { print({ error: m.value.result.value.message, id: m.value.id }); process.exit(3); }
    step();
  } else if (m.case === "event") print({ event: { vcpu: m.value.vcpu, seq: m.value.seq, type: m.value.type } });
  else if (m.case === "unhook") print({ unhook: m.value.reason });
});
stream.on("error", (e) => print({ streamError: e.code, details: e.details }));
send({ case: "attach", value: { vm, role: Role.CONTROLLER } });
setInterval(() => undefined, 1 << 30);
`;

/** A controller in its own process; see {@link CONTROLLER_SCRIPT}. */
export interface ControllerProcess extends NodeChild {
  /** The session id the bridge assigned. */
  readonly sessionId: string;
  /** Resolves when the child has printed `count` events in total. */
  events(count: number, timeoutMs?: number): Promise<Array<{ vcpu: number; seq: number; type: number }>>;
}

/**
 * Starts a controller process for `vm` (`vms/{uuid}`) that runs `plan` and then only listens;
 * resolves once the plan ran (rejects with the child's output if a command failed).
 */
export async function startControllerProcess(target: string, vm: string, plan: readonly SessionCommandRequest[]): Promise<ControllerProcess> {
  const proc = spawnNode(["--import", "tsx", "--input-type=module", "-e", CONTROLLER_SCRIPT, target, vm, toPlanJson(plan)]);
  try {
    const attached = await proc.line((l) => "attached" in l, "the controller child to attach", 20_000);
    await proc.line((l) => "ready" in l || "error" in l, "the controller child to run its plan", 10_000);
    const failed = proc.lines().find((l) => "error" in l);
    if (failed !== undefined) throw new Error(`the controller child's command ${String(failed["id"])} failed: ${String(failed["error"])}`);
    const events = () => proc.lines().filter((l) => "event" in l).map((l) => l["event"] as { vcpu: number; seq: number; type: number });
    return {
      ...proc,
      sessionId: attached["attached"] as string,
      events: (count, timeoutMs = 5000) => poll(() => (events().length >= count ? events() : undefined), `${count} events at the controller child`, timeoutMs),
    };
  } catch (err) {
    await proc.stop();
    throw err;
  }
}

