// SPDX-License-Identifier: Apache-2.0
/**
 * The in-pod KVMI forwarder: owns the UNIX socket QEMU's introspection chardev connects to inside
 * the VM's pod and carries each connection's bytes, unchanged, to the node's bridge after a hello
 * (./hello.ts) that tells the bridge which VMI the VM is and which cookie hash to answer with.
 *
 * It never parses KVMI: the handshake, the hooks and their undo stay the node bridge's. Failure
 * handling rests on QEMU's `reconnect=`: when the bridge cannot be reached or the upstream drops
 * (the bridge restarts), the forwarder closes QEMU's connection too; QEMU reconnects a second
 * later, the forwarder dials again, and the bridge sees a new hook of the same VM (a new
 * generation) while the one that ended was undone as for any closed KVMI socket.
 */
import { chmodSync, mkdirSync, rmSync } from "node:fs";
import { connect as netConnect, createServer } from "node:net";
import type { Server, Socket } from "node:net";
import { dirname } from "node:path";
import { connect as tlsConnect } from "node:tls";
import type { Logger } from "@kvmi/kvm-bridge";
import { encodeHello } from "./hello.js";
import type { ExpectHello, HelloOrigin } from "./hello.js";

/** How the forwarder reaches the node bridge. */
export type Upstream =
  | { readonly kind: "unix"; readonly path: string }
  | {
      readonly kind: "tcp";
      readonly host: string;
      readonly port: number;
      /** TLS to the bridge (required off-node); `ca` verifies it, `cert`/`key` authenticate us (mTLS). */
      readonly tls?: { readonly ca?: Buffer; readonly cert?: Buffer; readonly key?: Buffer; readonly serverName?: string };
    };

/** Options of {@link startForwarder}. */
export interface ForwarderOptions {
  /** The socket QEMU connects to (the chardev path as this container sees it). */
  readonly listenPath: string;
  /** Its mode: QEMU runs as another uid in another container (0666 inside the pod's own volume). */
  readonly socketMode: number;
  readonly upstream: Upstream;
  /** SHA-1 of the pod's cookie, hex; the bridge answers QEMU with it. */
  readonly cookieHash?: string;
  /** The VMI, once a hook call told it. */
  readonly origin: () => HelloOrigin | undefined;
  /** Dial timeout towards the bridge. Default 5 s. */
  readonly connectTimeoutMs?: number;
  readonly logger: Logger;
}

/** A running forwarder. */
export interface Forwarder {
  readonly listenPath: string;
  /** QEMU connections being carried now. */
  readonly activeConnections: number;
  /** Connections carried since start. */
  readonly totalConnections: number;
  /**
   * Tells the bridge to expect this VM (so that a QEMU that never connects is reported). Retries
   * while the bridge is unreachable, up to `retryForMs`; resolves false if it never got through.
   */
  announce(expect: Omit<ExpectHello, "kind">, retryForMs?: number): Promise<boolean>;
  /** Stops accepting and closes every carried connection (QEMU reconnects to whoever comes next). */
  close(): Promise<void>;
}

function describe(upstream: Upstream): string {
  return upstream.kind === "unix" ? `unix:${upstream.path}` : `${upstream.tls ? "tls" : "tcp"}:${upstream.host}:${upstream.port}`;
}

/** Opens one connection to the bridge; resolves once it is connected (and TLS verified). */
export function dialUpstream(upstream: Upstream, timeoutMs: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket: Socket =
      upstream.kind === "unix"
        ? netConnect(upstream.path)
        : upstream.tls
          ? tlsConnect({
              host: upstream.host,
              port: upstream.port,
              ...(upstream.tls.ca && { ca: upstream.tls.ca }),
              ...(upstream.tls.cert && { cert: upstream.tls.cert }),
              ...(upstream.tls.key && { key: upstream.tls.key }),
              servername: upstream.tls.serverName ?? upstream.host,
            })
          : netConnect(upstream.port, upstream.host);
    const ready = upstream.kind === "tcp" && upstream.tls ? "secureConnect" : "connect";
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no connection to the bridge at ${describe(upstream)} within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once(ready, () => {
      clearTimeout(timer);
      socket.off("error", onError);
      if (upstream.kind === "tcp") socket.setNoDelay(true);
      resolve(socket);
    });
    const onError = (err: Error): void => {
      clearTimeout(timer);
      reject(new Error(`cannot reach the bridge at ${describe(upstream)}: ${err.message}`, { cause: err }));
    };
    socket.once("error", onError);
  });
}

