// SPDX-License-Identifier: Apache-2.0
/**
 * A real bridge plus emulated VMs for the clients' end-to-end tests: `startBridge` from
 * `@kvmi/service` listening on gRPC 127.0.0.1:0 and on a KVMI UNIX socket in a fresh temporary
 * directory, and emulated VMs (`@kvmi/kvm-bridge/emulator`) that connect to it as QEMU would. The
 * clients reach the bridge only over gRPC (the SDK in-process, kvmictl and the examples as child
 * processes); the tests drive the guest workload with manual ticks and compare what the tools saw
 * with the guest's ground truth.
 */
import { execFileSync, spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { connect, State } from "@kvmi/clients";
import { main as kvmictlMain } from "@kvmi/clients/cli";
import type { BridgeClient, TlsOptions } from "@kvmi/clients";
import { silentLogger } from "@kvmi/kvm-bridge";
import { createEmulatedVm } from "@kvmi/kvm-bridge/emulator";
import type { EmulatedVm, EmulatedVmOptions } from "@kvmi/kvm-bridge/emulator";
import { loadConfigOrThrow, startBridge } from "@kvmi/service";
import type { Bridge } from "@kvmi/service";

/** The repository root. */
export const REPO_ROOT = resolve(fileURLToPath(new URL("../..", import.meta.url)));
/** The kvmictl entry point. */
export const KVMICTL_BIN = join(REPO_ROOT, "clients/cli/bin/kvmictl.mjs");

/** Options of {@link startClientsBridge}. */
export interface ClientsBridgeOptions {
  /** One entry per emulated VM (name, vcpus, workload, seed, …). */
  readonly vms: readonly Omit<EmulatedVmOptions, "logger">[];
  /** Extra bridge flags (the `kvmi-bridge` command line), e.g. `["--event-timeout-ms", "2000"]`. */
  readonly bridgeArgs?: readonly string[];
  /** TLS options of the harness's own client, for a bridge started with `--tls-*` flags. */
  readonly tls?: TlsOptions;
}

/** A running bridge with its VMs. */
export interface ClientsBridge {
  /** The gRPC target (`127.0.0.1:port`). */
  readonly target: string;
  /** The KVMI socket the VMs connect to. */
  readonly kvmiSocket: string;
  readonly vms: readonly EmulatedVm[];
  /** An SDK client for the test's own checks. */
  readonly client: BridgeClient;
  /** Waits until `predicate` holds for the registry entry of `uuid`. */
  waitForVm(uuid: string, predicate: (vm: Awaited<ReturnType<BridgeClient["getVm"]>>) => boolean, timeoutMs?: number): Promise<void>;
  stop(): Promise<void>;
}

/** Ends a wait at once (the other errors of a probe are retried until the timeout). */
class FatalWaitError extends Error {}

async function waitFor<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs: number): Promise<T> {
  const until = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (err) {
      if (err instanceof FatalWaitError) throw err;
      last = err;
    }
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ""}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Starts a bridge and connects the emulated VMs; resolves when every VM is hooked. */
export async function startClientsBridge(options: ClientsBridgeOptions): Promise<ClientsBridge> {
  const dir = mkdtempSync(join(tmpdir(), "kvmi-clients-"));
  const kvmiSocket = join(dir, "kvmi.sock");
  const config = loadConfigOrThrow({
    argv: ["--kvmi-listen", `unix:${kvmiSocket}`, "--grpc-listen", "127.0.0.1:0", "--metrics-listen", "off", ...(options.bridgeArgs ?? [])],
    env: {},
    cwd: REPO_ROOT,
  });
  let bridge: Bridge;
  try {
    bridge = await startBridge({ config, logger: silentLogger });
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  const client = connect({ target: bridge.grpcTarget, timeoutMs: 10_000, ...(options.tls && { tls: options.tls }) });
  const vms = options.vms.map((vm) => createEmulatedVm({ kind: "unix", path: kvmiSocket }, { reconnectMs: 100, ...vm }));
  for (const vm of vms) vm.start();
  const stop = async (): Promise<void> => {
    client.close();
    await Promise.all(vms.map((vm) => vm.stop().catch(() => undefined)));
    await bridge.stop();
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await waitFor(
      "the VMs to be hooked",
      async () => {
        const listed = await client.listVms({ timeoutMs: 2000 });
        const ready = vms.every((vm) => listed.some((v) => v.uuid === vm.uuid && v.state === State.HOOKED && v.vcpuCount > 0));
        return ready ? true : undefined;
      },
      10_000,
    );
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    target: bridge.grpcTarget,
    kvmiSocket,
    vms,
    client,
    waitForVm: async (uuid, predicate, timeoutMs = 10_000) => {
      await waitFor(`VM ${uuid}`, async () => (predicate(await client.getVm(uuid, { timeoutMs: 2000 })) ? true : undefined), timeoutMs);
    },
    stop,
  };
}

/** The result of running a command. */
export interface RunResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * Runs kvmictl in this process (its `main()`, not a child process) and collects what it prints.
 * @param args - the command line after `kvmictl`, e.g. `["--target", bridge.target, "vms", "list"]`.
 */
export async function runKvmictl(args: readonly string[], signal: AbortSignal = new AbortController().signal): Promise<RunResult & { readonly code: number }> {
  let stdout = "";
  let stderr = "";
  const code = await kvmictlMain([...args], {
    stdout: (t) => (stdout += t),
    stderr: (t) => (stderr += t),
    stderrIsTTY: false,
    signal,
    env: {},
  });
  return { code, stdout, stderr };
}

/** `node` arguments that run a TypeScript file (the examples) through tsx. */
export function tsxArgs(file: string): string[] {
  return ["--import", "tsx", join(REPO_ROOT, file)];
}

/** Runs `node ...args` and collects its output (kills it after `timeoutMs`). */
export function runNode(args: readonly string[], options: { readonly timeoutMs?: number; readonly env?: NodeJS.ProcessEnv } = {}): Promise<RunResult> {
  return new Promise((resolvePromise) => {
    const child = spawn(process.execPath, [...args], { cwd: REPO_ROOT, stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...options.env } });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), options.timeoutMs ?? 20_000);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolvePromise({ code, stdout, stderr });
    });
  });
}

