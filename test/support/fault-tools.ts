// SPDX-License-Identifier: Apache-2.0
/**
 * Fault-injection tools for the unhook, ledger and fault e2e tests (test/e2e/{unhook,ledger,faults}-*):
 *
 * - child processes, bounded: {@link spawnNode}, the bridge binary ({@link startBridgeProcess}) and a
 *   controller that lives in its own process so that a test can SIGKILL or SIGSTOP it
 *   ({@link startControllerProcess});
 * - what the emulated guest looks like, and what it looked like when the device manager unhooked
 *   ({@link guestState}, {@link captureAtUnhook}), so a test proves the ledger was undone before the
 *   bridge closed the KVMI socket;
 * - the device-manager side of the KVMI socket, raw: {@link RawPeer} sends any bytes, and
 *   {@link fakeHook} plays QEMU + kernel just far enough for the bridge to hook the VM; fast-check
 *   arbitraries for malformed handshakes and frames.
 *
 * Everything waits with a deadline; every process and socket opened here is ended by its owner.
 */
import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { createHash, randomUUID } from "node:crypto";
import { connect } from "node:net";
import type { Socket } from "node:net";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import fc from "fast-check";
import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  commandById,
  createFramer,
  encodeHandshake,
  encodeReply,
  errno,
  HANDSHAKE_REPLY_BYTES,
  HEADER_BYTES,
  zeroValue,
} from "@kvmi/kvm-bridge/wire";
import type { Dialect, HandshakeVariant, MsgHdr } from "@kvmi/kvm-bridge/wire";
import type { EmulatedVm } from "@kvmi/kvm-bridge/emulator";
import { EventType } from "@kvmi/proto";
import type { SessionCommandSchema } from "@kvmi/proto";
import { E2E_DIALECT, e2eEventId, waitUntil, withTimeout } from "./bridge-harness.js";

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

type SessionCommandRequest = NonNullable<MessageInitShape<typeof SessionCommandSchema>["request"]>;

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

// -------------------------------------------------------------------------------------------------
// What the guest looks like

/** The introspection-visible state of an emulated VM at one moment. */
export interface GuestState {
  /** SHA-256 of every byte of guest RAM (all memslots). */
  readonly ramDigest: string;
  /** Restricted GFNs (hex) with their access; empty when every page is rwx. */
  readonly restrictions: Readonly<Record<string, number>>;
  /** Per vCPU: enabled vCPU events, intercepted CRs and MSRs (kernel side). */
  readonly vcpus: ReadonlyArray<{ readonly events: number[]; readonly crs: number[]; readonly msrs: number[]; readonly singlestep: boolean }>;
  /** Enabled VM-scope events (UNHOOK is the bridge's baseline). */
  readonly vmEvents: number[];
}

const E820_TYPE_RAM = 1;

/** SHA-256 of all guest RAM. */
export function ramDigest(vm: EmulatedVm): string {
  const hash = createHash("sha256");
  for (const slot of vm.guest.memory.e820()) {
    if (slot.type !== E820_TYPE_RAM) continue;
    const read = vm.guest.memory.read(slot.address, Number(slot.length));
    if (!read.ok) throw new Error(`guest RAM at 0x${slot.address.toString(16)} is not readable`);
    hash.update(read.bytes);
  }
  return hash.digest("hex");
}

/** The VM's state now (kernel fields are empty while it is not hooked). */
export function guestState(vm: EmulatedVm): GuestState {
  const restrictions: Record<string, number> = {};
  for (const [gfn, access] of vm.guest.memory.restrictions()) restrictions[`0x${gfn.toString(16)}`] = access;
  const hooked = vm.kernel.isHooked;
  return {
    ramDigest: ramDigest(vm),
    restrictions,
    vcpus: vm.guest.vcpus.map((_, i) => {
      const v = hooked ? vm.kernel.vcpu(i) : undefined;
      return {
        events: v ? [...v.enabledEvents].sort((a, b) => a - b) : [],
        crs: v ? [...v.crMask].sort((a, b) => a - b) : [],
        msrs: v ? [...v.msrWrites].sort((a, b) => a - b) : [],
        singlestep: v?.singlestep ?? false,
      };
    }),
    vmEvents: hooked ? [...vm.kernel.vmEvents()].sort((a, b) => a - b) : [],
  };
}

