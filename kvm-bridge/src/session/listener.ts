// SPDX-License-Identifier: Apache-2.0
/**
 * Accepts device-manager connections (kvmi-abi §2.1: the tool listens, QEMU connects) on UNIX
 * sockets and TCP, runs the handshake (§2.2, §2.3) and turns each hooked socket into a
 * {@link KvmiChannel}. One connection per VM; a failed handshake closes only that connection.
 */
import { chmodSync, chownSync, lstatSync, mkdirSync, renameSync, rmSync } from "node:fs";
import type { Stats } from "node:fs";
import { connect, createServer } from "node:net";
import type { AddressInfo, Server, Socket } from "node:net";
import { dirname } from "node:path";
import { KvmiProtocolError, KvmiTransportError } from "../errors.js";
import type { Logger } from "../logger.js";
import { silentLogger } from "../logger.js";
import { viewOf } from "../wire/codec.js";
import type { Dialect } from "../wire/dialect.js";
import type { HandshakeVariant, VmIdentity } from "../wire/handshake.js";
import { checkHandshakeSize, encodeHandshakeReply, encodeHandshakeReplyWithHash, parseHandshake } from "../wire/handshake.js";
import { createKvmiChannel } from "./channel.js";
import type { KvmiChannel, KvmiChannelOptions } from "./channel.js";
import { readExactly } from "./read-exactly.js";

/** A place to listen for device managers. */
export type ListenEndpoint =
  | {
      readonly kind: "unix";
      readonly path: string;
      /** File mode, default 0o660. */
      readonly mode?: number;
      /** Owner of the socket file (QEMU's user and group); unchanged when absent. */
      readonly owner?: { readonly uid: number; readonly gid: number };
    }
  | { readonly kind: "tcp"; readonly host: string; readonly port: number };

/**
 * The workload a VM belongs to, as the orchestrator that started it names it (KubeVirt: the VMI's
 * namespace and name). Known only for VMs that arrive through a forwarder, which says so.
 */
export interface VmOrigin {
  readonly namespace: string;
  readonly name: string;
  /** The pod the forwarder runs in; "" when unknown. */
  readonly pod: string;
}

/** A device manager that completed the handshake. */
export interface AcceptedVm {
  readonly identity: VmIdentity;
  readonly channel: KvmiChannel;
  /** `unix:PATH` or `tcp:HOST:PORT` of the peer, for logs. */
  readonly peer: string;
  /** Set for a VM that came through a forwarder. */
  readonly origin?: VmOrigin;
}

/** What a forwarder told the bridge about one forwarded connection (see {@link acceptKvmiConnection}). */
export interface ForwardedConnection {
  /** SHA-1 of the QEMU cookie of this VM (its pod's own secret), answered instead of the bridge's. */
  readonly cookieHash?: Uint8Array;
  readonly origin?: VmOrigin;
  /** Peer description for logs, e.g. `forwarder:tcp:10.0.0.7:40211`. */
  readonly peer?: string;
}

/** Options of {@link createKvmiListener}. */
export interface KvmiListenerOptions {
  readonly endpoints: readonly ListenEndpoint[];
  /** The KVMI dialect the kernels behind these endpoints speak (docs/protocol/). */
  readonly dialect: Dialect;
  /** The shared secret whose SHA-1 QEMU checks (kvmi-abi §2.2). */
  readonly secret?: Uint8Array;
  /** Which handshake to expect; `auto` guesses from the size (104 bytes reads as max-gpa). */
  readonly handshakeVariant?: HandshakeVariant | "auto";
  /** QEMU drops us after its own handshake_timeout (10 s); we give up on a silent peer as well. */
  readonly handshakeTimeoutMs?: number;
  readonly logger?: Logger;
  readonly channel?: Omit<KvmiChannelOptions, "vm" | "logger" | "dialect">;
}

