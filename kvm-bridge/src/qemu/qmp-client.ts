// SPDX-License-Identifier: Apache-2.0
/**
 * A client for QEMU's machine protocol (QMP; docs/qemu-backend.md "QMP"): JSON objects over a
 * stream, a greeting, `qmp_capabilities`, then commands matched to replies by `id` and events
 * (`STOP`, `RESUME`, `SHUTDOWN`, `MIGRATION`, …) at any time. Commands may overlap; replies are
 * matched by id. Lines are bounded so that a misbehaving peer cannot grow our memory.
 */
import type { Socket } from "node:net";
import { KvmiProtocolError, KvmiTimeoutError, KvmiTransportError } from "../errors.js";
import { openSocket, type SocketEndpoint } from "./endpoint.js";

const MAX_LINE_BYTES = 16 << 20;

/** A QMP event as QEMU sends it. */
export interface QmpEvent {
  readonly event: string;
  readonly data?: Record<string, unknown>;
  readonly timestamp?: { readonly seconds: number; readonly microseconds: number };
}

/** An `{"error": {"class", "desc"}}` reply. */
export class QmpCommandError extends KvmiProtocolError {
  constructor(readonly command: string, readonly errorClass: string, readonly description: string) {
    super(`QMP ${command} failed: ${errorClass}: ${description}`);
  }
}

/** One vCPU of query-cpus-fast. */
export interface QmpCpu {
  readonly cpuIndex: number;
  readonly threadId: number;
  readonly qomPath: string;
  readonly target: string;
}

type Pending = { resolve(value: unknown): void; reject(error: Error): void; timer: NodeJS.Timeout; command: string };

export class QmpClient {
  private buffer = "";
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private readonly eventListeners = new Set<(event: QmpEvent) => void>();
  private readonly closeListeners = new Set<() => void>();
  private greetingWaiter: ((greeting: unknown) => void) | undefined;
  private closedError: Error | undefined;
  greeting: { readonly version?: { readonly qemu?: { major: number; minor: number; micro: number } } } = {};