/** The state a clean VM has while hooked by the bridge: nothing but UNHOOK. */
export function cleanState(vm: EmulatedVm, digest: string): GuestState {
  return {
    ramDigest: digest,
    restrictions: {},
    vcpus: vm.guest.vcpus.map(() => ({ events: [], crs: [], msrs: [], singlestep: false })),
    vmEvents: [e2eEventId("UNHOOK")],
  };
}

/** Snapshots taken when the device manager unhooked (right after the KVMI socket closed). */
export interface UnhookCapture {
  /** One entry per KVM_INTROSPECTION_UNHOOK while hooked, with the time it happened. */
  readonly states: ReadonlyArray<{ readonly at: number; readonly state: GuestState }>;
  /** Resolves with the first capture not returned yet (bounded). */
  next(timeoutMs?: number): Promise<{ readonly at: number; readonly state: GuestState }>;
  /** Restores the kernel's own unhook. */
  dispose(): void;
}

/**
 * Records the guest's state at every KVM_INTROSPECTION_UNHOOK the device manager performs. QEMU
 * unhooks right after the socket closed (the chardev CLOSE, or the end of the PREUNHOOK wait), and
 * only UNHOOK frees the kernel's introspection state (page restrictions, interceptions), so this is
 * what the bridge left behind when it closed the socket: the ledger must have been undone by then.
 * (Single-stepping is cleared by the socket close itself, so `singlestep` is always false here.)
 */
export function captureAtUnhook(vm: EmulatedVm): UnhookCapture {
  const kernel = vm.kernel;
  const original = kernel.unhook;
  const states: Array<{ at: number; state: GuestState }> = [];
  const waiters: Array<() => void> = [];
  let taken = 0;
  kernel.unhook = async (): Promise<void> => {
    if (kernel.isHooked) {
      states.push({ at: Date.now(), state: guestState(vm) });
      for (const waiter of waiters.splice(0)) waiter();
    }
    return original.call(kernel);
  };
  return {
    states,
    next: (timeoutMs = 5000) => {
      const index = taken++;
      return withTimeout(
        new Promise((resolveNext) => {
          const check = (): void => {
            if (states.length > index) resolveNext(states[index]!);
            else waiters.push(check);
          };
          check();
        }),
        timeoutMs,
        "KVM_INTROSPECTION_UNHOOK",
      );
    },
    dispose: () => {
      kernel.unhook = original;
    },
  };
}

// -------------------------------------------------------------------------------------------------
// The device-manager side of the KVMI socket, raw

/** A raw connection to the bridge's KVMI socket (we are "QEMU"). */
export class RawPeer {
  private chunks: Buffer[] = [];
  private closedAt: number | undefined;
  private destroyedByUs = false;
  private readonly closedPromise: Promise<void>;
  private tap: ((chunk: Buffer) => void) | undefined;

  private constructor(readonly socket: Socket) {
    socket.on("data", (chunk: Buffer) => (this.tap ? this.tap(chunk) : this.chunks.push(chunk)));
    socket.on("error", () => undefined);
    this.closedPromise = new Promise((resolveClose) =>
      socket.once("close", () => {
        this.closedAt = Date.now();
        resolveClose();
      }),
    );
  }

  /** Connects to a UNIX socket path. */
  static async connect(path: string, timeoutMs = 2000): Promise<RawPeer> {
    const socket = connect({ path });
    await withTimeout(
      new Promise<void>((resolveConnect, reject) => {
        socket.once("connect", resolveConnect);
        socket.once("error", reject);
      }),
      timeoutMs,
      `connecting to ${path}`,
    );
    return new RawPeer(socket);
  }

  /** Bytes received so far. */
  get received(): Buffer {
    if (this.chunks.length > 1) this.chunks = [Buffer.concat(this.chunks)];
    return this.chunks[0] ?? Buffer.alloc(0);
  }

  /** Drops the first `n` received bytes. */
  consume(n: number): Buffer {
    const all = this.received;
    this.chunks = [all.subarray(n)];
    return all.subarray(0, n);
  }

  /** Hands what is buffered and every later chunk to `listener` instead of buffering it. */
  stream(listener: (chunk: Buffer) => void): void {
    const buffered = this.consume(this.received.length);
    this.tap = listener;
    if (buffered.length > 0) listener(buffered);
  }

  /** True once the socket is closed (by either side). */
  get isClosed(): boolean {
    return this.closedAt !== undefined;
  }

