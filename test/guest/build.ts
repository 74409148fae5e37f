// SPDX-License-Identifier: Apache-2.0
/**
 * Builds the test guest from Debian's packages (test/guest/README.md): the kernel of
 * `linux-image-amd64` (/boot/vmlinuz-*), an initramfs of `busybox-static` plus the known workload
 * (workload.c, init.sh), and the kernel's symbol table copied out of one boot (/proc/kallsyms over
 * the second serial port; the guest boots with `nokaslr`, so those addresses hold on every boot).
 *
 * Everything lands in a content-addressed cache directory (test/guest/.cache/<hash>/, git-ignored;
 * `KVMI_GUEST_CACHE` moves it): the hash covers the kernel, busybox and this directory's sources,
 * so a rebuild happens only when one of them changes. `npx tsx test/guest/build.ts` prints the paths.
 */
import { spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import { buildLinuxProfile, stringifyIsf } from "@kvmi/clients";
import { writeNewc, type NewcEntry } from "./newc.js";

const HERE = dirname(fileURLToPath(import.meta.url));
/** Kernel command line of every boot: serial console, fixed addresses, quiet, no reboot loop. */
export const GUEST_CMDLINE = "console=ttyS0 nokaslr quiet panic=-1 rdinit=/init cryptomgr.notests nowatchdog mitigations=off rcupdate.rcu_cpu_stall_suppress=1";
/** Busybox applets init.sh uses. */
const APPLETS = ["sh", "mount", "grep", "cat", "poweroff", "stty", "ps", "sleep"];
/** The workload's roles: one binary under three names (workload.c). */
export const WORKLOAD_PROCESSES = ["kvmi-ticker", "kvmi-marker", "kvmi-idle"] as const;
/** The syscall kvmi-ticker calls in a loop, and its kernel function. */
export const TICKER_SYSCALL = { name: "getppid", nr: 110, kernelFunction: "__x64_sys_getppid" } as const;
/** Where kvmi-marker keeps its buffer, and what it holds at start. */
export const MARKER = { gva: 0x10000000n, text: "KVMI-MARKER-0123456789abcdef" } as const;

/** The built guest. */
export interface GuestImage {
  readonly dir: string;
  readonly kernel: string;
  readonly initrd: string;
  /** /proc/kallsyms of this kernel booted with `nokaslr`. */
  readonly kallsyms: string;
  /** The kernel's profile (ISF JSON, gzip): its BTF layouts and the kallsyms above. */
  readonly profile: string;
  readonly cmdline: string;
  readonly kernelRelease: string;
}

export interface BuildOptions {
  readonly cacheRoot?: string;
  readonly kernel?: string;
  readonly busybox?: string;
  readonly log?: (line: string) => void;
}

/** The newest /boot/vmlinuz-* (what linux-image-amd64 installed). */
export function findDebianKernel(): string {
  const fromEnv = process.env.KVMI_GUEST_KERNEL;
  if (fromEnv) return fromEnv;
  const kernels = existsSync("/boot") ? readdirSync("/boot").filter((name) => name.startsWith("vmlinuz-")) : [];
  if (kernels.length === 0) throw new Error("no /boot/vmlinuz-*: install Debian's linux-image-amd64 (test/setup/prepare.sh does)");
  kernels.sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
  return join("/boot", kernels[kernels.length - 1]!);
}

function requireTool(command: string, pkg: string): void {
  if (spawnSync("sh", ["-c", `command -v ${command}`]).status !== 0) {
    throw new Error(`the test guest needs \`${command}\`: install Debian's ${pkg} (test/setup/prepare.sh does)`);
  }
}

/** Returns the cached guest for this kernel and these sources, building it first if needed. */
export async function ensureGuestImage(options: BuildOptions = {}): Promise<GuestImage> {
  const log = options.log ?? (() => {});
  const kernel = options.kernel ?? findDebianKernel();
  const busybox = options.busybox ?? "/bin/busybox";
  if (!existsSync(busybox)) throw new Error(`no ${busybox}: install Debian's busybox-static (test/setup/prepare.sh does)`);
  const sources = ["workload.c", "init.sh", "newc.ts"].map((name) => readFileSync(join(HERE, name)));
  const hash = createHash("sha256");
  for (const part of [readFileSync(kernel), readFileSync(busybox), ...sources, GUEST_CMDLINE, APPLETS.join(",")]) hash.update(part);
  const dir = join(options.cacheRoot ?? process.env.KVMI_GUEST_CACHE ?? join(HERE, ".cache"), hash.digest("hex").slice(0, 16));
  const kernelRelease = kernel.replace(/^.*vmlinuz-/, "");
  const image: GuestImage = {
    dir,
    kernel: join(dir, "vmlinuz"),
    initrd: join(dir, "initrd.cpio.gz"),
    kallsyms: join(dir, "kallsyms"),
    profile: join(dir, `linux-profile-${profileSourcesHash()}.json.gz`),
    cmdline: GUEST_CMDLINE,
    kernelRelease,
  };
  if (existsSync(join(dir, "complete"))) {
    if (!existsSync(image.profile)) writeProfile(image, log);
    return image;
  }

  requireTool("gcc", "gcc and libc6-dev");
  requireTool("qemu-system-x86_64", "qemu-system-x86");
  log(`building the test guest in ${dir}`);
  const work = mkdtempSync(join(tmpdir(), "kvmi-guest-"));
  try {
    const workload = join(work, "workload");
    const cc = spawnSync("gcc", ["-static", "-O2", "-o", workload, join(HERE, "workload.c")], { encoding: "utf8" });
    if (cc.status !== 0) throw new Error(`gcc -static failed (is libc6-dev installed?):\n${cc.stderr}`);
    const workloadBytes = readFileSync(workload);
    const entries: NewcEntry[] = [
      ...["bin", "dev", "proc", "sys", "tmp"].map((path): NewcEntry => ({ kind: "dir", path })),
      { kind: "chardev", path: "dev/console", major: 5, minor: 1 },
      { kind: "file", path: "bin/busybox", data: readFileSync(busybox), mode: 0o755 },
      ...APPLETS.map((applet): NewcEntry => ({ kind: "symlink", path: `bin/${applet}`, target: "busybox" })),
      ...WORKLOAD_PROCESSES.map((name): NewcEntry => ({ kind: "file", path: `bin/${name}`, data: workloadBytes, mode: 0o755 })),
      { kind: "file", path: "init", data: readFileSync(join(HERE, "init.sh")), mode: 0o755 },
    ];
    const staging = `${dir}.partial-${process.pid}`;
    mkdirSync(staging, { recursive: true });
    writeFileSync(join(staging, "initrd.cpio.gz"), gzipSync(writeNewc(entries)));
    writeFileSync(join(staging, "vmlinuz"), readFileSync(kernel));
    log("booting once to copy /proc/kallsyms out of the guest");
    await dumpKallsyms(join(staging, "vmlinuz"), join(staging, "initrd.cpio.gz"), join(staging, "kallsyms"));
    writeFileSync(join(staging, "complete"), `${new Date().toISOString()}\n`);
    rmSync(dir, { recursive: true, force: true });
    renameSync(staging, dir);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  writeProfile(image, log);
  return image;
}

/** The profile is derived from the cached kernel and kallsyms, keyed by the profile code's own hash. */
function profileSourcesHash(): string {
  const hash = createHash("sha256");
  for (const name of ["btf.ts", "build-linux.ts", "profile.ts"]) hash.update(readFileSync(join(HERE, "../../clients/sdk/profile", name)));
  return hash.digest("hex").slice(0, 12);
}

function writeProfile(image: GuestImage, log: (line: string) => void): void {
  log("building the kernel's profile from its BTF and kallsyms");
  const profile = buildLinuxProfile({ kernelImage: readFileSync(image.kernel), symbols: readFileSync(image.kallsyms, "latin1"), kernelRelease: image.kernelRelease });
  const partial = `${image.profile}.partial-${process.pid}`;
  writeFileSync(partial, gzipSync(stringifyIsf(profile)));
  renameSync(partial, image.profile);
}

/** Boots the guest in dump mode; its init writes /proc/kallsyms to ttyS1 (a file) and powers off. */
async function dumpKallsyms(kernel: string, initrd: string, out: string): Promise<void> {
  const args = [
    "-accel", "tcg", "-m", "512", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
    "-kernel", kernel, "-initrd", initrd, "-append", `${GUEST_CMDLINE} kvmi.dump=kallsyms`,
    "-serial", "stdio", "-serial", `file:${out}`,
  ];
  const child = spawn("qemu-system-x86_64", args, { stdio: ["ignore", "pipe", "pipe"] });
  let console = "";
  child.stdout.on("data", (chunk: Buffer) => (console = (console + chunk.toString("latin1")).slice(-4096)));
  child.stderr.on("data", (chunk: Buffer) => (console = (console + chunk.toString("latin1")).slice(-4096)));
  const timer = setTimeout(() => child.kill("SIGKILL"), 180_000);
  const code = await new Promise<number | null>((resolve) => child.on("exit", resolve));
  clearTimeout(timer);
  if (!console.includes("KVMI-DUMP-DONE") || !existsSync(out)) {
    throw new Error(`the kallsyms boot did not finish (exit ${code}); console tail:\n${console}`);
  }
  const lines = readFileSync(out, "latin1").split(/\r?\n/).filter((line) => /^[0-9a-f]{16} /.test(line));
  if (lines.length < 1000 || lines.every((line) => line.startsWith("0000000000000000"))) {
    throw new Error("the guest's /proc/kallsyms has no addresses (kptr_restrict?)");
  }
  writeFileSync(out, lines.join("\n") + "\n");
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const started = Date.now();
  const image = await ensureGuestImage({ log: (line) => process.stderr.write(`[guest] ${line}\n`) });
  process.stdout.write(`${JSON.stringify({ ...image, seconds: (Date.now() - started) / 1000 }, null, 2)}\n`);
}
