// SPDX-License-Identifier: Apache-2.0
/**
 * `kvmi-sim`: runs emulated VMs (QEMU + a KVMI kernel side of any dialect + the built-in workload) against any
 * KVMI tool until interrupted, logging JSON lines. `--pause-after`, `--migrate-after` and
 * `--shutdown-after` run the device manager's unhook flow (kvmi-abi §2.6) on every VM.
 */
import { KNOWN_DIALECT_NAMES, KNOWN_DIALECTS } from "../wire/dialects/known.js";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import type { HandshakeVariant } from "../wire/handshake.js";
import { parseEndpoint } from "./device-manager.js";
import type { VmAction } from "./device-manager.js";
import { createJsonLinesLogger, parseLogLevel } from "./json-logger.js";
import { GuestModelError } from "./guest/errors.js";
import { createSimulator } from "./simulator.js";
import type { Simulator } from "./simulator.js";

const HELP = `Usage: kvmi-sim --connect unix:PATH|tcp:HOST:PORT [options]

Runs emulated VMs that connect to a KVMI tool the way QEMU does, until interrupted.

Options:
  --connect ENDPOINT        where the tool listens: unix:PATH or tcp:HOST:PORT (required)
  --vms N                   number of VMs (default 1)
  --vcpus N                 vCPUs per VM (default 2)
  --memory-mib N            guest RAM per VM in MiB (default 64)
  --secret-file FILE        shared secret; QEMU checks SHA-1(secret) against the tool's cookie
  --dialect NAME            KVMI dialect of the emulated kernel: v9 | v12 | kvmi-v7 (default v9);
                            kvmi-v7 is what libkvmi and LibVMI speak
  --handshake VARIANT       base | max-gpa | e820 (default base)
  --reconnect-ms N          delay between connection attempts, like reconnect=N (default 1000)
  --unhook-timeout-ms N     how long to wait for the tool after UNHOOK (default 60000)
  --pause-after SECONDS     pause every VM (through PREUNHOOK/UNHOOK) after SECONDS
  --migrate-after SECONDS   migrate every VM away after SECONDS, then exit
  --shutdown-after SECONDS  shut every VM down after SECONDS, then exit
  --seed N                  seed of the first VM's workload (default 1)
  --uuid UUID               the first VM's UUID, as QEMU's -uuid (default random)
  --no-workload             do not run the built-in workload
  --log-level LEVEL         trace | debug | info | warn | error (default info)
  --help                    print this help
  --version, -V             print the version
`;

/** An integer flag of at least `min` (0 or 1); every bad value is reported, not just the first. */
function intFlag(name: string, value: string | undefined, fallback: number, min: 0 | 1, errors: string[]): number {
  if (value === undefined) return fallback;
  const n = value.trim() === "" ? Number.NaN : Number(value);
  if (!Number.isInteger(n) || n < min) {
    errors.push(`--${name} must be a ${min === 0 ? "non-negative" : "positive"} integer, got "${value}"`);
  }
  return n;
}

