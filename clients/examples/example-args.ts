// SPDX-License-Identifier: Apache-2.0
/**
 * The command line every example shares: `--target`, `--vm` (UUID, vms/UUID or display name),
 * `--tls-ca/--tls-cert/--tls-key`, `--json`, plus each example's own options.
 */
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import type { ParseArgsConfig } from "node:util";
import { connect } from "@kvmi/clients";
import type { BridgeClient, Vm } from "@kvmi/clients";
import { guardPipe } from "../cli/closed-pipe.js";
import { connectionHint } from "../cli/hints.js";

const readerGone = new AbortController();
/**
 * The examples' stdout: once its reader goes away (`cr3-monitor --json | head`) output is dropped
 * and {@link stdoutClosed} fires, so a monitor ends as on Ctrl-C and releases its session.
 */
export const stdout = guardPipe(process.stdout, () => readerGone.abort());
/** Fires when the reader of stdout has gone. */
export const stdoutClosed: AbortSignal = readerGone.signal;

type Options = NonNullable<ParseArgsConfig["options"]>;

/** What an example starts with. */
export interface ExampleSetup<V> {
  readonly client: BridgeClient;
  readonly vm: Vm;
  readonly json: boolean;
  /** The example's own option values. */
  readonly values: V;
}

/** What setup() dialed, for the hint of a connection failure. */
let dialed: { target: string; tls: boolean } | undefined;

const COMMON: Options = {
  target: { type: "string", default: process.env["KVMI_BRIDGE_TARGET"] ?? "127.0.0.1:50051" },
  vm: { type: "string" },
  "tls-ca": { type: "string" },
  "tls-cert": { type: "string" },
  "tls-key": { type: "string" },
  json: { type: "boolean", default: false },
  help: { type: "boolean", default: false },
};

/** Parses the command line, connects and finds the VM; prints `usage` and exits 2 on a mistake. */
export async function setup<V extends Record<string, unknown>>(usage: string, own: Options = {}): Promise<ExampleSetup<V>> {
  let values: Record<string, unknown>;
  try {
    values = parseArgs({ options: { ...COMMON, ...own }, strict: true }).values;
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n${usage}\n`);
    process.exit(2);
  }
  if (values["help"] || typeof values["vm"] !== "string") {
    process.stderr.write(`${usage}\n`);
    process.exit(values["help"] ? 0 : 2);
  }
  const pem = (key: string): Buffer | undefined => (typeof values[key] === "string" ? readFileSync(values[key] as string) : undefined);
  const ca = pem("tls-ca");
  const cert = pem("tls-cert");
  const key = pem("tls-key");
  const client = connect({
    target: values["target"] as string,
    ...((ca ?? cert ?? key) !== undefined && { tls: { ...(ca && { ca }), ...(cert && { cert }), ...(key && { key }) } }),
  });
  dialed = { target: values["target"] as string, tls: (ca ?? cert ?? key) !== undefined };
  const vm = await client.resolveVm(values["vm"] as string);
  return { client, vm, json: values["json"] === true, values: values as V };
}

/**
 * An optional non-negative integer option (`--count 5`, `--duration 2000`); a mistake such as
 * `--count abc` or `--duration=-5` prints `usage` and exits 2 instead of being taken as NaN.
 */
export function integerOption(values: Record<string, unknown>, key: string, usage: string): number | undefined {
  const text = values[key];
  if (text === undefined) return undefined;
  if (typeof text !== "string" || !/^\d+$/.test(text.trim()) || !Number.isSafeInteger(Number(text))) {
    process.stderr.write(`--${key}: "${String(text)}" is not a non-negative integer\n${usage}\n`);
    process.exit(2);
  }
  return Number(text);
}

/** Prints a failure as one line (what a connection failure means, clients/cli/hints.ts) and sets exit code 1. */
export function fail(err: unknown): void {
  const hint = dialed === undefined ? undefined : connectionHint(err, dialed);
  process.stderr.write(`error: ${hint ?? (err instanceof Error ? err.message : String(err))}\n`);
  process.exitCode = 1;
}
