// SPDX-License-Identifier: Apache-2.0
/**
 * Starts a QEMU VM for `kvmi-qemu run`, tests and demos: a direct kernel boot with the serial
 * console on the child's stdio, the gdbstub and QMP on UNIX sockets in a private directory, TCG by
 * default (`/dev/kvm` is often absent or too slow in CI). The console is kept as lines so callers
 * can wait for the guest's own markers and ask it for its `ps` (test/guest/README.md).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { KvmiTimeoutError, KvmiTransportError } from "../errors.js";
import { connectQmp } from "./qmp-client.js";

export interface QemuLaunchOptions {
  readonly kernel: string;
  readonly initrd: string;
  readonly append: string;
  readonly memoryMib?: number;
  readonly vcpus?: number;
  readonly name?: string;
  readonly uuid?: string;
  /** "tcg" (default) or "kvm". */
  readonly accel?: string;
  /**
   * A migration stream written by `QemuProcess.saveSnapshot` with the same kernel, initrd, append,
   * memory and vCPUs: the VM resumes from it (in about a second) instead of booting.
   */
  readonly snapshot?: string;
  readonly qemuBinary?: string;
  /** Console lines kept for `consoleTail`/`waitForConsole`. */
  readonly consoleLines?: number;
}

/** One guest process as its own `ps -o pid,ppid,comm` printed it. */
export interface GuestPsEntry {
  readonly pid: number;
  readonly ppid: number;
  readonly comm: string;
}

export class QemuProcess {
  private lines: string[] = [];
  private partial = "";
  private readonly lineWaiters = new Set<(line: string) => void>();
  private exitCode: number | null | undefined;
  readonly exited: Promise<number | null>;

  constructor(
    readonly child: ChildProcess,
    readonly dir: string,
    readonly gdbSocket: string,
    readonly qmpSocket: string,
    readonly name: string,
    readonly uuid: string,
    private readonly keepLines: number,
  ) {
    child.stdout!.setEncoding("latin1");
    child.stdout!.on("data", (chunk: string) => this.onConsole(chunk));
    let stderr = "";
    child.stderr!.setEncoding("utf8");
    child.stderr!.on("data", (chunk: string) => (stderr = (stderr + chunk).slice(-4000)));
    this.exited = new Promise((resolve) =>
      child.on("exit", (code) => {
        this.exitCode = code;
        if (stderr) this.lines.push(...stderr.split("\n").map((line) => `[qemu] ${line}`));
        resolve(code);
      }),
    );
  }

  private onConsole(chunk: string): void {
    const text = (this.partial + chunk).replace(/\r/g, "");
    const parts = text.split("\n");
    this.partial = parts.pop()!;
    for (const line of parts) {
      this.lines.push(line);
      for (const waiter of this.lineWaiters) waiter(line);
    }
    if (this.lines.length > this.keepLines) this.lines = this.lines.slice(-this.keepLines);
  }

  get running(): boolean {
    return this.exitCode === undefined;
  }

  consoleTail(count = 40): string {
    return this.lines.slice(-count).join("\n");
  }

