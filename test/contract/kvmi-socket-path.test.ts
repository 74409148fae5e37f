// SPDX-License-Identifier: Apache-2.0
/**
 * Issue 15: `--kvmi-listen unix:PATH` used to delete whatever was at PATH. The listener now
 * replaces only a stale socket (nobody accepts on it), refuses a live socket and anything that is
 * not a socket with an error naming the path, creates a missing directory 0750, applies the
 * configured mode (and owner), and on close removes only the socket it created itself.
 */
import { linkSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { connect, createServer } from "node:net";
import type { Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createKvmiListener } from "@kvmi/kvm-bridge";
import type { KvmiListener } from "@kvmi/kvm-bridge";

let dir: string;
const opened: KvmiListener[] = [];
const servers: Server[] = [];

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "kvmi-sockpath-"));
});

afterEach(async () => {
  for (const listener of opened.splice(0)) await listener.close();
  for (const server of servers.splice(0)) server.close();
  rmSync(dir, { recursive: true, force: true });
});

async function listenAt(path: string, mode?: number, owner?: { uid: number; gid: number }): Promise<KvmiListener> {
  const listener = await createKvmiListener(
    { endpoints: [{ kind: "unix", path, ...(mode !== undefined && { mode }), ...(owner !== undefined && { owner }) }] },
    (vm) => vm.channel.close("test"),
  );
  opened.push(listener);
  return listener;
}

/** A UNIX socket at `path` that someone accepts on, or (stale) that nobody does any more. */
async function socketAt(path: string, live: boolean): Promise<void> {
  const server = createServer();
  // Closing a listening server unlinks its bound name (libuv): bind another name and link the
  // path to it, so that a closed server leaves the path behind as a crashed process would.
  const bound = `${path}.other`;
  await new Promise<void>((resolve) => server.listen(bound, resolve));
  linkSync(bound, path);
  if (live) {
    servers.push(server);
    return;
  }
  await new Promise<void>((resolve) => server.close(() => resolve()));
  expect(lstatSync(path).isSocket()).toBe(true);
}

function connectable(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ path });
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

describe("the KVMI socket path", () => {
  it("creates a missing directory 0750 and the socket with the configured mode and owner", async () => {
    const path = join(dir, "run", "kvmi", "kvmi.sock");
    await listenAt(path, 0o600, { uid: process.getuid!(), gid: process.getgid!() });
    expect(statSync(join(dir, "run")).mode & 0o777).toBe(0o750);
    expect(statSync(join(dir, "run", "kvmi")).mode & 0o777).toBe(0o750);
    const socket = lstatSync(path);
    expect(socket.isSocket()).toBe(true);
    expect(socket.mode & 0o777).toBe(0o600);
    expect(socket.uid).toBe(process.getuid!());
  });

  it("keeps the mode of a directory that exists already", async () => {
    mkdirSync(join(dir, "shared"), { mode: 0o755 });
    await listenAt(join(dir, "shared", "kvmi.sock"));
    expect(statSync(join(dir, "shared")).mode & 0o777).toBe(0o755);
  });

  it("refuses a regular file and leaves it as it was", async () => {
    const path = join(dir, "kvmi.sock");
    writeFileSync(path, "precious");
    await expect(listenAt(path)).rejects.toThrow(`cannot listen on unix:${path}: the path exists and is a regular file; refusing to replace it`);
    expect(readFileSync(path, "utf8")).toBe("precious");
  });

  it("refuses a directory", async () => {
    const path = join(dir, "kvmi.sock");
    mkdirSync(path);
    await expect(listenAt(path)).rejects.toThrow("the path exists and is a directory");
    expect(statSync(path).isDirectory()).toBe(true);
  });

  it("refuses a live socket (a second bridge) and leaves it serving", async () => {
    const path = join(dir, "kvmi.sock");
    await socketAt(path, true);
    const ino = lstatSync(path).ino;
    await expect(listenAt(path)).rejects.toThrow(`cannot listen on unix:${path}: another process accepts connections on this socket`);
    expect(lstatSync(path).ino).toBe(ino);
  });

  it("replaces a stale socket left by a crashed bridge", async () => {
    const path = join(dir, "kvmi.sock");
    await socketAt(path, false);
    await expect(connectable(path)).resolves.toBe(false);
    const listener = await listenAt(path);
    expect(listener.addresses).toEqual([`unix:${path}`]);
    await expect(connectable(path)).resolves.toBe(true);
  });

  it("on close removes its own socket, but not one that replaced it", async () => {
    const path = join(dir, "kvmi.sock");
    const first = await listenAt(path);
    await first.close();
    expect(() => lstatSync(path)).toThrow();

    const second = await listenAt(path);
    // Someone else took the path over (e.g. a new bridge after ours was considered dead).
    rmSync(path);
    await socketAt(path, true);
    const theirs = lstatSync(path).ino;
    await second.close();
    expect(lstatSync(path).ino).toBe(theirs);
  });
});