/** Starts listening for QEMU; resolves once the socket exists. */
export async function startForwarder(options: ForwarderOptions): Promise<Forwarder> {
  const log = options.logger;
  const connectTimeoutMs = options.connectTimeoutMs ?? 5_000;
  const carried = new Set<Socket>();
  let total = 0;

  const carry = async (qemu: Socket): Promise<void> => {
    total++;
    carried.add(qemu);
    qemu.once("close", () => carried.delete(qemu));
    qemu.on("error", () => undefined);
    let upstream: Socket;
    try {
      upstream = await dialUpstream(options.upstream, connectTimeoutMs);
    } catch (error) {
      // QEMU retries after its reconnect= interval; so do we, with it.
      log.warn({ err: (error as Error).message }, "QEMU connected but the bridge is unreachable; closing so that QEMU retries");
      qemu.destroy();
      return;
    }
    if (qemu.destroyed) {
      upstream.destroy();
      return;
    }
    const origin = options.origin();
    upstream.write(encodeHello({ kind: "vm", ...(options.cookieHash !== undefined && { cookieHash: options.cookieHash }), ...(origin && { origin }) }));
    upstream.on("error", () => undefined);
    // Either side ending ends the other: a half-open KVMI session helps no one (the kernel side
    // would wait for replies that cannot arrive).
    upstream.once("close", () => qemu.destroy());
    qemu.once("close", () => upstream.destroy());
    qemu.pipe(upstream);
    upstream.pipe(qemu);
    log.info({ upstream: describe(options.upstream), origin }, "forwarding a QEMU connection to the bridge");
  };

  const server: Server = createServer({ pauseOnConnect: true }, (qemu) => void carry(qemu));
  mkdirSync(dirname(options.listenPath), { recursive: true });
  rmSync(options.listenPath, { force: true });
  await new Promise<void>((resolve, reject) => {
    server.once("error", (err) => reject(new Error(`cannot listen on unix:${options.listenPath}: ${err.message}`, { cause: err })));
    server.listen(options.listenPath, () => resolve());
  });
  chmodSync(options.listenPath, options.socketMode);
  log.info({ socket: options.listenPath, upstream: describe(options.upstream) }, "KVMI forwarder listening");

  const announceOnce = async (expect: Omit<ExpectHello, "kind">): Promise<void> => {
    const socket = await dialUpstream(options.upstream, connectTimeoutMs);
    try {
      socket.write(encodeHello({ kind: "expect", ...expect }));
      const answer = await new Promise<string>((resolve, reject) => {
        let text = "";
        socket.setEncoding("utf8");
        socket.on("data", (chunk: string) => {
          text += chunk;
          if (text.length > 4096) socket.destroy();
        });
        socket.once("close", () => resolve(text.trim()));
        socket.once("error", reject);
      });
      if (answer !== "OK") throw new Error(`the bridge refused the announcement: ${answer || "no answer"}`);
    } finally {
      socket.destroy();
    }
  };

  let closed = false;
  return {
    listenPath: options.listenPath,
    get activeConnections() {
      return carried.size;
    },
    get totalConnections() {
      return total;
    },
    announce: async (expect, retryForMs = 30_000) => {
      const until = Date.now() + retryForMs;
      for (let attempt = 1; !closed; attempt++) {
        try {
          await announceOnce(expect);
          log.info({ vm: expect.uuid, origin: expect.origin, deadlineSeconds: expect.deadlineSeconds }, "announced the VM to the bridge");
          return true;
        } catch (error) {
          if (Date.now() >= until) {
            log.error({ err: (error as Error).message, attempts: attempt }, "could not announce the VM to the bridge");
            return false;
          }
          await new Promise((resolve) => setTimeout(resolve, Math.min(1000 * attempt, 5000)).unref());
        }
      }
      return false;
    },
    close: async () => {
      closed = true;
      const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const socket of carried) socket.destroy();
      await stopped;
      rmSync(options.listenPath, { force: true });
    },
  };
}
