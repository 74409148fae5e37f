// SPDX-License-Identifier: Apache-2.0
/**
 * `kvmi-relay --target HOST:PORT --vm NAME|UUID --tool unix:PATH [--dialect kvmi-v7|v9|v12]`
 * (docs/decisions/0100-kvmi-relay.md, README "Use your existing LibVMI/libkvmi tool"). Exit codes:
 * 0 the tool closed its socket, 1 the relay failed or the session ended, 2 a usage mistake.
 */
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { connect } from "@kvmi/clients";
import type { TlsOptions } from "@kvmi/clients";
import { dialectByName, KNOWN_DIALECT_NAMES } from "@kvmi/kvm-bridge/codec";
import { runRelay } from "./relay.js";
import type { RelayLogger } from "./relay.js";

export interface MainIo {
  readonly stderr: (text: string) => void;
  readonly signal?: AbortSignal;
  readonly env?: NodeJS.ProcessEnv;
}

const USAGE = `usage: kvmi-relay --target HOST:PORT|unix:/path --vm NAME|UUID --tool unix:PATH
  [--dialect kvmi-v7|v9|v12] [--observer] [--secret-file FILE] [--reconnect]
  [--event-deadline-ms N] [--tls-ca FILE] [--tls-cert FILE --tls-key FILE] [--tls-server-name NAME]
`;

/** Runs the relay for one tool connection; resolves with the exit code. */
export async function main(argv: readonly string[], io: MainIo): Promise<number> {
  let values;
  try {
    values = parseArgs({
      args: [...argv],
      options: {
        target: { type: "string" },
        vm: { type: "string" },
        tool: { type: "string" },
        dialect: { type: "string", default: "kvmi-v7" },
        observer: { type: "boolean", default: false },
        "secret-file": { type: "string" },
        reconnect: { type: "boolean", default: false },
        "event-deadline-ms": { type: "string" },
        "tls-ca": { type: "string" },
        "tls-cert": { type: "string" },
        "tls-key": { type: "string" },
        "tls-server-name": { type: "string" },
        help: { type: "boolean", default: false },
      },
      strict: true,
    }).values;
  } catch (error) {
    io.stderr(`kvmi-relay: ${(error as Error).message}\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    io.stderr(USAGE);
    return 0;
  }
  const usage = (message: string): number => {
    io.stderr(`kvmi-relay: ${message}\n${USAGE}`);
    return 2;
  };
  const target = values.target ?? io.env?.["KVMI_BRIDGE_TARGET"] ?? "127.0.0.1:50051";
  if (values.vm === undefined) return usage("--vm is required");
  if (values.tool === undefined || !values.tool.startsWith("unix:")) return usage("--tool unix:PATH is required");
  let dialect;
  try {
    dialect = dialectByName(values.dialect);
  } catch {
    return usage(`--dialect must be one of ${KNOWN_DIALECT_NAMES.join(", ")}`);
  }
  if ((values["tls-cert"] === undefined) !== (values["tls-key"] === undefined)) return usage("--tls-cert and --tls-key go together");
  let eventDeadlineMs: number | undefined;
  if (values["event-deadline-ms"] !== undefined) {
    eventDeadlineMs = Number(values["event-deadline-ms"]);
    if (!Number.isSafeInteger(eventDeadlineMs) || eventDeadlineMs <= 0) return usage("--event-deadline-ms must be a positive integer");
  }
  let tls: TlsOptions | undefined;
  let secret: Uint8Array | undefined;
  try {
    const pem = (file: string | undefined) => (file === undefined ? undefined : readFileSync(file, "utf8"));
    if (values["tls-ca"] !== undefined || values["tls-cert"] !== undefined || values["tls-server-name"] !== undefined) {
      tls = {
        ...(values["tls-ca"] !== undefined && { ca: pem(values["tls-ca"])! }),
        ...(values["tls-cert"] !== undefined && { cert: pem(values["tls-cert"])!, key: pem(values["tls-key"])! }),
        ...(values["tls-server-name"] !== undefined && { serverName: values["tls-server-name"] }),
      };
    }
    if (values["secret-file"] !== undefined) secret = new Uint8Array(readFileSync(values["secret-file"]));
  } catch (error) {
    return usage((error as Error).message);
  }
  const log: RelayLogger = {
    info: (message, fields) => io.stderr(`kvmi-relay: ${message}${fields ? " " + JSON.stringify(fields, bigintJson) : ""}\n`),
    warn: (message, fields) => io.stderr(`kvmi-relay: warning: ${message}${fields ? " " + JSON.stringify(fields, bigintJson) : ""}\n`),
  };
  const client = connect({ target, ...(tls && { tls }) });
  try {
    const result = await runRelay({
      client,
      vm: values.vm,
      toolPath: values.tool.slice("unix:".length),
      dialect,
      role: values.observer ? "observer" : "controller",
      ...(secret && { secret }),
      ...(eventDeadlineMs !== undefined && { eventDeadlineMs }),
      reconnect: values.reconnect,
      log,
      ...(io.signal && { signal: io.signal }),
    });
    return result.end === "tool-closed" || result.end === "aborted" ? 0 : 1;
  } catch (error) {
    io.stderr(`kvmi-relay: ${(error as Error).message}\n`);
    return 1;
  } finally {
    client.close();
  }
}

function bigintJson(_key: string, value: unknown): unknown {
  return typeof value === "bigint" ? `0x${value.toString(16)}` : value;
}
