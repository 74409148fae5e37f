// SPDX-License-Identifier: Apache-2.0
/**
 * The real KVM ioctls, through ffi-rs (conventions §4: all ffi-rs use lives in `src/ioctl/`).
 *
 * - libc comes from `libc.ts` (the ffi-rs binding, errno read with every call); a `-1` return
 *   becomes a {@link KvmiRemoteError} carrying the host errno. Each fd is an {@link OwnedFd}
 *   (`owned-fd.ts`): its close waits for the ioctls in flight.
 * - Calls that can block (KVM_CREATE_VM, all KVMI ioctls: HOOK starts a kernel thread, UNHOOK waits
 *   for it to finish, PREUNHOOK writes to the socket) run with `runInNewThread: true`, off the event
 *   loop. Pure lookups (KVM_GET_API_VERSION, KVM_CHECK_EXTENSION) and `open`/`close` of /dev/kvm
 *   run synchronously.
 * - The KVMI ioctls use the numbers of the dialect {@link identifyIntrospection} found on that VM
 *   fd (v9, v12 or kvmi-v7: each dialect table lists its own, docs/protocol/), and refuse to run
 *   unless exactly one dialect the codec speaks was found: their numbers collide with mainline
 *   ioctls (0xAEC7 is KVM_RESET_DIRTY_RINGS) and so do the capability numbers (184 is
 *   KVM_CAP_LAST_CPU), see `probe.ts`.
 *
 * ffi-rs is loaded lazily (`libc.ts`), on the first call, so importing this module never loads a native addon.
 *
 * @see Documentation/virt/kvm/api.rst §4.1 (KVM_GET_API_VERSION), §4.2 (KVM_CREATE_VM),
 *      §4.4 (KVM_CHECK_EXTENSION); kvmi-abi §2.2, §2.4 (KVMI ioctls).
 */
import { KvmiArgumentError, KvmiUnsupportedError } from "../errors.js";
import { _IOC_SIZE } from "./ioc.js";
import type { Libc } from "./libc.js";
import { ffiLibc, remoteError } from "./libc.js";
import { OwnedFd } from "./owned-fd.js";
import type { IntrospectionProbe } from "./probe.js";
import { identifyIntrospection, KVM_INTROSPECTION_PARAM_PATH, readIntrospectionMarker } from "./probe.js";
import type { IoctlSpec, KvmiIoctlName, KvmiIoctlTable } from "./table.js";
import { KVM_CHECK_EXTENSION, KVM_CREATE_VM, KVM_GET_API_VERSION, KVMI_IOCTL_TABLES } from "./table.js";

// The libc binding and errno helpers moved to libc.ts; their import path here stays (index.ts, doctor.ts, tests).
export { errnoName, ffiLibc } from "./libc.js";
export type { Libc, SyscallResult } from "./libc.js";

/** `O_RDWR` and `O_CLOEXEC` from `include/uapi/asm-generic/fcntl.h` (x86_64 uses the generic values). */
const O_RDWR = 0o2;
const O_CLOEXEC = 0o2000000;

// ---------------------------------------------------------------------------------------------
// Public objects
// ---------------------------------------------------------------------------------------------

/** Options of {@link openKvm}. */
export interface OpenKvmOptions {
  /**
   * The `kvm.introspection` module parameter consulted before any KVMI ioctl.
   * @defaultValue `/sys/module/kvm/parameters/introspection`
   * @internal
   */
  readonly introspectionParamPath?: string;
  /**
   * The libc binding. Defaults to ffi-rs over libc.so.6.
   * @internal
   */
  readonly libc?: Libc;
}