  /** True when the bridge closed the connection (we had not destroyed it). */
  get closedByBridge(): boolean {
    return this.closedAt !== undefined && !this.destroyedByUs;
  }

  /** Writes bytes (ignored once closed). */
  write(bytes: Uint8Array): void {
    if (!this.socket.destroyed) this.socket.write(bytes);
  }

  /** Waits up to `ms` for the bridge to close; resolves with whether it did. */
  async waitClosed(ms: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.closedPromise, new Promise((r) => (timer = setTimeout(r, ms)))]);
    clearTimeout(timer);
    return this.isClosed;
  }

  /** Waits (bounded) until at least `n` bytes arrived. */
  async waitBytes(n: number, timeoutMs = 2000): Promise<void> {
    await waitUntil(() => this.received.length >= n || this.isClosed, `${n} bytes from the bridge`, { timeoutMs, intervalMs: 2 });
    if (this.received.length < n) throw new Error(`the bridge closed after ${this.received.length} of ${n} bytes`);
  }

  /** Ends the connection from our side. */
  destroy(): void {
    if (!this.isClosed) this.destroyedByUs = true;
    this.socket.destroy();
  }
}

/** QEMU's handshake for a fake VM. */
export function handshakeBytes(uuid: string, variant: HandshakeVariant = "base", name = `fake-${uuid.slice(0, 8)}`): Uint8Array {
  return encodeHandshake({ variant, uuid, name, startTime: BigInt(Math.floor(Date.now() / 1000)), maxGpa: 1n << 32n, e820: [] });
}

/** One KVMI frame: `kvmi_msg_hdr{id, size, seq}` and `body` (size may lie about the body). */
export function frame(id: number, seq: number, body: Uint8Array, size = body.length): Uint8Array {
  const out = new Uint8Array(HEADER_BYTES + body.length);
  const view = new DataView(out.buffer);
  view.setUint16(0, id, true);
  view.setUint16(2, size, true);
  view.setUint32(4, seq, true);
  out.set(body, HEADER_BYTES);
  return out;
}

/** A fake VM the bridge hooked: the raw connection, and the bridge's commands it answered. */
export interface FakeVm {
  readonly uuid: string;
  readonly peer: RawPeer;
  /** Commands the bridge sent, by kernel name, in order. */
  readonly commands: string[];
}

/**
 * Plays QEMU and the KVMI kernel just far enough that the bridge hooks a VM: handshake, then the
 * answers to the bridge's hook-time commands (ops GET_VERSION, GET_VM_INFO, CONTROL_VM_EVENTS). Later
 * commands are answered -KVM_EPERM. Resolves after the hook-time commands were answered.
 */
export async function fakeHook(
  path: string,
  options: {
    uuid?: string;
    vcpus?: number;
    timeoutMs?: number;
    /** Answer the bridge's commands only once this settles. */
    hold?: Promise<unknown>;
    /** The dialect the bridge listens with (default: the e2e project's, `KVMI_E2E_DIALECT`). */
    dialect?: Dialect;
  } = {},
): Promise<FakeVm> {
  const uuid = options.uuid ?? randomUUID();
  const peer = await RawPeer.connect(path);
  const commands: string[] = [];
  try {
    peer.write(handshakeBytes(uuid));
    await peer.waitBytes(HANDSHAKE_REPLY_BYTES, options.timeoutMs ?? 2000);
    peer.consume(HANDSHAKE_REPLY_BYTES);
    // The bridge's hook-time commands, answered by op in the dialect the bridge listens with.
    const dialect = options.dialect ?? E2E_DIALECT;
    const framer = createFramer(dialect);
    const ops: string[] = [];
    const answer = async (hdr: MsgHdr): Promise<void> => {
      await options.hold;
      const spec = commandById(dialect, hdr.id);
      if (spec === undefined) return;
      commands.push(spec.name);
      ops.push(spec.op);
      const reply = spec.reply.layout === null ? {} : (zeroValue(spec.reply.layout) as Record<string, unknown>);
      if (spec.op === "GET_VERSION") {
        const size = "max_msg_size" in reply ? { max_msg_size: dialect.maxMessageBytes } : {};
        peer.write(encodeReply(dialect, spec, hdr.seq, 0, { ...reply, ...size, version: dialect.kvmiVersion }));
      } else if (spec.op === "GET_VM_INFO") {
        peer.write(encodeReply(dialect, spec, hdr.seq, 0, { ...reply, vcpu_count: options.vcpus ?? 1 }));
      } else if (spec.op === "CONTROL_VM_EVENTS") {
        peer.write(encodeReply(dialect, spec, hdr.seq, 0));
      } else {
        peer.write(encodeReply(dialect, spec, hdr.seq, -errno.KVM_EPERM));
      }
    };
    const feed = (chunk: Buffer): void => {
      try {
        framer.push(chunk, (hdr) => void answer(hdr));
      } catch {
        peer.destroy();
      }
    };
    peer.stream(feed);
    await waitUntil(() => ops.includes("CONTROL_VM_EVENTS") || peer.isClosed, "the bridge's hook-time commands", {
      timeoutMs: options.timeoutMs ?? 2000,
      intervalMs: 2,
    });
    if (peer.isClosed) throw new Error(`the bridge closed the fake VM during its hook (commands: ${commands.join(", ")})`);
    return { uuid, peer, commands };
  } catch (err) {
    peer.destroy();
    throw err;
  }
}

