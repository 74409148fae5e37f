// SPDX-License-Identifier: Apache-2.0
/**
 * `npm run start:linux` (README "A real Linux guest"): the bridge with its emulated VMs, as
 * `npm start` runs it, plus one real Linux VM: Debian's kernel under QEMU (TCG), built by
 * build.ts and presented to the bridge by `kvmi-qemu run`. Prints the profile to use with kvmictl.
 * Ctrl-C stops QEMU (the tool gets UNHOOK first) and then the bridge.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { ensureGuestImage } from "./build.js";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "../..");
const say = (line: string) => process.stderr.write(`[start:linux] ${line}\n`);

const image = await ensureGuestImage({ log: say });
const bridge = spawn(process.execPath, [join(ROOT, "service/bin/kvmi-bridge.mjs"), "--embedded", ...process.argv.slice(2)], { stdio: ["ignore", "inherit", "pipe"] });
let banner = "";
const kvmiSocket = await new Promise<string>((resolve, reject) => {
  bridge.stderr!.on("data", (chunk: Buffer) => {
    process.stderr.write(chunk);
    banner += chunk.toString();
    const match = /KVMI socket\s*:\s*(unix:\S+|tcp:\S+)/.exec(banner);
    if (match) resolve(match[1]!);
  });
  bridge.once("exit", (code) => reject(new Error(`the bridge exited (${code}) before serving`)));
});
const grpc = /gRPC endpoint\s*:\s*(\S+)/.exec(banner)?.[1] ?? "127.0.0.1:50051";
const qemu: ChildProcess = spawn(
  process.execPath,
  [join(ROOT, "kvm-bridge/bin/kvmi-qemu.mjs"), "run", "--kernel", image.kernel, "--initrd", image.initrd, "--append", image.cmdline, "--connect", kvmiSocket, "--name", "linux-0", "--log-level", process.env["KVMI_QEMU_LOG_LEVEL"] ?? "warn"],
  { stdio: ["ignore", "pipe", "inherit"] },
);
say(`linux-0: Debian ${image.kernelRelease} under QEMU (TCG) is booting (its processes appear once it is up)`);
let console = "";
const onConsole = (chunk: Buffer) => {
  console += chunk.toString("latin1");
  if (!console.includes("KVMI-READY")) return;
  say("linux-0 is up: its workload runs (kvmi-ticker, kvmi-marker, kvmi-idle)");
  qemu.stdout!.off("data", onConsole);
  qemu.stdout!.resume();
};
qemu.stdout!.on("data", onConsole);
say(`try: npx kvmictl --target ${grpc} ps linux-0 --profile ${image.profile}`);

const stop = () => {
  qemu.kill("SIGTERM");
  qemu.once("exit", () => bridge.kill("SIGTERM"));
  if (qemu.exitCode !== null) bridge.kill("SIGTERM");
};
process.once("SIGINT", stop);
process.once("SIGTERM", stop);
bridge.once("exit", (code) => {
  qemu.kill("SIGTERM");
  process.exitCode = code ?? 0;
});