  /** Waits for a console line matching `pattern` that arrives after this call (or is already in the kept lines when `seen`). */
  waitForConsole(pattern: RegExp, timeoutMs: number, options: { seen?: boolean } = {}): Promise<string> {
    if (options.seen) {
      const found = this.lines.find((line) => pattern.test(line));
      if (found !== undefined) return Promise.resolve(found);
    }
    return new Promise((resolve, reject) => {
      const waiter = (line: string) => {
        if (!pattern.test(line)) return;
        cleanup();
        resolve(line);
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new KvmiTimeoutError(`no console line matching ${pattern} within ${timeoutMs} ms; console tail:\n${this.consoleTail()}`));
      }, timeoutMs);
      const onExit = () => {
        cleanup();
        reject(new KvmiTransportError(`QEMU exited before ${pattern}; console tail:\n${this.consoleTail()}`));
      };
      const cleanup = () => {
        clearTimeout(timer);
        this.lineWaiters.delete(waiter);
        this.child.off("exit", onExit);
      };
      this.lineWaiters.add(waiter);
      this.child.once("exit", onExit);
    });
  }

  /** Sends one line to the guest's serial console. */
  sendConsole(line: string): void {
    this.child.stdin!.write(`${line}\n`);
  }

  /** Asks the test guest's init for its own `ps` (the ground truth; test/guest/README.md). */
  async guestPs(timeoutMs = 20_000): Promise<GuestPsEntry[]> {
    const collected: string[] = [];
    let inside = false;
    const collect = (line: string) => {
      if (line.includes("KVMI-PS-BEGIN")) inside = true;
      else if (line.includes("KVMI-PS-END")) inside = false;
      else if (inside) collected.push(line);
    };
    this.lineWaiters.add(collect);
    try {
      const end = this.waitForConsole(/KVMI-PS-END/, timeoutMs);
      this.sendConsole("ps");
      await end;
    } finally {
      this.lineWaiters.delete(collect);
    }
    return collected
      .map((line) => /^\s*(\d+)\s+(\d+)\s+(.*)$/.exec(line))
      .filter((match): match is RegExpExecArray => match !== null)
      .map((match) => ({ pid: Number(match[1]), ppid: Number(match[2]), comm: match[3]!.trim() }));
  }

  /**
   * Saves the running VM to `file` (a migration stream) through a QMP connection of its own, so
   * call it before kvmi-qemu attaches (QEMU's QMP socket serves one client at a time). The VM is
   * left stopped; a QEMU launched with `snapshot: file` and the same options resumes from there.
   */
  async saveSnapshot(file: string): Promise<void> {
    const qmp = await connectQmp({ kind: "unix", path: this.qmpSocket });
    try {
      await qmp.migrateToFile(file);
    } finally {
      qmp.close();
    }
  }

  /** Ends QEMU (SIGTERM, then SIGKILL) and removes its socket directory. */
  async stop(): Promise<void> {
    if (this.running) {
      this.child.kill("SIGTERM");
      const timer = setTimeout(() => this.child.kill("SIGKILL"), 3000);
      await this.exited;
      clearTimeout(timer);
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Builds QEMU's command line (exported for tests and `kvmi-qemu run --print`). */
export function qemuArguments(options: QemuLaunchOptions, gdbSocket: string, qmpSocket: string, name: string, uuid: string): string[] {
  const args = [
    "-accel", options.accel ?? "tcg",
    "-m", String(options.memoryMib ?? 512),
    "-smp", String(options.vcpus ?? 2),
    "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
    "-name", name, "-uuid", uuid,
    "-kernel", options.kernel, "-initrd", options.initrd, "-append", options.append,
    "-serial", "stdio",
    "-chardev", `socket,id=kvmi-gdb,path=${gdbSocket},server=on,wait=off`, "-gdb", "chardev:kvmi-gdb",
    "-chardev", `socket,id=kvmi-qmp,path=${qmpSocket},server=on,wait=off`, "-mon", "chardev=kvmi-qmp,mode=control",
  ];
  if (options.snapshot) args.push("-incoming", `exec:cat ${shellQuote(options.snapshot)}`);
  return args;
}

function shellQuote(text: string): string {
  return `'${text.replace(/'/g, `'\\''`)}'`;
}

/** Starts QEMU and waits until both sockets exist. */
export async function launchQemu(options: QemuLaunchOptions): Promise<QemuProcess> {
  for (const file of [options.kernel, options.initrd]) {
    if (!existsSync(file)) throw new KvmiTransportError(`no such file: ${file}`);
  }
  const dir = mkdtempSync(join(tmpdir(), "kvmi-qemu-"));
  const gdbSocket = join(dir, "gdb.sock");
  const qmpSocket = join(dir, "qmp.sock");
  const name = options.name ?? "linux-0";
  const uuid = options.uuid ?? randomUUID();
  const binary = options.qemuBinary ?? "qemu-system-x86_64";
  const child = spawn(binary, qemuArguments(options, gdbSocket, qmpSocket, name, uuid), { stdio: ["pipe", "pipe", "pipe"] });
  const spawned = await new Promise<Error | undefined>((resolve) => {
    child.once("spawn", () => resolve(undefined));
    child.once("error", resolve);
  });
  if (spawned) {
    rmSync(dir, { recursive: true, force: true });
    throw new KvmiTransportError(`cannot start ${binary}: ${spawned.message} (install Debian's qemu-system-x86)`);
  }
  const qemu = new QemuProcess(child, dir, gdbSocket, qmpSocket, name, uuid, options.consoleLines ?? 2000);
  for (let waited = 0; !(existsSync(gdbSocket) && existsSync(qmpSocket)); waited += 20) {
    if (!qemu.running || waited > 10_000) {
      await qemu.stop();
      throw new KvmiTransportError(`QEMU did not open its sockets; output:\n${qemu.consoleTail()}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return qemu;
}
