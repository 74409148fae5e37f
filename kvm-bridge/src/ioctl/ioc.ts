// SPDX-License-Identifier: Apache-2.0
/**
 * The `_IOC` family of macros from `include/uapi/asm-generic/ioctl.h`, which x86_64 uses unchanged:
 * an ioctl request number packs a direction, an argument size, a type byte and a command number.
 *
 * ```
 *  31 30 29                 16 15        8 7          0
 * +-----+---------------------+-----------+------------+
 * | dir |        size         |   type    |     nr     |
 * +-----+---------------------+-----------+------------+
 * ```
 *
 * Pure functions: no I/O, no ffi. The numbers they return are unsigned 32-bit values (the kernel
 * compares `unsigned int cmd`), so `_IOR`/`_IOWR` numbers with bit 31 set stay positive.
 *
 * @see https://github.com/torvalds/linux/blob/master/include/uapi/asm-generic/ioctl.h
 */
import { KvmiArgumentError } from "../errors.js";

/** Width of the `nr` field (bits 0-7). */
export const _IOC_NRBITS = 8;
/** Width of the `type` field (bits 8-15). */
export const _IOC_TYPEBITS = 8;
/** Width of the `size` field (bits 16-29). */
export const _IOC_SIZEBITS = 14;
/** Width of the `dir` field (bits 30-31). */
export const _IOC_DIRBITS = 2;

export const _IOC_NRSHIFT = 0;
export const _IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS;
export const _IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS;
export const _IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS;

/** No data transfer. */
export const _IOC_NONE = 0;
/** Userspace writes, the kernel reads (`copy_from_user`). */
export const _IOC_WRITE = 1;
/** The kernel writes, userspace reads (`copy_to_user`). */
export const _IOC_READ = 2;

/** An ioctl direction: `_IOC_NONE`, `_IOC_WRITE`, `_IOC_READ` or `_IOC_READ | _IOC_WRITE`. */
export type IocDirection = 0 | 1 | 2 | 3;

const FIELD_MAX = {
  dir: (1 << _IOC_DIRBITS) - 1,
  type: (1 << _IOC_TYPEBITS) - 1,
  nr: (1 << _IOC_NRBITS) - 1,
  size: (1 << _IOC_SIZEBITS) - 1,
} as const;

function checkField(field: keyof typeof FIELD_MAX, value: number): void {
  if (!Number.isInteger(value) || value < 0 || value > FIELD_MAX[field]) {
    throw new KvmiArgumentError(field, `_IOC ${field} must be an integer in [0, ${FIELD_MAX[field]}], got ${value}`);
  }
}

/**
 * Builds an ioctl request number, like the C macro `_IOC(dir, type, nr, size)`.
 * @param dir - `_IOC_NONE`, `_IOC_WRITE`, `_IOC_READ` or both.
 * @param type - the subsystem byte (`KVMIO` = 0xAE).
 * @param nr - the command number within the subsystem.
 * @param size - `sizeof` the argument struct in bytes (0 for `_IO`).
 * @returns the request as an unsigned 32-bit number.
 * @throws KvmiArgumentError when a field does not fit its bit width.
 */
export function _IOC(dir: IocDirection, type: number, nr: number, size: number): number {
  checkField("dir", dir);
  checkField("type", type);
  checkField("nr", nr);
  checkField("size", size);
  return (
    ((dir << _IOC_DIRSHIFT) | (type << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT) | (size << _IOC_SIZESHIFT)) >>> 0
  );
}

/** `_IO(type, nr)`: an ioctl without an argument struct (an integer argument, if any, is passed by value). */
export function _IO(type: number, nr: number): number {
  return _IOC(_IOC_NONE, type, nr, 0);
}

/** `_IOW(type, nr, size)`: userspace passes a pointer to `size` bytes the kernel reads. */
export function _IOW(type: number, nr: number, size: number): number {
  return _IOC(_IOC_WRITE, type, nr, size);
}

/** `_IOR(type, nr, size)`: userspace passes a pointer to `size` bytes the kernel writes. */
export function _IOR(type: number, nr: number, size: number): number {
  return _IOC(_IOC_READ, type, nr, size);
}

/** `_IOWR(type, nr, size)`: the kernel reads and then writes `size` bytes. */
export function _IOWR(type: number, nr: number, size: number): number {
  return _IOC((_IOC_READ | _IOC_WRITE) as IocDirection, type, nr, size);
}

/** `_IOC_DIR(request)`. */
export function _IOC_DIR(request: number): IocDirection {
  return ((request >>> _IOC_DIRSHIFT) & FIELD_MAX.dir) as IocDirection;
}

/** `_IOC_TYPE(request)`. */
export function _IOC_TYPE(request: number): number {
  return (request >>> _IOC_TYPESHIFT) & FIELD_MAX.type;
}

/** `_IOC_NR(request)`. */
export function _IOC_NR(request: number): number {
  return (request >>> _IOC_NRSHIFT) & FIELD_MAX.nr;
}

/** `_IOC_SIZE(request)`: how many bytes the kernel copies through the argument pointer. */
export function _IOC_SIZE(request: number): number {
  return (request >>> _IOC_SIZESHIFT) & FIELD_MAX.size;
}

/** Formats a request number the way kernel headers and strace print it (`0x4018AEC3`). */
export function formatIoctlNumber(request: number): string {
  return `0x${(request >>> 0).toString(16).toUpperCase()}`;
}