/** An open `/dev/kvm` (the "system" fd of api.rst). */
export interface KvmSystem {
  /** The device path that was opened. */
  readonly path: string;
  /** The raw fd (O_RDWR | O_CLOEXEC). */
  readonly fd: number;
  readonly closed: boolean;
  /**
   * KVM_GET_API_VERSION. Every kernel since 2.6.22 answers {@link KVM_API_VERSION} (12).
   * @throws KvmiRemoteError with the host errno.
   */
  getApiVersion(): number;
  /**
   * KVM_CHECK_EXTENSION on the system fd: 0 when `cap` is unsupported, else a capability-specific
   * positive value. Safe with any number.
   * @throws KvmiRemoteError with the host errno.
   */
  checkExtension(cap: number): number;
  /**
   * KVM_CREATE_VM, on a worker thread. The VM lives until its fd is closed.
   * @param machineType - 0 for a default x86 VM.
   * @throws KvmiRemoteError with the host errno (e.g. ENOMEM, EINVAL for a bad type).
   */
  createVm(machineType?: number): Promise<KvmVm>;
  /** Closes the fd. Idempotent; VMs created from it stay valid. */
  close(): void;
}

/** A VM fd, with the KVMI VM ioctls of the dialect its kernel offers (docs/protocol/). */
export interface KvmVm {
  readonly fd: number;
  readonly closed: boolean;
  /**
   * KVM_CHECK_EXTENSION on the VM fd (KVM_CAP_CHECK_EXTENSION_VM).
   * @throws KvmiRemoteError with the host errno.
   */
  checkExtension(cap: number): number;
  /**
   * Whether this VM's kernel offers KVMI, and which dialect (see `probe.ts`). Computed once per VM
   * with CHECK_EXTENSION only, then cached.
   */
  probeIntrospection(): IntrospectionProbe;
  /**
   * The ioctl table of the dialect this VM's kernel offers and the bridge speaks (v9, v12 or
   * kvmi-v7), or null: then every KVMI ioctl below is refused without reaching the kernel.
   */
  kvmiIoctls(): KvmiIoctlTable | null;
  /**
   * KVM_INTROSPECTION_HOOK (v9 0x4018AEC3, v12 0x4018AEC8, kvmi-v7 0x4018AEFF): hand a connected
   * socket to the kernel.
   * @param arg - `kvm_introspection_hook` encoded with `encode(kvmIntrospectionHook, …)` (24 bytes).
   * @throws KvmiUnsupportedError if this kernel offers no KVMI dialect the bridge speaks (nothing reaches the kernel);
   *   KvmiArgumentError if `arg` is not 24 bytes; KvmiRemoteError with EPERM (kvm.introspection off),
   *   EINVAL (padding, not a socket), EEXIST (already hooked), EFAULT, ENOMEM.
   */
  introspectionHook(arg: Uint8Array): Promise<void>;
  /**
   * KVM_INTROSPECTION_UNHOOK (v9 0xAEC4, v12 0xAEC9, kvmi-v7 0xAEFB). Blocks in the kernel until the receive thread has exited.
   * @throws KvmiUnsupportedError (no KVMI dialect the bridge speaks); KvmiRemoteError with EPERM.
   */
  introspectionUnhook(): Promise<void>;
  /**
   * KVM_INTROSPECTION_COMMAND (v9 0x4008AEC5, v12 0x4008AECA, kvmi-v7 0x4008AEFD): allow/disallow a command id (-1 = all).
   * @param arg - `kvm_introspection_feature` encoded with `encode(kvmIntrospectionFeature, …)` (8 bytes).
   * @throws KvmiUnsupportedError (no KVMI dialect the bridge speaks); KvmiArgumentError; KvmiRemoteError with EPERM, EINVAL, EFAULT (not hooked).
   */
  introspectionCommand(arg: Uint8Array): Promise<void>;
  /**
   * KVM_INTROSPECTION_EVENT (v9 0x4008AEC6, v12 0x4008AECB, kvmi-v7 0x4008AEFC): allow/disallow an event id (-1 = all).
   * @param arg - `kvm_introspection_feature` (8 bytes).
   * @throws KvmiUnsupportedError (no KVMI dialect the bridge speaks); KvmiArgumentError; KvmiRemoteError with EPERM, EINVAL, EFAULT.
   */
  introspectionEvent(arg: Uint8Array): Promise<void>;
  /**
   * KVM_INTROSPECTION_PREUNHOOK (v9 0xAEC7, v12 0xAECC, kvmi-v7 0xAEFE): ask the kernel to send KVMI_EVENT_UNHOOK.
   * @throws KvmiUnsupportedError (no KVMI dialect the bridge speaks); KvmiRemoteError with EPERM, EFAULT (not hooked), ENOENT
   *   (UNHOOK event not enabled by the tool, or the socket write failed).
   */
  introspectionPreunhook(): Promise<void>;
  /**
   * Closes the VM fd; the kernel destroys the VM when its last reference goes. Idempotent. With an
   * ioctl in flight, the close(2) happens when that call returns.
   */
  close(): void;
}

