// SPDX-License-Identifier: Apache-2.0
/**
 * A minimal tool-side listener for device-manager tests (kvmi-abi §2.1-§2.3): it listens on a UNIX
 * socket, reads QEMU's `qemu_vmi_to_introspector` in two steps (struct_size, then the rest), parses
 * it with the codec's `parseHandshake`, answers with `encodeHandshakeReply` (SHA-1 of its own secret,
 * which may be the wrong one on purpose), and hands the socket to a {@link WireTool}.
 */
import { mkdtempSync } from "node:fs";
import { createServer } from "node:net";
import type { Server, Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { checkHandshakeSize, encodeHandshakeReply, parseHandshake, viewOf } from "@kvmi/kvm-bridge/wire";
import type { HandshakeVariant, VmIdentity } from "@kvmi/kvm-bridge/wire";
import { TOOL_TIMEOUT_MS, WireTool } from "./wire-tool.js";

/** One device-manager connection whose handshake the listener read and answered. */
export interface AcceptedConnection {
  /** 1-based order of acceptance. */
  readonly index: number;
  /** The whole `qemu_vmi_to_introspector` as received (its length is `struct_size`). */
  readonly handshake: Uint8Array;
  readonly identity: VmIdentity;
  readonly socket: Socket;
  /** Drives the KVMI channel once the device manager has hooked the socket. */
  readonly tool: WireTool;
  /** `performance.now()` when the handshake was complete. */
  readonly at: number;
}

/** Options of {@link createTestListener}. */
export interface TestListenerOptions {
  /** The tool's secret: the cookie is SHA-1 of it (an all-zero cookie when absent). */
  readonly secret?: Uint8Array;
  /** Which handshake variant to parse (`auto` guesses from the size). */
  readonly expect?: HandshakeVariant | "auto";
  /** Read the handshake but never answer it (QEMU's handshake_timeout then fires). */
  readonly silent?: boolean;
  /** Answer the handshake only after this many ms. */
  readonly replyDelayMs?: number;
  /**
   * Called right after the answer is written, in the same corked write: whatever the callback
   * sends reaches QEMU glued to the answer, like libkvmi's early GET_VERSION (kvmi-abi §2.2 step 7).
   */
  readonly onAccepted?: (connection: AcceptedConnection) => void;
}

/** A listening tool. */
export interface TestListener {
  readonly path: string;
  readonly endpoint: { readonly kind: "unix"; readonly path: string };
  /** Every connection whose handshake was read, in order. */
  readonly connections: readonly AcceptedConnection[];
  /** Raw TCP-level connections, including those whose handshake never completed. */
  readonly attempts: number;
  /** Resolves with the `n`-th accepted connection (1-based); rejects after `timeoutMs`. */
  connection(n: number, timeoutMs?: number): Promise<AcceptedConnection>;
  close(): Promise<void>;
}

/** Reads exactly `length` bytes in paused mode, leaving later bytes in the socket. */
function readExactly(socket: Socket, length: number, timeoutMs: number): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    const cleanup = (): void => {
      clearTimeout(timer);
      socket.off("readable", tryRead);
      socket.off("close", onClose);
    };
    const tryRead = (): void => {
      const chunk = socket.read(length) as Buffer | null;
      if (chunk === null) return;
      cleanup();
      if (chunk.length === length) resolve(new Uint8Array(chunk));
      else reject(new Error(`handshake: ${chunk.length} of ${length} bytes`));
    };
    const onClose = (): void => {
      cleanup();
      reject(new Error("handshake: the device manager closed the connection"));
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`handshake: no ${length} bytes within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.on("readable", tryRead);
    socket.once("close", onClose);
    tryRead();
  });
}

/** Starts a listener on a fresh UNIX socket path. */
export async function createTestListener(options: TestListenerOptions = {}): Promise<TestListener> {
  const path = join(mkdtempSync(join(tmpdir(), "kvmi-listener-")), "tool.sock");
  const connections: AcceptedConnection[] = [];
  const sockets = new Set<Socket>();
  let waiters: Array<() => void> = [];
  let attempts = 0;

  const accept = async (socket: Socket): Promise<void> => {
    attempts++;
    sockets.add(socket);
    socket.on("error", () => undefined);
    socket.once("close", () => sockets.delete(socket));
    const head = await readExactly(socket, 4, TOOL_TIMEOUT_MS);
    const structSize = viewOf(head).getUint32(0, true);
    checkHandshakeSize(structSize);
    const rest = await readExactly(socket, structSize - 4, TOOL_TIMEOUT_MS);
    const handshake = new Uint8Array(structSize);
    handshake.set(head);
    handshake.set(rest, 4);
    const identity = parseHandshake(handshake, options.expect ?? "auto");
    socket.removeAllListeners("readable");
    const tool = new WireTool(socket);
    socket.resume();
    const connection: AcceptedConnection = {
      index: connections.length + 1,
      handshake,
      identity,
      socket,
      tool,
      at: performance.now(),
    };
    connections.push(connection);
    const woken = waiters;
    waiters = [];
    for (const wake of woken) wake();
    if (options.replyDelayMs !== undefined) await new Promise((resolve) => setTimeout(resolve, options.replyDelayMs));
    if (!options.silent && !socket.destroyed) {
      socket.cork();
      socket.write(encodeHandshakeReply(options.secret));
      options.onAccepted?.(connection);
      process.nextTick(() => socket.uncork());
    }
  };

  const server: Server = createServer((socket) => {
    accept(socket).catch(() => socket.destroy());
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(path, () => resolve());
  });

  return {
    path,
    endpoint: { kind: "unix", path },
    connections,
    get attempts() {
      return attempts;
    },
    async connection(n, timeoutMs = TOOL_TIMEOUT_MS) {
      const deadline = Date.now() + timeoutMs;
      while (connections.length < n) {
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`connection #${n} did not arrive within ${timeoutMs} ms (have ${connections.length})`);
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, left);
          waiters.push(() => {
            clearTimeout(timer);
            resolve();
          });
        });
      }
      return connections[n - 1]!;
    },
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