// -------------------------------------------------------------------------------------------------
// fast-check arbitraries for the device-manager side

/** KVMI_MSG_SIZE of the dialect under test: the largest body a frame may declare (docs/protocol/). */
export const MAX_FRAME_BODY = E2E_DIALECT.maxMessageBytes;

/** A handshake that is wrong in some way: random bytes, a bad struct_size, or a truncated valid one. */
export const arbitraryBadHandshake: fc.Arbitrary<{ readonly kind: string; readonly bytes: Uint8Array }> = fc.oneof(
  fc.uint8Array({ minLength: 0, maxLength: 160 }).map((bytes) => ({ kind: "random", bytes })),
  fc
    .tuple(fc.oneof(fc.integer({ min: 0, max: 31 }), fc.integer({ min: 64 * 1024 + 1, max: 0xffff_ffff })), fc.uint8Array({ maxLength: 64 }))
    .map(([size, rest]) => {
      const bytes = new Uint8Array(4 + rest.length);
      new DataView(bytes.buffer).setUint32(0, size, true);
      bytes.set(rest, 4);
      return { kind: `struct_size ${size}`, bytes };
    }),
  fc.tuple(fc.constantFrom<HandshakeVariant>("base", "max-gpa", "e820"), fc.integer({ min: 1, max: 95 })).map(([variant, keep]) => ({
    kind: `truncated ${variant} handshake`,
    bytes: handshakeBytes(randomUUID(), variant).subarray(0, keep),
  })),
  fc.uint8Array({ minLength: 92, maxLength: 92 }).map((rest) => {
    // A complete base-size handshake with random contents (it may even parse).
    const bytes = new Uint8Array(96);
    new DataView(bytes.buffer).setUint32(0, 96, true);
    bytes.set(rest, 4);
    return { kind: "random 96-byte handshake", bytes };
  }),
);

/** One KVMI frame from "the kernel", malformed or not. */
export const arbitraryFrame: fc.Arbitrary<{ readonly kind: string; readonly bytes: Uint8Array }> = fc.oneof(
  // Oversize header: 8185 (one past KVMI_MSG_SIZE) or anything larger.
  fc.tuple(fc.integer({ min: 0, max: 0xffff }), fc.oneof(fc.constant(MAX_FRAME_BODY + 1), fc.integer({ min: MAX_FRAME_BODY + 1, max: 0xffff }))).map(
    ([id, size]) => ({ kind: `oversize ${size}`, bytes: frame(id, 1, new Uint8Array(0), size) }),
  ),
  // A reply (or an unknown id) with a random seq and body.
  fc.tuple(fc.integer({ min: 1, max: 0xffff }), fc.nat(), fc.uint8Array({ maxLength: 48 })).map(([id, seq, body]) => ({
    kind: `message id ${id}`,
    bytes: frame(id, seq, body),
  })),
  // An event (id 0) with a random body: too short, inconsistent size, unknown event id.
  fc.tuple(fc.nat(), fc.uint8Array({ maxLength: 700 })).map(([seq, body]) => ({ kind: "event", bytes: frame(E2E_DIALECT.eventFraming.vcpuEventMessageId, seq, body) })),
  // A header that promises more than follows (the connection is closed mid-body).
  fc.tuple(fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 1, max: MAX_FRAME_BODY })).map(([id, size]) => ({
    kind: `truncated body of ${size}`,
    bytes: frame(id, 7, new Uint8Array(Math.floor(size / 2)), size),
  })),
  // Random bytes.
  fc.uint8Array({ minLength: 1, maxLength: 64 }).map((bytes) => ({ kind: "random bytes", bytes })),
);