function checkExtensionOn(libc: Libc, owned: OwnedFd, cap: number): number {
  if (!Number.isInteger(cap) || cap < 0 || cap > 0x7fff_ffff) {
    throw new KvmiArgumentError("cap", `capability number must be a non-negative int, got ${cap}`);
  }
  const fd = owned.check(KVM_CHECK_EXTENSION.name);
  // SAFETY: KVM_CHECK_EXTENSION is `_IO` (size 0); `cap` is passed by value and only compared by
  // the kernel. Read-only, non-blocking.
  const r = libc.ioctl(fd, KVM_CHECK_EXTENSION.number, cap);
  if (r.value === -1) throw remoteError(r.errno, KVM_CHECK_EXTENSION.name);
  return r.value;
}

/** The dialects whose ioctls the bridge issues, for error messages. */
const SPOKEN = [...new Set(KVMI_IOCTL_TABLES.flatMap((t) => (t.bridgeSupported && t.wire !== null ? [t.wire.name] : [])))].join(", ");

class Vm implements KvmVm {
  private probe: IntrospectionProbe | undefined;
  private readonly owned: OwnedFd;

  constructor(
    private readonly libc: Libc,
    fd: number,
    private readonly paramPath: string,
  ) {
    this.owned = new OwnedFd(libc, fd, "VM");
  }

  get fd(): number {
    return this.owned.fd;
  }

  get closed(): boolean {
    return this.owned.closed;
  }

  checkExtension(cap: number): number {
    return checkExtensionOn(this.libc, this.owned, cap);
  }

  probeIntrospection(): IntrospectionProbe {
    this.probe ??= identifyIntrospection(readIntrospectionMarker(this.paramPath), (cap) => this.checkExtension(cap));
    return this.probe;
  }

  kvmiIoctls(): KvmiIoctlTable | null {
    const dialect = this.probeIntrospection().dialect;
    return dialect !== null && dialect.bridgeSupported && dialect.wire !== null ? dialect : null;
  }

  introspectionHook(arg: Uint8Array): Promise<void> {
    return this.kvmiIoctl("KVM_INTROSPECTION_HOOK", arg);
  }

  introspectionUnhook(): Promise<void> {
    return this.kvmiIoctl("KVM_INTROSPECTION_UNHOOK", null);
  }

  introspectionCommand(arg: Uint8Array): Promise<void> {
    return this.kvmiIoctl("KVM_INTROSPECTION_COMMAND", arg);
  }

  introspectionEvent(arg: Uint8Array): Promise<void> {
    return this.kvmiIoctl("KVM_INTROSPECTION_EVENT", arg);
  }

  introspectionPreunhook(): Promise<void> {
    return this.kvmiIoctl("KVM_INTROSPECTION_PREUNHOOK", null);
  }

  close(): void {
    this.owned.close();
  }

  /**
   * The spec of `name` in the dialect this VM's kernel was identified as; refuses (nothing reaches
   * the kernel) when no dialect, several, or one the bridge has no codec for was found.
   */
  private requireSpec(name: KvmiIoctlName): IoctlSpec {
    const table = this.kvmiIoctls();
    if (table !== null) return table.ioctls[name];
    const probe = this.probeIntrospection();
    const found = probe.dialect === null ? "" : ` (it offers KVMI ${probe.dialect.label}, which the bridge does not speak)`;
    throw new KvmiUnsupportedError(
      `${name} refused: this kernel offers no KVMI dialect the bridge speaks (${SPOKEN})${found}; ${probe.reason}. ` +
        `No KVMI ioctl was issued: each dialect's numbers mean something else on kernels without that dialect.`,
      { command: name },
    );
  }

