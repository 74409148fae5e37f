// SPDX-License-Identifier: Apache-2.0
/**
 * What every kvmictl command gets: the connected SDK client, output functions, `--json`, and the
 * AbortSignal that SIGINT/SIGTERM fire.
 */
import { readFileSync } from "node:fs";
import { connect, CancelledError } from "@kvmi/clients";
import type { BridgeClient, TlsOptions, Vm } from "@kvmi/clients";
import { parseIndex, UsageError } from "./args.js";

/** The process surroundings kvmictl runs in (injected, so tests can run it in-process). */
export interface CliIo {
  readonly stdout: (text: string) => void;
  readonly stderr: (text: string) => void;
  /** Whether stderr is a terminal (progress bars only then). */
  readonly stderrIsTTY: boolean;
  /** Fires on SIGINT/SIGTERM: long-running commands clean up and exit 0. */
  readonly signal: AbortSignal;
  readonly env: Readonly<Record<string, string | undefined>>;
}

/** The global options. */
export interface GlobalOptions {
  readonly target: string;
  readonly tlsCa?: string;
  readonly tlsCert?: string;
  readonly tlsKey?: string;
  readonly tlsServerName?: string;
  /** File holding a bearer JWT (e.g. a projected ServiceAccount token), read on every call. */
  readonly tokenFile?: string;
  readonly timeout: string;
  readonly json?: boolean;
}

/** A command's context. */
export interface CliContext {
  readonly io: CliIo;
  readonly client: BridgeClient;
  readonly json: boolean;
  /** Writes a line to stdout. */
  out(line: string): void;
  /** Writes a line to stderr. */
  err(line: string): void;
  /** Resolves a VM argument (UUID, `vms/UUID` or display name). */
  resolveVm(ref: string): Promise<Vm>;
}

function readPem(file: string | undefined, what: string): Buffer | undefined {
  if (file === undefined) return undefined;
  try {
    return readFileSync(file);
  } catch (err) {
    throw new UsageError(`${what}: cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
}

/** Builds the context from the global options. */
export function createContext(options: GlobalOptions, io: CliIo): CliContext {
  const tlsGiven = options.tlsCa !== undefined || options.tlsCert !== undefined || options.tlsKey !== undefined || options.tlsServerName !== undefined;
  if ((options.tlsCert === undefined) !== (options.tlsKey === undefined)) throw new UsageError("--tls-cert and --tls-key go together");
  const ca = readPem(options.tlsCa, "--tls-ca");
  const cert = readPem(options.tlsCert, "--tls-cert");
  const key = readPem(options.tlsKey, "--tls-key");
  const tls: TlsOptions | undefined = tlsGiven
    ? { ...(ca && { ca }), ...(cert && { cert }), ...(key && { key }), ...(options.tlsServerName !== undefined && { serverName: options.tlsServerName }) }
    : undefined;
  const tokenFile = options.tokenFile;
  if (tokenFile !== undefined) readPem(tokenFile, "--token-file"); // a missing file is a usage error now, not on the first call
  const client = connect({
    target: options.target,
    ...(tls && { tls }),
    // Projected tokens rotate on disk: read the file for each call.
    ...(tokenFile !== undefined && { bearerToken: () => readFileSync(tokenFile, "utf8").trim() }),
    timeoutMs: parseIndex(options.timeout, "--timeout"),
  });
  return {
    io,
    client,
    json: options.json === true,
    out: (line) => io.stdout(`${line}\n`),
    err: (line) => io.stderr(`${line}\n`),
    resolveVm: (ref) => client.resolveVm(ref),
  };
}

/** Waits `ms` (or forever when undefined) unless `signal` fires first. */
export function waitOrAbort(ms: number | undefined, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = ms === undefined ? undefined : setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}

/** Runs `body`; a CancelledError caused by `signal` (Ctrl-C) counts as a normal end. */
export async function untilAborted(signal: AbortSignal, body: () => Promise<void>): Promise<void> {
  try {
    await body();
  } catch (err) {
    if (signal.aborted && err instanceof CancelledError) return;
    throw err;
  }
}