  constructor(private readonly socket: Socket, private readonly requestTimeoutMs: number) {
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => this.onData(chunk));
    socket.on("error", (error) => this.fail(new KvmiTransportError(`QMP connection failed: ${error.message}`, {}, { cause: error })));
    socket.on("close", () => this.fail(new KvmiTransportError("QMP closed the connection")));
  }

  private onData(chunk: string): void {
    this.buffer += chunk;
    for (let newline = this.buffer.indexOf("\n"); newline >= 0; newline = this.buffer.indexOf("\n")) {
      const line = this.buffer.slice(0, newline).trim();
      this.buffer = this.buffer.slice(newline + 1);
      if (line) this.onMessage(line);
    }
    if (this.buffer.length > MAX_LINE_BYTES) {
      this.socket.destroy();
      this.fail(new KvmiProtocolError(`QMP message over ${MAX_LINE_BYTES} bytes`));
    }
  }

  private onMessage(line: string): void {
    let message: Record<string, unknown>;
    try {
      message = JSON.parse(line) as Record<string, unknown>;
    } catch {
      this.socket.destroy();
      this.fail(new KvmiProtocolError(`QMP sent something that is not JSON: ${line.slice(0, 80)}`));
      return;
    }
    if ("QMP" in message) {
      this.greeting = message.QMP as QmpClient["greeting"];
      this.greetingWaiter?.(message.QMP);
      return;
    }
    if (typeof message.event === "string") {
      for (const listener of this.eventListeners) listener(message as unknown as QmpEvent);
      return;
    }
    const id = String(message.id);
    const pending = this.pending.get(id);
    if (!pending) return;
    this.pending.delete(id);
    clearTimeout(pending.timer);
    if ("error" in message) {
      const error = message.error as { class?: string; desc?: string };
      pending.reject(new QmpCommandError(pending.command, error.class ?? "GenericError", error.desc ?? ""));
    } else {
      pending.resolve(message.return);
    }
  }

  private fail(error: Error): void {
    if (this.closedError) return;
    this.closedError = error;
    for (const pending of this.pending.values()) {
      clearTimeout(pending.timer);
      pending.reject(error);
    }
    this.pending.clear();
    for (const listener of this.closeListeners) listener();
  }

  /** @internal waits for the greeting and negotiates capabilities; called by connectQmp. */
  async init(): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new KvmiTimeoutError("QMP sent no greeting")), this.requestTimeoutMs);
      this.greetingWaiter = () => {
        clearTimeout(timer);
        resolve();
      };
    });
    await this.execute("qmp_capabilities");
  }

  /** Runs one command; rejects with QmpCommandError on an error reply. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs = this.requestTimeoutMs): Promise<T> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = String(this.nextId++);
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new KvmiTimeoutError(`QMP ${command} got no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { resolve: resolve as (value: unknown) => void, reject, timer, command });
      this.socket.write(`${JSON.stringify(args ? { execute: command, arguments: args, id } : { execute: command, id })}\n`);
    });
  }

  onEvent(listener: (event: QmpEvent) => void): () => void {
    this.eventListeners.add(listener);
    return () => this.eventListeners.delete(listener);
  }

  onClose(listener: () => void): () => void {
    this.closeListeners.add(listener);
    return () => this.closeListeners.delete(listener);
  }

  get closed(): boolean {
    return this.closedError !== undefined;
  }

  /** An HMP command through QMP (`human-monitor-command`), optionally on one vCPU. */
  hmp(commandLine: string, cpuIndex?: number): Promise<string> {
    return this.execute<string>("human-monitor-command", cpuIndex === undefined ? { "command-line": commandLine } : { "command-line": commandLine, "cpu-index": cpuIndex });
  }

  async status(): Promise<{ running: boolean; status: string }> {
    return this.execute("query-status");
  }

  async stop(): Promise<void> {
    await this.execute("stop");
  }

  async cont(): Promise<void> {
    await this.execute("cont");
  }

  async name(): Promise<string | undefined> {
    return (await this.execute<{ name?: string }>("query-name")).name;
  }

  async uuid(): Promise<string> {
    return (await this.execute<{ UUID: string }>("query-uuid")).UUID;
  }

  async cpus(): Promise<QmpCpu[]> {
    const cpus = await this.execute<Array<{ "cpu-index": number; "thread-id": number; "qom-path": string; target: string }>>("query-cpus-fast");
    return cpus.map((cpu) => ({ cpuIndex: cpu["cpu-index"], threadId: cpu["thread-id"], qomPath: cpu["qom-path"], target: cpu.target }));
  }

  /** Guest RAM in bytes (`query-memory-size-summary`'s base-memory plus plugged memory). */
  async memorySize(): Promise<bigint> {
    const summary = await this.execute<{ "base-memory": number; "plugged-memory"?: number }>("query-memory-size-summary");
    return BigInt(summary["base-memory"]) + BigInt(summary["plugged-memory"] ?? 0);
  }

  /**
   * The guest-physical ranges backed by RAM or ROM (what KVM would have memslots for), merged, from
   * the flat view of the "memory" address space (HMP `info mtree -f`; QMP has no memory-map query).
   */
  async ramRanges(): Promise<Array<{ start: bigint; end: bigint }>> {
    const views = (await this.hmp("info mtree -f")).replace(/\r/g, "").split(/\n(?=FlatView)/);
    const view = views.find((text) => / AS "memory"/.test(text)) ?? views.find((text) => /Root memory region: system/.test(text)) ?? "";
    const ranges: Array<{ start: bigint; end: bigint }> = [];
    for (const match of view.matchAll(/^\s*([0-9a-f]+)-([0-9a-f]+) \(prio [^,]*, (?:ram|rom)\)/gm)) {
      const start = BigInt(`0x${match[1]}`);
      const end = BigInt(`0x${match[2]}`) + 1n;
      const last = ranges.at(-1);
      if (last && last.end === start) last.end = end;
      else ranges.push({ start, end });
    }
    return ranges;
  }

  /** HMP `gva2gpa` on one vCPU: undefined when the address is not mapped. */
  async gva2gpa(cpuIndex: number, gva: bigint): Promise<bigint | undefined> {
    const text = await this.hmp(`gva2gpa 0x${gva.toString(16)}`, cpuIndex);
    const match = /gpa:\s*0x([0-9a-f]+)/i.exec(text);
    return match ? BigInt(`0x${match[1]}`) : undefined;
  }

  /** Saves guest physical memory to a file on QEMU's host (bulk reads). */
  async pmemsave(gpa: bigint, size: number, filename: string): Promise<void> {
    await this.execute("pmemsave", { val: Number(gpa), size, filename });
  }

  /**
   * Writes the VM's state (a migration stream: RAM, devices, vCPUs) to `file` on QEMU's host and
   * waits for it to finish; QEMU is left stopped (`postmigrate`). `-incoming exec:cat FILE` on an
   * identically configured QEMU restores it (QemuLaunchOptions.snapshot).
   */
  async migrateToFile(file: string, timeoutMs = 120_000): Promise<void> {
    await this.execute("migrate", { uri: `exec:cat > '${file.replace(/'/g, `'\\''`)}'` });
    const until = Date.now() + timeoutMs;
    for (;;) {
      const info = await this.execute<{ status?: string; "error-desc"?: string }>("query-migrate");
      if (info.status === "completed") return;
      if (info.status === "failed" || info.status === "cancelled") throw new QmpCommandError("migrate", info.status, info["error-desc"] ?? "");
      if (Date.now() > until) throw new KvmiTimeoutError(`saving the VM to ${file} took over ${timeoutMs} ms`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  /**
   * Waits while QEMU restores an incoming migration stream (status `inmigrate`): the gdbstub must
   * not stop a VM whose state is still arriving. Returns the status that followed.
   */
  async waitWhileIncoming(timeoutMs = 60_000): Promise<string> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const { status } = await this.status();
      if (status !== "inmigrate") return status;
      if (Date.now() > until) throw new KvmiTimeoutError(`QEMU was still restoring its snapshot after ${timeoutMs} ms`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  /** Ends QEMU. */
  async quit(): Promise<void> {
    await this.execute("quit").catch(() => undefined);
  }

  close(): void {
    this.socket.destroy();
    this.fail(new KvmiTransportError("QMP client closed"));
  }
}

export interface QmpClientOptions {
  readonly requestTimeoutMs?: number;
}

export async function connectQmp(endpoint: SocketEndpoint, options: QmpClientOptions = {}): Promise<QmpClient> {
  const socket = await openSocket(endpoint, "QEMU QMP");
  const client = new QmpClient(socket, options.requestTimeoutMs ?? 10_000);
  try {
    await client.init();
  } catch (error) {
    client.close();
    throw error;
  }
  return client;
}