// -------------------------------------------------------------------------------------------------
// A controller's typical hooks, as a plan of session commands

/** Guest-physical places the hook plans use (low RAM, below the boot page tables). */
export const SPOTS = {
  /** A page of NOPs with the controller's breakpoints. */
  BP_GPA: 0x30000n,
  BP2_GPA: 0x30800n,
  /** A 4-byte patch (a hook's detour), on the same page. */
  PATCH_GPA: 0x30010n,
  /** Pages the controller restricts (R only; R+X). */
  PF_GPA: 0x40000n,
  PF2_GPA: 0x41000n,
  MSR_LSTAR: 0xc0000082,
  NOP: 0x90,
  INT3: 0xcc,
} as const;

/** Fills the breakpoint page with NOPs directly in guest memory (not through the bridge). */
export function prepareGuest(vm: EmulatedVm): void {
  const page = vm.guest.memory.write(SPOTS.BP_GPA, new Uint8Array(4096).fill(SPOTS.NOP));
  if (!page.ok) throw new Error("cannot prepare the breakpoint page");
}

/** Options of {@link hookPlan}. */
export interface HookPlanOptions {
  /** Also single-step vCPU 1. */
  readonly singlestep?: boolean;
  /** Also switch the UNHOOK event off (the bridge's baseline is on). */
  readonly disableUnhook?: boolean;
}

/**
 * What a typical controller does to VM `vm` (`vms/{uuid}`) with 2+ vCPUs: two INT3s and a 4-byte
 * patch over one of them (the ledger must keep the first original byte), page restrictions, CR3
 * interception on vCPU 0, LSTAR interception on vCPU 1, and the matching vCPU events.
 */
export function hookPlan(vm: string, options: HookPlanOptions = {}): SessionCommandRequest[] {
  const vcpu = (n: number): string => `${vm}/vcpus/${n}`;
  const plan: SessionCommandRequest[] = [
    { case: "writePhysicalMemory", value: { vm, gpa: SPOTS.BP_GPA, data: Uint8Array.of(SPOTS.INT3) } },
    { case: "writePhysicalMemory", value: { vm, gpa: SPOTS.BP2_GPA, data: Uint8Array.of(SPOTS.INT3) } },
    { case: "writePhysicalMemory", value: { vm, gpa: SPOTS.PATCH_GPA, data: Uint8Array.of(0xe9, 0xde, 0xad, 0xbe) } },
    // Overwrites the first INT3 and the byte after it: the original of BP_GPA is still the NOP.
    { case: "writePhysicalMemory", value: { vm, gpa: SPOTS.BP_GPA, data: Uint8Array.of(SPOTS.INT3, SPOTS.INT3) } },
    { case: "setPageAccess", value: { vm, entries: [{ gpa: SPOTS.PF_GPA, access: 1 }, { gpa: SPOTS.PF2_GPA, access: 5 }] } },
    { case: "controlVcpuEvents", value: { name: vcpu(0), event: EventType.BREAKPOINT, enable: true } },
    { case: "controlVcpuEvents", value: { name: vcpu(1), event: EventType.BREAKPOINT, enable: true } },
    { case: "controlVcpuEvents", value: { name: vcpu(0), event: EventType.CR, enable: true } },
    { case: "controlCr", value: { name: vcpu(0), cr: 3, enable: true } },
    { case: "controlVcpuEvents", value: { name: vcpu(1), event: EventType.MSR, enable: true } },
    { case: "controlMsr", value: { name: vcpu(1), msr: SPOTS.MSR_LSTAR, enable: true } },
    { case: "controlVcpuEvents", value: { name: vcpu(0), event: EventType.PF, enable: true } },
    { case: "controlVcpuEvents", value: { name: vcpu(1), event: EventType.PF, enable: true } },
  ];
  if (options.singlestep === true) plan.push({ case: "controlSingleStep", value: { name: vcpu(1), enable: true } });
  if (options.disableUnhook === true) plan.push({ case: "controlVmEvents", value: { vm, event: EventType.UNHOOK, enable: false } });
  return plan;
}
