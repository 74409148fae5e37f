// SPDX-License-Identifier: Apache-2.0
/**
 * {@link serveGdb}: a GDB remote stub (RSP over TCP) for one VM, built on the SDK only. Each gdb
 * connection attaches a controller session, stops every vCPU, and serves registers, memory,
 * software breakpoints, single-step and continue through KVMI; when gdb detaches, kills or
 * disconnects, everything the gateway changed is undone and the guest runs on.
 *
 * @see ../../README.md ("GDB gateway")
 */
import { createServer } from "node:net";
import type { Server, Socket } from "node:net";
import type { BridgeClient } from "../client.js";
import { GdbTarget } from "./gdb-target.js";
import { RspSession } from "./rsp-session.js";

/** Options of {@link serveGdb}. */
export interface ServeGdbOptions {
  /** Address to listen on (default 127.0.0.1: anyone who reaches the port controls the guest). */
  readonly host?: string;
  /** TCP port; 0 (default) picks a free one (see {@link GdbGateway.port}). */
  readonly port?: number;
  /** How long the bridge lets a stopped vCPU wait for the gateway's reply (10..60000 ms; default 60000). */
  readonly eventDeadlineMs?: number;
  /** Diagnostic lines: connections, refused connections, cleanup problems. */
  readonly log?: (line: string) => void;
}

/** How a gdb connection ended. */
export interface GdbSessionEnd {
  /** False when the gateway could not attach to the VM (e.g. another controller is attached); the connection was closed. */
  readonly attached: boolean;
}

/** A listening gateway. */
export interface GdbGateway {
  readonly host: string;
  readonly port: number;
  /** Resolves when the current gdb connection (if any) has ended and its session is released. */
  idle(): Promise<void>;
  /** Resolves when a gdb connection ends (detached, killed or disconnected) with whether it had attached to the VM. */
  nextSessionEnd(): Promise<GdbSessionEnd>;
  /** Stops listening, detaches a connected gdb (undoing its breakpoints) and releases the session. */
  close(): Promise<void>;
}

/**
 * Serves the GDB Remote Serial Protocol for `vm` (UUID or `vms/UUID`) on a TCP port. One gdb at a
 * time: a second connection is closed at once (gdb reports "Connection reset").
 *
 * @example
 * const gateway = await serveGdb(client, vm.uuid, { port: 1234 });
 * // gdb -ex 'target remote 127.0.0.1:1234'
 * await gateway.close();
 */
export async function serveGdb(client: BridgeClient, vm: string, options: ServeGdbOptions = {}): Promise<GdbGateway> {
  const log = options.log ?? (() => undefined);
  let current: { socket: Socket; done: Promise<void> } | undefined;
  let endWaiters: Array<(end: GdbSessionEnd) => void> = [];
  const server: Server = createServer((socket) => {
    if (current !== undefined) {
      log(`refused a second gdb connection from ${socket.remoteAddress}:${socket.remotePort}: one is already attached`);
      socket.destroy();
      return;
    }
    socket.setNoDelay(true);
    log(`gdb connected from ${socket.remoteAddress}:${socket.remotePort}`);
    const target = GdbTarget.attach(client, vm, { ...(options.eventDeadlineMs !== undefined && { eventDeadlineMs: options.eventDeadlineMs }), log });
    let attached = false;
    target.then(() => (attached = true)).catch(() => undefined);
    const done = new RspSession(socket, target, log)
      .run()
      .catch((err: Error) => log(`gdb session failed: ${err.message}`))
      .finally(() => {
        current = undefined;
        log("gdb session ended; the guest runs on");
        const waiters = endWaiters;
        endWaiters = [];
        for (const w of waiters) w({ attached });
      });
    current = { socket, done };
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port ?? 0, options.host ?? "127.0.0.1", () => {
      server.off("error", reject);
      resolve();
    });
  });
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error("the gdb gateway is not listening on TCP");
  return {
    host: address.address,
    port: address.port,
    idle: async () => {
      await current?.done;
    },
    nextSessionEnd: () => new Promise((resolve) => endWaiters.push(resolve)),
    close: async () => {
      // server.close() waits for open connections: end gdb's first.
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      const active = current;
      active?.socket.destroy();
      await active?.done;
      await closed;
    },
  };
}
