// SPDX-License-Identifier: Apache-2.0
/**
 * `kvmi-qemu`: presents a running QEMU VM to a KVMI tool (docs/qemu-backend.md).
 *
 *   kvmi-qemu --gdb unix:PATH|tcp:HOST:PORT --qmp unix:PATH --connect unix:BRIDGE_SOCKET [--name N] [--dialect v9|v12|kvmi-v7]
 *   kvmi-qemu run --kernel K --initrd I [--append CMDLINE] [--snapshot S] --connect unix:BRIDGE_SOCKET
 *
 * `run` starts QEMU itself (TCG, direct kernel boot, serial console on stdout) and attaches to it.
 * SIGUSR1 runs the unhook flow (the tool gets UNHOOK and leaves), SIGINT/SIGTERM detach and exit.
 */
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { parseEndpoint } from "../emulator/device-manager.js";
import { createJsonLinesLogger, parseLogLevel } from "../emulator/json-logger.js";
import { KNOWN_DIALECT_NAMES, KNOWN_DIALECTS } from "../wire/dialects/known.js";
import { attachQemu, type QemuBackend } from "./backend.js";
import { parseSocketEndpoint } from "./endpoint.js";
import { launchQemu, type QemuProcess } from "./qemu-process.js";

const USAGE = `usage:
  kvmi-qemu --gdb unix:PATH|tcp:HOST:PORT --qmp unix:PATH --connect unix:PATH|tcp:HOST:PORT [--name NAME] [--dialect v9|v12|kvmi-v7] [--secret-file F]
  kvmi-qemu run --kernel FILE --initrd FILE [--append CMDLINE] [--memory-mib N] [--vcpus N] [--snapshot FILE] --connect ... [--name NAME] [--dialect ...]`;

export async function main(argv: readonly string[]): Promise<number> {
  const runMode = argv[0] === "run";
  let values: Record<string, string | boolean | undefined>;
  try {
    values = parseArgs({
      args: runMode ? argv.slice(1) : [...argv],
      options: {
        gdb: { type: "string" }, qmp: { type: "string" }, connect: { type: "string" }, name: { type: "string" },
        dialect: { type: "string", default: "v9" }, "secret-file": { type: "string" }, "log-level": { type: "string", default: "info" },
        kernel: { type: "string" }, initrd: { type: "string" }, append: { type: "string" }, "memory-mib": { type: "string" },
        vcpus: { type: "string" }, snapshot: { type: "string" }, help: { type: "boolean" },
      },
      strict: true,
    }).values;
  } catch (error) {
    process.stderr.write(`${(error as Error).message}\n${USAGE}\n`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const connect = typeof values.connect === "string" ? parseEndpoint(values.connect) : undefined;
  const needs = runMode ? ["kernel", "initrd"] : ["gdb", "qmp"];
  const missing = needs.filter((key) => typeof values[key] !== "string");
  const dialect = KNOWN_DIALECTS.find((d) => d.name === values.dialect);
  if (!connect || missing.length > 0 || !dialect) {
    const problems = [
      ...(connect ? [] : ["--connect unix:PATH|tcp:HOST:PORT is required"]),
      ...missing.map((m) => `--${m} is required`),
      ...(dialect ? [] : [`--dialect must be one of ${KNOWN_DIALECT_NAMES.join(", ")}, got "${String(values.dialect)}"`]),
    ];
    process.stderr.write(`${problems.join("\n")}\n${USAGE}\n`);
    return 2;
  }
  const logger = createJsonLinesLogger(process.stderr, parseLogLevel(String(values["log-level"])), { component: "kvmi-qemu" });
  let qemu: QemuProcess | undefined;
  let backend: QemuBackend | undefined;
  try {
    if (runMode) {
      qemu = await launchQemu({
        kernel: String(values.kernel),
        initrd: String(values.initrd),
        append: typeof values.append === "string" ? values.append : "console=ttyS0 nokaslr quiet panic=-1 rdinit=/init",
        memoryMib: values["memory-mib"] ? Number(values["memory-mib"]) : undefined,
        vcpus: values.vcpus ? Number(values.vcpus) : undefined,
        name: typeof values.name === "string" ? values.name : undefined,
        snapshot: typeof values.snapshot === "string" ? values.snapshot : undefined,
      });
      qemu.child.stdout!.on("data", (chunk: string) => process.stdout.write(chunk));
      process.stdin.on("data", (chunk) => qemu!.child.stdin!.write(chunk));
    }
    backend = await attachQemu({
      gdb: qemu ? { kind: "unix", path: qemu.gdbSocket } : parseSocketEndpoint(String(values.gdb)),
      qmp: qemu ? { kind: "unix", path: qemu.qmpSocket } : parseSocketEndpoint(String(values.qmp)),
      connect,
      dialect,
      name: typeof values.name === "string" ? values.name : undefined,
      secret: typeof values["secret-file"] === "string" ? new Uint8Array(readFileSync(values["secret-file"])) : undefined,
      logger,
    });
  } catch (error) {
    process.stderr.write(`kvmi-qemu: ${(error as Error).message}\n`);
    await qemu?.stop();
    return 1;
  }
  const done = new Promise<void>((resolve) => {
    process.once("SIGINT", resolve);
    process.once("SIGTERM", resolve);
    qemu?.exited.then(() => resolve());
  });
  process.on("SIGUSR1", () => void backend!.unhook().then((outcome) => logger.info({ ...outcome }, "unhook on request")));
  await done;
  await backend.close().catch(() => undefined);
  await qemu?.stop();
  return 0;
}