/** A child process whose output the test reads while it runs (for long-running commands). */
export interface LiveProcess {
  readonly child: ChildProcess;
  stdout(): string;
  stderr(): string;
  /** Resolves when stdout or stderr matches `pattern`. */
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<RegExpExecArray>;
  /** Resolves with the result when the process exits. */
  exited: Promise<RunResult>;
}

/** Starts `node ...args` and lets the test interact with it. */
export function startNode(args: readonly string[]): LiveProcess {
  const child = spawn(process.execPath, [...args], { cwd: REPO_ROOT, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  child.stdout!.on("data", (d: Buffer) => (out += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (err += d.toString()));
  const exited = new Promise<RunResult>((r) => child.on("close", (code) => r({ code, stdout: out, stderr: err })));
  // A test that fails before the process ends must not leave it running.
  const reap = (): void => void child.kill("SIGKILL");
  process.once("exit", reap);
  void exited.then(() => process.removeListener("exit", reap));
  return {
    child,
    stdout: () => out,
    stderr: () => err,
    exited,
    waitFor: (pattern, timeoutMs = 15_000) =>
      waitFor(
        `${pattern} in the output of ${args.join(" ")}`,
        async () => {
          const m = pattern.exec(out) ?? pattern.exec(err);
          if (m) return m;
          if (child.exitCode !== null) throw new FatalWaitError(`${args.join(" ")} exited with ${child.exitCode}: ${out}\n${err}`);
          return undefined;
        },
        timeoutMs,
      ),
  };
}

/** PEM files of a throw-away mTLS setup. */
export interface ThrowAwayPki {
  readonly dir: string;
  readonly caCert: string;
  readonly serverCert: string;
  readonly serverKey: string;
  readonly clientCert: string;
  readonly clientKey: string;
  dispose(): void;
}

/**
 * TEST-ONLY: a CA, a server certificate for localhost/127.0.0.1 and a client certificate, made with
 * the openssl CLI in a temporary directory (nothing checked in). Fails with a message if openssl is missing.
 */
export function createThrowAwayPki(): ThrowAwayPki {
  try {
    execFileSync("openssl", ["version"], { stdio: "ignore" });
  } catch {
    throw new Error("the TLS test needs the openssl CLI to generate throw-away certificates: install openssl and re-run");
  }
  const dir = mkdtempSync(join(tmpdir(), "kvmi-clients-pki-"));
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  const run = (args: string[]): void => void execFileSync("openssl", args, { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
  run(["req", "-x509", ...ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=kvmi clients test CA (throw-away)",
    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
  const issue = (name: string, subject: string, extensions: string, serial: string): void => {
    writeFileSync(join(dir, `${name}.ext`), extensions);
    run(["req", "-new", ...ec, "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", subject]);
    run(["x509", "-req", "-in", `${name}.csr`, "-CA", "ca.crt", "-CAkey", "ca.key", "-set_serial", serial, "-days", "1", "-out", `${name}.crt`, "-extfile", `${name}.ext`]);
  };
  issue("server", "/CN=localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n", "2001");
  issue("client", "/CN=kvmi clients test", "extendedKeyUsage=clientAuth\n", "2002");
  const file = (name: string): string => join(dir, name);
  return {
    dir,
    caCert: file("ca.crt"),
    serverCert: file("server.crt"),
    serverKey: file("server.key"),
    clientCert: file("client.crt"),
    clientKey: file("client.key"),
    dispose: () => rmSync(dir, { recursive: true, force: true }),
  };
}