/** Runs the CLI; resolves with the process exit code. */
export async function main(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      options: {
        connect: { type: "string" },
        vms: { type: "string" },
        vcpus: { type: "string" },
        "memory-mib": { type: "string" },
        "secret-file": { type: "string" },
        dialect: { type: "string" },
        handshake: { type: "string" },
        "reconnect-ms": { type: "string" },
        "unhook-timeout-ms": { type: "string" },
        "pause-after": { type: "string" },
        "migrate-after": { type: "string" },
        "shutdown-after": { type: "string" },
        seed: { type: "string" },
        uuid: { type: "string" },
        "no-workload": { type: "boolean" },
        "log-level": { type: "string" },
        help: { type: "boolean" },
        version: { type: "boolean", short: "V" },
      },
    }).values;
  } catch (err) {
    process.stderr.write(`kvmi-sim: ${(err as Error).message}\n\n${HELP}`);
    return 2;
  }
  if (parsed.help === true) {
    process.stdout.write(HELP);
    return 0;
  }
  if (parsed.version === true) {
    const { version } = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version: string };
    process.stdout.write(`kvmi-sim ${version}\n`);
    return 0;
  }
  const errors: string[] = [];
  const endpoint = parsed.connect === undefined ? undefined : parseEndpoint(parsed.connect);
  if (endpoint === undefined) errors.push(`--connect must be unix:PATH or tcp:HOST:PORT, got "${parsed.connect ?? ""}"`);
  const dialect = KNOWN_DIALECTS.find((d) => d.name === (parsed.dialect ?? "v9"));
  if (dialect === undefined) errors.push(`--dialect must be one of ${KNOWN_DIALECT_NAMES.join(", ")}, got "${parsed.dialect ?? ""}"`);
  const handshake = parsed.handshake ?? "base";
  if (!["base", "max-gpa", "e820"].includes(handshake)) errors.push(`--handshake must be base, max-gpa or e820`);
  const level = parseLogLevel(parsed["log-level"] ?? "info");
  if (level === undefined) errors.push(`--log-level must be trace, debug, info, warn or error`);
  let secret: Uint8Array | undefined;
  if (parsed["secret-file"] !== undefined) {
    try {
      secret = new Uint8Array(readFileSync(parsed["secret-file"]));
    } catch (err) {
      errors.push(`--secret-file: ${(err as Error).message}`);
    }
  }
  // Zero VMs or vCPUs is no VM at all, and QEMU refuses reconnect=0 (kvmi-abi §2.1).
  const vms = intFlag("vms", parsed.vms, 1, 1, errors);
  const vcpus = intFlag("vcpus", parsed.vcpus, 2, 1, errors);
  const memoryMiB = intFlag("memory-mib", parsed["memory-mib"], 64, 1, errors);
  const reconnectMs = intFlag("reconnect-ms", parsed["reconnect-ms"], 1000, 1, errors);
  const unhookTimeoutMs = intFlag("unhook-timeout-ms", parsed["unhook-timeout-ms"], 60_000, 0, errors);
  const seed = intFlag("seed", parsed.seed, 1, 0, errors);
  const uuid = parsed.uuid?.toLowerCase();
  if (uuid !== undefined && !/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(uuid)) errors.push(`--uuid must be a UUID, got "${parsed.uuid}"`);
  const actions: Array<[VmAction, number]> = [];
  for (const action of ["pause", "migrate", "shutdown"] as const) {
    const value = parsed[`${action}-after`];
    if (value === undefined) continue;
    const seconds = value.trim() === "" ? Number.NaN : Number(value);
    if (!Number.isFinite(seconds) || seconds < 0) errors.push(`--${action}-after must be a number of seconds`);
    else actions.push([action, seconds]);
  }
  if (errors.length > 0) {
    process.stderr.write(errors.map((e) => `kvmi-sim: ${e}\n`).join("") + "\nRun kvmi-sim --help for usage.\n");
    return 2;
  }

  const log = createJsonLinesLogger(process.stdout, level!);
  let simulator: Simulator;
  try {
    simulator = createSimulator({
      endpoint: endpoint!,
      vms,
      vcpus,
      memoryMiB,
      handshake: handshake as HandshakeVariant,
      dialect: dialect!,
      reconnectMs,
      unhookTimeoutMs,
      seed,
      ...(uuid !== undefined && { uuids: [uuid] }),
      workload: parsed["no-workload"] !== true,
      ...(secret && { secret }),
      logger: log,
    });
  } catch (err) {
    // The guest model validates what the flags cannot know (e.g. at most 64 vCPUs, 8 MiB with the workload).
    if (!(err instanceof GuestModelError)) throw err;
    process.stderr.write(`kvmi-sim: ${err.message}\n\nRun kvmi-sim --help for usage.\n`);
    return 2;
  }
  simulator.start();
  log.info({ vms: simulator.vms.map((vm) => ({ uuid: vm.uuid, name: vm.name })), connect: parsed.connect, dialect: dialect!.name }, "emulated VMs started");

  return new Promise<number>((resolve) => {
    const finish = async (code: number): Promise<void> => {
      await simulator.stop();
      resolve(code);
    };
    for (const signal of ["SIGINT", "SIGTERM"] as const) process.once(signal, () => void finish(0));
    for (const [action, seconds] of actions) {
      setTimeout(async () => {
        for (const outcome of await simulator.runAction(action)) log.info({ ...outcome }, `${action} outcome`);
        if (action !== "pause") await finish(0);
      }, seconds * 1000).unref();
    }
  });
}
