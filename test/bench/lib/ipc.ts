// SPDX-License-Identifier: Apache-2.0
/**
 * A tiny request/response protocol over the `child_process.fork` IPC channel, so the benchmark can
 * run the bridge, the emulator and the bare grpc-js echo server in their own processes and drive
 * them from the parent (the measuring client). Messages use the "advanced" serialization, so typed
 * arrays and bigints cross unchanged.
 */
import { fork } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { writeFileSync } from "node:fs";
import { Session } from "node:inspector/promises";
import { fileURLToPath } from "node:url";
import { LoopMeter } from "./loop-meter.js";

interface CallMessage {
  readonly kind: "call";
  readonly id: number;
  readonly method: string;
  readonly params: unknown;
}

interface ResultMessage {
  readonly kind: "result";
  readonly id: number;
  readonly ok: boolean;
  readonly value?: unknown;
  readonly error?: string;
}

interface ReadyMessage {
  readonly kind: "ready";
}

type ChildMessage = ResultMessage | ReadyMessage;

/** A child's methods: each takes one structured-clonable parameter object. */
export type Handlers = Record<string, (params: never) => unknown>;

/**
 * Serves `handlers` to the parent. After a handler named `exit` has answered, the process exits
 * with code 0 (so `--cpu-prof` gets to write its profile). The child also exits when the parent
 * goes away, so an interrupted benchmark leaves nothing running.
 */
export function serve(own: Handlers): void {
  const handlers: Handlers = { ...profilerHandlers(), ...own };
  const send = process.send?.bind(process);
  if (send === undefined) throw new Error("this module runs as a forked child of test/bench/run.ts");
  process.on("message", (raw: unknown) => {
    const message = raw as CallMessage;
    if (message?.kind !== "call") return;
    const handler = handlers[message.method] as ((params: unknown) => unknown) | undefined;
    const reply = (result: Omit<ResultMessage, "kind" | "id">): void => {
      send({ kind: "result", id: message.id, ...result });
    };
    if (handler === undefined) return reply({ ok: false, error: `no method ${message.method}` });
    Promise.resolve()
      .then(() => handler(message.params))
      .then(
        (value) => {
          reply({ ok: true, value });
          if (message.method === "exit") setImmediate(() => process.exit(0));
        },
        (err: unknown) => reply({ ok: false, error: err instanceof Error ? (err.stack ?? err.message) : String(err) }),
      );
  });
  process.on("disconnect", () => process.exit(0));
  send({ kind: "ready" });
}

/**
 * Every child can be CPU-profiled around one phase of the benchmark: `profileStart`, then
 * `profileStop({ file })` writes a V8 `.cpuprofile` (the in-process inspector, so only this
 * thread is sampled, not tsx's module-loader thread).
 */
function profilerHandlers(): Handlers {
  let session: Session | undefined;
  const loop = new LoopMeter();
  return {
    /** CPU time this process has used (µs), for CPU-per-operation figures. */
    cpu: () => process.cpuUsage(),
    /** Event-loop utilization and delay over a window (loop-meter.ts). */
    loopStart: () => loop.start(),
    loopStop: () => loop.stop(),
    profileStart: async (params: { intervalUs?: number }) => {
      if (session !== undefined) throw new Error("profileStart while profiling");
      session = await startProfile(params.intervalUs);
    },
    profileStop: async (params: { file: string }) => {
      if (session === undefined) throw new Error("profileStop without profileStart");
      const running = session;
      session = undefined;
      await stopProfile(running, params.file);
    },
  };
}

/** Starts the V8 sampling profiler of this thread (in-process inspector), every `intervalUs` µs. */
export async function startProfile(intervalUs = 250): Promise<Session> {
  const session = new Session();
  session.connect();
  await session.post("Profiler.enable");
  await session.post("Profiler.setSamplingInterval", { interval: intervalUs });
  await session.post("Profiler.start");
  return session;
}

/** Stops a {@link startProfile} and writes its `.cpuprofile` to `file`. */
export async function stopProfile(session: Session, file: string): Promise<void> {
  const { profile } = await session.post("Profiler.stop");
  await session.post("Profiler.disable");
  session.disconnect();
  writeFileSync(file, JSON.stringify(profile));
}

/** Options of {@link ChildHandle.start}. */
export interface ChildOptions {
  /** Extra node flags, e.g. `--cpu-prof`. */
  readonly nodeFlags?: readonly string[];
  /** Start with `--no-warnings` (the child collects warnings itself). */
  readonly quiet?: boolean;
}

/** The parent's end of one child process. */
export class ChildHandle {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void; method: string }>();
  private exited = false;
  readonly done: Promise<number | null>;

  private constructor(
    readonly name: string,
    private readonly child: ChildProcess,
  ) {
    this.done = new Promise((resolve) => {
      child.once("exit", (code, signal) => {
        this.exited = true;
        const gone = new Error(`${name} exited (code ${code}, signal ${signal})`);
        for (const entry of this.pending.values()) entry.reject(gone);
        this.pending.clear();
        resolve(code);
      });
    });
    child.on("message", (raw: unknown) => {
      const message = raw as ChildMessage;
      if (message.kind !== "result") return;
      const entry = this.pending.get(message.id);
      if (entry === undefined) return;
      this.pending.delete(message.id);
      if (message.ok) entry.resolve(message.value);
      else entry.reject(new Error(`${name}.${entry.method}: ${message.error}`));
    });
  }

  /** Forks `module` (a .ts file next to the caller) with tsx and waits for it to serve. */
  static async start(name: string, module: URL, options: ChildOptions = {}): Promise<ChildHandle> {
    const child = fork(fileURLToPath(module), [], {
      execArgv: ["--import", import.meta.resolve("tsx"), ...(options.quiet === true ? ["--no-warnings"] : []), ...(options.nodeFlags ?? [])],
      serialization: "advanced",
      stdio: ["ignore", "inherit", "inherit", "ipc"],
    });
    const ready = new Promise<void>((resolve, reject) => {
      const onMessage = (raw: unknown): void => {
        if ((raw as ChildMessage).kind !== "ready") return;
        child.off("message", onMessage);
        resolve();
      };
      child.on("message", onMessage);
      child.once("exit", (code) => reject(new Error(`${name} exited before it was ready (code ${code})`)));
      child.once("error", reject);
    });
    const handle = new ChildHandle(name, child);
    await ready;
    return handle;
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** Calls `method` in the child; rejects after `timeoutMs` so that a stuck child cannot hang the run. */
  call<T>(method: string, params: object = {}, timeoutMs = 120_000): Promise<T> {
    if (this.exited) return Promise.reject(new Error(`${this.name} has exited`));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`${this.name}.${method}: no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      const settle = <A>(f: (a: A) => void) => (a: A): void => {
        clearTimeout(timer);
        f(a);
      };
      this.pending.set(id, { resolve: settle(resolve as (v: unknown) => void), reject: settle(reject), method });
      this.child.send({ kind: "call", id, method, params } satisfies CallMessage);
    });
  }

  /** Asks the child to exit (its `exit` handler cleans up); kills it if it does not within `ms`. */
  async stop(ms = 5000): Promise<void> {
    if (this.exited) return;
    const timer = setTimeout(() => this.child.kill("SIGKILL"), ms);
    await this.call("exit").catch(() => undefined);
    await this.done;
    clearTimeout(timer);
  }

  /** Kills the child at once (error paths). */
  kill(): void {
    if (!this.exited) this.child.kill("SIGKILL");
  }
}