  private async kvmiIoctl(name: KvmiIoctlName, arg: Uint8Array | null): Promise<void> {
    this.owned.check(name);
    const spec = this.requireSpec(name);
    if (spec.arg !== null) {
      if (!(arg instanceof Uint8Array) || arg.byteLength !== spec.arg.size || arg.byteLength !== _IOC_SIZE(spec.number)) {
        throw new KvmiArgumentError(
          "arg",
          `${spec.name} needs a ${spec.arg.size}-byte ${spec.arg.name}, got ${arg instanceof Uint8Array ? arg.byteLength : typeof arg} bytes`,
          { command: spec.name },
        );
      }
    }
    const r = await this.owned.run(spec.name, (fd) =>
      // SAFETY: `_IOW` requests get `arg`, whose byteLength was checked above to equal both the
      // layout size and `_IOC_SIZE(spec.number)`, so the kernel's copy_from_user stays inside it; the
      // kernel only reads it and keeps no pointer. `_IO` requests get 0 by value. Worker thread: HOOK
      // and UNHOOK start/join a kernel thread, PREUNHOOK writes to the introspection socket.
      this.libc.ioctlAsync(fd, spec.number, spec.arg === null ? 0 : arg!),
    );
    if (r.value === -1) throw remoteError(r.errno, spec.name);
  }
}

class System implements KvmSystem {
  private readonly owned: OwnedFd;

  constructor(
    private readonly libc: Libc,
    readonly path: string,
    fd: number,
    private readonly paramPath: string,
  ) {
    this.owned = new OwnedFd(libc, fd, path);
  }

  get fd(): number {
    return this.owned.fd;
  }

  get closed(): boolean {
    return this.owned.closed;
  }

  getApiVersion(): number {
    const fd = this.owned.check(KVM_GET_API_VERSION.name);
    // SAFETY: `_IO` request without argument (0 passed by value); read-only, non-blocking.
    const r = this.libc.ioctl(fd, KVM_GET_API_VERSION.number, 0);
    if (r.value === -1) throw remoteError(r.errno, KVM_GET_API_VERSION.name);
    return r.value;
  }

  checkExtension(cap: number): number {
    return checkExtensionOn(this.libc, this.owned, cap);
  }

  async createVm(machineType = 0): Promise<KvmVm> {
    if (!Number.isInteger(machineType) || machineType < 0 || machineType > 0xffff_ffff) {
      throw new KvmiArgumentError("machineType", `machine type must be a non-negative integer, got ${machineType}`, {
        command: KVM_CREATE_VM.name,
      });
    }
    const r = await this.owned.run(KVM_CREATE_VM.name, (fd) =>
      // SAFETY: `_IO` request; the machine type is passed by value, nothing is dereferenced. The
      // returned fd (O_CLOEXEC, set by the kernel) is owned by the Vm object created below. Worker
      // thread: VM creation allocates and may sleep.
      this.libc.ioctlAsync(fd, KVM_CREATE_VM.number, machineType),
    );
    if (r.value === -1) throw remoteError(r.errno, KVM_CREATE_VM.name);
    return new Vm(this.libc, r.value, this.paramPath);
  }

  close(): void {
    this.owned.close();
  }
}

/**
 * Opens `/dev/kvm` read-write with O_CLOEXEC. Close it in a `finally` block.
 * @param path - the KVM device node.
 * @throws KvmiRemoteError with the host errno: ENOENT (no device node: kvm module not loaded or no
 *   `--device /dev/kvm` in the container), EACCES (not in the `kvm` group), ENXIO/ENODEV (no hardware
 *   virtualization). KvmiUnsupportedError when the ffi-rs binding cannot be loaded.
 */
export function openKvm(path = "/dev/kvm", options: OpenKvmOptions = {}): KvmSystem {
  const libc = options.libc ?? ffiLibc();
  // SAFETY: see Libc.open; the returned fd is owned by the System object created below.
  const r = libc.open(path, O_RDWR | O_CLOEXEC);
  if (r.value === -1) throw remoteError(r.errno, `open ${path}`);
  return new System(libc, path, r.value, options.introspectionParamPath ?? KVM_INTROSPECTION_PARAM_PATH);
}
