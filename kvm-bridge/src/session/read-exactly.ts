// SPDX-License-Identifier: Apache-2.0
/**
 * Reads an exact number of bytes from a stream socket without consuming anything after them: the
 * handshake is followed on the same socket by KVMI messages that belong to another reader
 * (kvmi-abi §2.1: QEMU hands the very same connection to the kernel).
 */
import type { Socket } from "node:net";
import { KvmiTimeoutError, KvmiTransportError } from "../errors.js";

/**
 * Resolves with exactly `length` bytes, using the paused-mode `read(n)` so that later bytes stay
 * in the socket's buffer.
 * @throws KvmiTransportError when the socket ends, errors or `timeoutMs` passes first (KvmiTimeoutError).
 */
export function readExactly(socket: Socket, length: number, timeoutMs?: number): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    let timer: NodeJS.Timeout | undefined;
    const cleanup = (): void => {
      socket.off("readable", tryRead);
      socket.off("end", onEnd);
      socket.off("close", onEnd);
      socket.off("error", onError);
      if (timer !== undefined) clearTimeout(timer);
    };
    function tryRead(): void {
      const chunk = socket.read(length) as Buffer | null;
      if (chunk === null) return;
      cleanup();
      if (chunk.length !== length) {
        reject(new KvmiTransportError(`socket ended after ${chunk.length} of ${length} bytes`));
        return;
      }
      resolve(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.length));
    }
    function onEnd(): void {
      const rest = socket.read() as Buffer | null;
      cleanup();
      reject(new KvmiTransportError(`socket closed after ${rest?.length ?? 0} of ${length} bytes`));
    }
    function onError(err: Error): void {
      cleanup();
      reject(new KvmiTransportError(`socket error while reading ${length} bytes`, {}, { cause: err }));
    }
    if (timeoutMs !== undefined) {
      timer = setTimeout(() => {
        cleanup();
        reject(new KvmiTimeoutError(`no ${length} bytes within ${timeoutMs} ms`));
      }, timeoutMs);
    }
    socket.on("readable", tryRead);
    socket.once("end", onEnd);
    socket.once("close", onEnd);
    socket.once("error", onError);
    tryRead();
  });
}
