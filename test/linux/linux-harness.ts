// SPDX-License-Identifier: Apache-2.0
/**
 * The linux project's shared setup (test/guest/README.md): the test guest booted once into a
 * migration snapshot kept in the guest cache, then restored (about a second) by each test file
 * instead of booting (8–10 s under TCG). A snapshot is taken after `KVMI-READY` plus a settling
 * pause, with the guest's own `ps` recorded beside it, so a restored guest's known state is checked.
 */
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { State } from "@kvmi/clients";
import { attachQemu, launchQemu, type QemuBackend, type QemuBackendOptions, type QemuProcess } from "@kvmi/kvm-bridge/qemu";
import type { GuestPsEntry, QemuLaunchOptions } from "@kvmi/kvm-bridge/qemu";
import { ensureGuestImage, type GuestImage } from "../guest/build.js";
import type { ClientsBridge } from "../support/clients-harness.js";

/** Memory and vCPUs of every test VM: a snapshot restores only into the same configuration. */
const VM_SHAPE = { memoryMib: 512, vcpus: 2 } as const;

/** A saved guest: the migration stream and the guest's own `ps` at the moment it was taken. */
export interface GuestSnapshot {
  readonly file: string;
  readonly ps: readonly GuestPsEntry[];
}

function qemuVersion(): string {
  const run = spawnSync("qemu-system-x86_64", ["--version"], { encoding: "utf8" });
  if (run.status !== 0) throw new Error("the linux tests need qemu-system-x86_64: install Debian's qemu-system-x86 (test/setup/prepare.sh does)");
  return run.stdout.split("\n")[0]!;
}

/** The launch options of the test guest (restored from `snapshot` when given). */
export function guestLaunchOptions(image: GuestImage, name: string, snapshot?: string): QemuLaunchOptions {
  return { kernel: image.kernel, initrd: image.initrd, append: image.cmdline, name, ...VM_SHAPE, ...(snapshot && { snapshot }) };
}

/**
 * The cached snapshot of the running test guest, made by one boot the first time. Keyed by the
 * guest image (its directory), QEMU's version and the VM's shape: QEMU only restores a stream
 * into the machine that wrote it.
 */
export async function ensureGuestSnapshot(image: GuestImage): Promise<GuestSnapshot> {
  const key = createHash("sha256").update(`${qemuVersion()}\n${JSON.stringify(VM_SHAPE)}\n${image.cmdline}`).digest("hex").slice(0, 12);
  const file = join(image.dir, `snapshot-${key}.mig`);
  const psFile = `${file}.ps.json`;
  if (existsSync(file) && existsSync(psFile)) return { file, ps: JSON.parse(readFileSync(psFile, "utf8")) as GuestPsEntry[] };
  const qemu = await launchQemu(guestLaunchOptions(image, "snapshot-source"));
  try {
    await qemu.waitForConsole(/KVMI-READY/, 240_000, { seen: true });
    // Let the workload reach its loops (the marker's first compare, the ticker's first naps).
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const ps = await qemu.guestPs();
    const partial = `${file}.partial-${process.pid}`;
    try {
      await qemu.saveSnapshot(partial);
      writeFileSync(psFile, `${JSON.stringify(ps)}\n`);
      renameSync(partial, file);
    } finally {
      rmSync(partial, { force: true });
    }
    return { file, ps };
  } finally {
    await qemu.stop();
  }
}

/** A restored test guest presented to a bridge by kvmi-qemu. */
export interface LinuxVm {
  readonly image: GuestImage;
  readonly snapshot: GuestSnapshot;
  readonly qemu: QemuProcess;
  readonly backend: QemuBackend;
  stop(): Promise<void>;
}

export interface LinuxVmOptions {
  readonly name?: string;
  /** The KVMI socket to connect to (default: the bridge's first). */
  readonly kvmiSocket?: string;
  readonly dialect?: QemuBackendOptions["dialect"];
}

/** Restores the test guest, attaches kvmi-qemu to `bridge` and waits until the VM is hooked. */
export async function startLinuxVm(bridge: ClientsBridge, options: LinuxVmOptions = {}): Promise<LinuxVm> {
  const image = await ensureGuestImage();
  const snapshot = await ensureGuestSnapshot(image);
  const qemu = await launchQemu(guestLaunchOptions(image, options.name ?? "linux-0", snapshot.file));
  let backend: QemuBackend | undefined;
  try {
    backend = await attachQemu({
      gdb: { kind: "unix", path: qemu.gdbSocket },
      qmp: { kind: "unix", path: qemu.qmpSocket },
      connect: { kind: "unix", path: options.kvmiSocket ?? bridge.kvmiSocket },
      reconnectMs: 200,
      ...(options.dialect && { dialect: options.dialect }),
    });
    await bridge.waitForVm(backend.uuid, (vm) => vm.state === State.HOOKED && vm.vcpuCount === VM_SHAPE.vcpus, 30_000);
  } catch (error) {
    await backend?.close().catch(() => undefined);
    await qemu.stop();
    throw error;
  }
  const attached = backend;
  return {
    image,
    snapshot,
    qemu,
    backend: attached,
    async stop() {
      await attached.close().catch(() => undefined);
      await qemu.stop();
    },
  };
}