/** A running listener. */
export interface KvmiListener {
  /** Bound addresses, `unix:PATH` or `tcp:HOST:PORT` (with the real port when 0 was asked). */
  readonly addresses: readonly string[];
  /** Stops accepting new device managers; hooked channels stay open. */
  close(): Promise<void>;
}

/**
 * Starts listening on every endpoint; `onVm` receives each VM after a successful handshake.
 * @throws KvmiTransportError when an endpoint cannot be bound (the error names it).
 */
export async function createKvmiListener(
  options: KvmiListenerOptions,
  onVm: (vm: AcceptedVm) => void,
): Promise<KvmiListener> {
  const log = options.logger ?? silentLogger;
  const servers: Server[] = [];
  const addresses: string[] = [];
  /** The socket files this listener created, to remove only those (not a successor's) on close. */
  const created: Array<{ readonly path: string; readonly ino: number }> = [];
  const unlinkOurs = (): void => {
    for (const file of created) if (lstatOrUndefined(file.path)?.ino === file.ino) rmSync(file.path, { force: true });
  };
  try {
    for (const endpoint of options.endpoints) {
      const server = createServer({ pauseOnConnect: true }, (socket) => {
        void acceptKvmiConnection(socket, options, onVm);
      });
      if (endpoint.kind === "unix") await prepareSocketPath(endpoint.path, log);
      await listen(server, endpoint);
      servers.push(server);
      if (endpoint.kind === "unix") created.push({ path: endpoint.path, ino: lstatSync(endpoint.path).ino });
      addresses.push(describe(server, endpoint));
      log.info({ address: addresses.at(-1) }, "listening for device managers");
    }
  } catch (err) {
    for (const server of servers) server.close();
    unlinkOurs();
    throw err;
  }
  return {
    addresses,
    close: async () => {
      // Stop accepting only: net.Server#close would wait for every hooked VM's socket to end.
      for (const server of servers) server.close();
      unlinkOurs();
    },
  };
}

function lstatOrUndefined(path: string): Stats | undefined {
  try {
    return lstatSync(path);
  } catch {
    return undefined;
  }
}

/**
 * Makes `path` bindable without ever deleting something that is not ours to delete: the directory
 * is created 0750 when missing (an existing one keeps its mode and owner); a socket file left by a
 * crashed bridge (nobody accepts on it) is removed; a live socket (another bridge serves it) or
 * anything else (a regular file, a directory, a symlink) is an error that names it.
 * @throws Error naming the path and what is there.
 */
async function prepareSocketPath(path: string, log: Logger): Promise<void> {
  try {
    mkdirSync(dirname(path), { recursive: true, mode: 0o750 });
  } catch (err) {
    throw new KvmiTransportError(`cannot listen on unix:${path}: ${(err as Error).message}`, {}, { cause: err });
  }
  const stats = lstatOrUndefined(path);
  if (stats === undefined) return;
  if (!stats.isSocket()) {
    const what = stats.isFile() ? "a regular file" : stats.isDirectory() ? "a directory" : stats.isSymbolicLink() ? "a symbolic link" : "not a socket";
    throw new KvmiTransportError(`cannot listen on unix:${path}: the path exists and is ${what}; refusing to replace it (remove it or choose another --kvmi-listen path)`);
  }
  if (await socketIsLive(path)) {
    throw new KvmiTransportError(`cannot listen on unix:${path}: another process accepts connections on this socket (is a second bridge running?)`);
  }
  log.info({ path }, "removing a stale KVMI socket left by a previous run");
  rmSync(path);
}

/** True when something accepts a connection on the UNIX socket at `path` (ECONNREFUSED: stale). */
function socketIsLive(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = connect({ path });
    const done = (live: boolean): void => {
      clearTimeout(timer);
      probe.destroy();
      resolve(live);
    };
    // A listener whose backlog is full does not answer at once: treat silence as live, the safe side.
    const timer = setTimeout(() => done(true), 1000);
    probe.once("connect", () => done(true));
    probe.once("error", (err: NodeJS.ErrnoException) => done(err.code !== "ECONNREFUSED" && err.code !== "ENOENT"));
  });
}

