// SPDX-License-Identifier: Apache-2.0
/**
 * libc's `open`, `close` and `ioctl` through ffi-rs (conventions §4: all ffi-rs use lives in
 * `src/ioctl/`), and the host errno helpers. Kept apart from `kvm.ts` so that the one place where
 * JavaScript memory crosses into a C call (and its `// SAFETY:` reasoning) reads on its own; the
 * KVM objects only see the {@link Libc} interface, which tests replace.
 *
 * - Every call asks for `errno: true`; a `-1` return carries the host errno read on the same thread.
 * - `ioctlAsync` runs on an ffi-rs worker thread (`runInNewThread: true`), off the event loop.
 *
 * ffi-rs is loaded lazily, on the first call, so importing this module never loads a native addon.
 */
import { Buffer } from "node:buffer";
import { createRequire } from "node:module";
import { constants as osConstants } from "node:os";
import { KvmiRemoteError, KvmiUnsupportedError } from "../errors.js";

/** A libc call's return value and the `errno` read right after it, on the same thread. */
export interface SyscallResult {
  readonly value: number;
  /** Meaningful only when `value === -1`. */
  readonly errno: number;
}

/**
 * The three libc entry points the bridge needs. The default implementation is ffi-rs over
 * `libc.so.6`; tests may wrap it to record what reaches the kernel.
 * @internal
 */
export interface Libc {
  /** `int open(const char *path, int flags)`. */
  open(path: string, flags: number): SyscallResult;
  /** `int close(int fd)`. */
  close(fd: number): SyscallResult;
  /** `int ioctl(int fd, unsigned long request, unsigned long arg)` on the calling thread. */
  ioctl(fd: number, request: number, arg: number): SyscallResult;
  /**
   * `ioctl` on a worker thread. `arg` is an integer passed by value, or a buffer whose address is
   * passed (zero-copy). The buffer must stay untouched until the promise settles.
   */
  ioctlAsync(fd: number, request: number, arg: number | Uint8Array): Promise<SyscallResult>;
}

const LIBC_KEY = "kvmi-bridge:libc";
const LIBC_PATH = "libc.so.6";

type Ffi = typeof import("ffi-rs");

let defaultLibc: Libc | undefined;

function withCause<E extends Error>(error: E, cause: unknown): E {
  Object.defineProperty(error, "cause", { value: cause, configurable: true, writable: true });
  return error;
}

function toResult(raw: unknown): SyscallResult {
  const r = raw as { value?: unknown; errnoCode?: unknown } | null;
  if (r === null || typeof r !== "object" || typeof r.value !== "number" || typeof r.errnoCode !== "number") {
    throw new KvmiUnsupportedError(`ffi-rs returned an unexpected result shape: ${String(raw)}`);
  }
  return { value: r.value, errno: r.errnoCode };
}

function createFfiLibc(): Libc {
  let ffi: Ffi;
  try {
    const require = createRequire(import.meta.url);
    ffi = require("ffi-rs") as Ffi;
    ffi.open({ library: LIBC_KEY, path: LIBC_PATH });
  } catch (cause) {
    throw withCause(
      new KvmiUnsupportedError(
        `the native ioctl binding is unavailable (ffi-rs could not load ${LIBC_PATH}): ${String(cause)}`,
      ),
      cause,
    );
  }
  const { DataType } = ffi;
  type ParamType = (typeof DataType)[keyof typeof DataType];
  // Every binding is a libc function returning int, with errno read on the thread that ran it;
  // only the name and the parameters differ (each call site says why its arguments are safe).
  const call = (funcName: string, paramsType: ParamType[], paramsValue: unknown[]): SyscallResult =>
    toResult(ffi.load({ library: LIBC_KEY, funcName, retType: DataType.I32, paramsType, paramsValue, errno: true }));
  const callOnWorker = async (funcName: string, paramsType: ParamType[], paramsValue: unknown[]): Promise<SyscallResult> =>
    toResult(await ffi.load({ library: LIBC_KEY, funcName, retType: DataType.I32, paramsType, paramsValue, errno: true, runInNewThread: true }));
  return {
    open(path, flags) {
      // SAFETY: `path` is copied by ffi-rs into a NUL-terminated C string it owns for the duration of
      // the call; open(2) reads it and keeps no reference. No buffer is shared with the kernel.
      return call("open", [DataType.String, DataType.I32], [path, flags]);
    },
    close(fd) {
      // SAFETY: integer argument only; the caller owns `fd` and never uses it again after this call.
      return call("close", [DataType.I32], [fd]);
    },
    ioctl(fd, request, arg) {
      // SAFETY: `arg` is passed by value as an unsigned long (capability number, machine type or 0);
      // callers only use this for `_IO` requests, whose size field is 0, so the kernel dereferences
      // no user memory.
      return call("ioctl", [DataType.I32, DataType.U64, DataType.U64], [fd, request, arg]);
    },
    async ioctlAsync(fd, request, arg) {
      if (typeof arg === "number") {
        // SAFETY: as `ioctl` above: by-value argument for an `_IO` request; nothing is dereferenced.
        // Runs on an ffi-rs worker thread; errno is read on that same thread.
        return callOnWorker("ioctl", [DataType.I32, DataType.U64, DataType.U64], [fd, request, arg]);
      }
      // A Buffer view over the caller's bytes (no copy): ffi-rs passes the view's data pointer.
      const view = Buffer.isBuffer(arg) ? arg : Buffer.from(arg.buffer, arg.byteOffset, arg.byteLength);
      // SAFETY: the kernel reads exactly `_IOC_SIZE(request)` bytes from the pointer; every caller
      // checks `view.byteLength === _IOC_SIZE(request)` first. The bytes are owned by the caller's
      // ArrayBuffer, which V8 never moves; `view` stays referenced by this frame until the worker
      // thread returns, so it cannot be collected mid-call. The kernel keeps no reference after return.
      const result = await callOnWorker("ioctl", [DataType.I32, DataType.U64, DataType.U8Array], [fd, request, view]);
      void view.byteLength; // keep `view` alive until the call has returned
      return result;
    },
  };
}

/**
 * The ffi-rs libc binding, created (and ffi-rs loaded) on first use.
 * @throws KvmiUnsupportedError when ffi-rs or libc.so.6 cannot be loaded.
 * @internal
 */
export function ffiLibc(): Libc {
  defaultLibc ??= createFfiLibc();
  return defaultLibc;
}

// ---------------------------------------------------------------------------------------------
// errno helpers
// ---------------------------------------------------------------------------------------------

const ERRNO_NAMES = new Map<number, string>(
  Object.entries(osConstants.errno).map(([name, value]) => [value, name] as const),
);

/** The symbolic name of a host errno (`ENOENT`), or `errno N`. */
export function errnoName(errno: number): string {
  return ERRNO_NAMES.get(errno) ?? `errno ${errno}`;
}

/** The error of a failed syscall: the host errno and the command that got it. @internal */
export function remoteError(errno: number, command: string): KvmiRemoteError {
  return new KvmiRemoteError(errno, { command });
}