/**
 * Binds a UNIX socket under a temporary name, sets its owner and mode, then renames it into place:
 * QEMU never sees the socket with the wrong mode, and the name the bridge later closes is not the
 * public path (libuv unlinks a pipe's bound name on close, which could be a successor's socket).
 */
function listen(server: Server, endpoint: ListenEndpoint): Promise<void> {
  const failed = (err: Error): KvmiTransportError =>
    new KvmiTransportError(`cannot listen on ${label(endpoint)}: ${err.message}`, {}, { cause: err });
  return new Promise((resolve, reject) => {
    server.once("error", (err) => reject(failed(err)));
    if (endpoint.kind === "unix") {
      const bound = `${endpoint.path}.${process.pid}.binding`;
      rmSync(bound, { force: true });
      server.listen(bound, () => {
        try {
          if (endpoint.owner !== undefined) chownSync(bound, endpoint.owner.uid, endpoint.owner.gid);
          chmodSync(bound, endpoint.mode ?? 0o660);
          renameSync(bound, endpoint.path);
          resolve();
        } catch (err) {
          server.close();
          reject(failed(err as Error));
        }
      });
    } else {
      server.listen(endpoint.port, endpoint.host, () => resolve());
    }
  });
}

function label(endpoint: ListenEndpoint): string {
  return endpoint.kind === "unix" ? `unix:${endpoint.path}` : `tcp:${endpoint.host}:${endpoint.port}`;
}

function describe(server: Server, endpoint: ListenEndpoint): string {
  if (endpoint.kind === "unix") return label(endpoint);
  const address = server.address() as AddressInfo;
  return `tcp:${endpoint.host}:${address.port}`;
}

/**
 * Runs the handshake on one connected stream and hands the VM to `onVm`: what the listener does for
 * each accepted socket, exported for the node bridge's forward listener, which reads a forwarder's
 * preamble first and then passes the same stream (a TLS socket included) with what it learned.
 */
export async function acceptKvmiConnection(
  socket: Socket,
  options: Omit<KvmiListenerOptions, "endpoints">,
  onVm: (vm: AcceptedVm) => void,
  forwarded?: ForwardedConnection,
): Promise<void> {
  const log = options.logger ?? silentLogger;
  const peer = forwarded?.peer ?? (socket.remoteAddress !== undefined ? `tcp:${socket.remoteAddress}:${socket.remotePort}` : "unix");
  const timeoutMs = options.handshakeTimeoutMs ?? 10_000;
  let identity: VmIdentity;
  try {
    // libkvmi's robust parsing (kvmi-abi §2.3): size first, bounded, then exactly the rest.
    const head = await readExactly(socket, 4, timeoutMs);
    const structSize = viewOf(head).getUint32(0, true);
    checkHandshakeSize(structSize);
    const rest = await readExactly(socket, structSize - 4, timeoutMs);
    const whole = new Uint8Array(structSize);
    whole.set(head);
    whole.set(rest, 4);
    identity = parseHandshake(whole, options.handshakeVariant ?? "auto");
    socket.write(forwarded?.cookieHash !== undefined ? encodeHandshakeReplyWithHash(forwarded.cookieHash) : encodeHandshakeReply(options.secret));
  } catch (err) {
    const reason = err instanceof KvmiProtocolError ? err.message : `handshake failed: ${(err as Error).message}`;
    log.warn({ peer, reason }, "closing a device-manager connection");
    socket.destroy();
    return;
  }
  const channel = createKvmiChannel(socket, {
    ...options.channel,
    dialect: options.dialect,
    vm: identity.uuid,
    logger: log.child({ vm: identity.uuid }),
  });
  const origin = forwarded?.origin;
  log.info(
    { vm: identity.uuid, name: identity.name, variant: identity.variant, peer, dialect: options.dialect.name, ...(origin && { origin }) },
    "handshake complete",
  );
  onVm({ identity, channel, peer, ...(origin && { origin }) });
}
