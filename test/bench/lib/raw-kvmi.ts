// SPDX-License-Identifier: Apache-2.0
/**
 * The raw-KVMI baseline: a tool that accepts the emulator's KVMI socket, answers QEMU's handshake
 * and then drives KVMI with the codec alone, no bridge in between: test/support/wire-tool.ts for
 * commands and events, and a leaner pipelined page reader for the throughput ceiling.
 */
import { createServer } from "node:net";
import type { Server, Socket } from "node:net";
import {
  checkHandshakeSize,
  createFramer,
  encodeCommand,
  encodeHandshakeReply,
  parseHandshake,
  v9,
  V9_COMMANDS,
  viewOf,
} from "@kvmi/kvm-bridge/wire";
import type { VmIdentity } from "@kvmi/kvm-bridge/wire";
import type { WireTool } from "../../support/wire-tool.js";

/** A device manager whose handshake was answered; the socket is hooked and waits for a tool. */
export interface RawConnection {
  readonly identity: VmIdentity;
  readonly socket: Socket;
}

/** Reads exactly `length` bytes from a paused socket. */
function readExactly(socket: Socket, length: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const tryRead = (): void => {
      const chunk = socket.read(length) as Buffer | null;
      if (chunk === null) return;
      socket.off("readable", tryRead);
      socket.off("close", onClose);
      resolve(chunk);
    };
    const onClose = (): void => reject(new Error("the device manager closed the connection during the handshake"));
    socket.on("readable", tryRead);
    socket.once("close", onClose);
    tryRead();
  });
}

/**
 * Listens on `at` (a UNIX socket path, or TCP host and port) and answers each device manager's handshake (no cookie secret). The kernel
 * side sends nothing before the tool does, so the caller attaches its reader afterwards. With
 * `forwarded`, each connection starts with a KVMI forwarder's hello (12-byte head, JSON), which is
 * skipped: the node bridge's side of KubeVirt node mode, reduced to the raw tool.
 */
export async function listenRaw(
  at: string | { readonly host: string; readonly port: number },
  onConnection: (c: RawConnection) => void,
  options: { forwarded?: boolean } = {},
): Promise<Server> {
  const server = createServer((socket) => {
    socket.on("error", () => undefined);
    void (async () => {
      if (options.forwarded) {
        const hello = await readExactly(socket, 12);
        await readExactly(socket, hello.readUInt32BE(8));
      }
      const head = await readExactly(socket, 4);
      const size = viewOf(head).getUint32(0, true);
      checkHandshakeSize(size);
      const rest = await readExactly(socket, size - 4);
      const identity = parseHandshake(new Uint8Array(Buffer.concat([head, rest])), "auto");
      socket.removeAllListeners("readable");
      socket.write(encodeHandshakeReply(undefined));
      onConnection({ identity, socket });
    })().catch(() => socket.destroy());
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    if (typeof at === "string") server.listen(at, () => resolve());
    else server.listen(at.port, at.host, () => resolve());
  });
  return server;
}

/**
 * Answers every event of `tool` with CONTINUE (CR/MSR: `new_val` = the value the guest wrote),
 * as fast as the codec allows; returns a stop function and the count of events answered.
 */
export function answerEvents(tool: WireTool): { stop: () => void; count: () => number } {
  let running = true;
  let answered = 0;
  void (async () => {
    while (running && !tool.isSocketClosed) {
      let event;
      try {
        event = await tool.nextEvent(3_600_000);
      } catch {
        continue;
      }
      const name = event.spec?.name;
      const data = name === "KVMI_EVENT_CR" || name === "KVMI_EVENT_MSR" ? { new_val: event.payload?.["new_value"] } : undefined;
      tool.reply(event, 0, data);
      answered++;
    }
  })();
  return { stop: () => (running = false), count: () => answered };
}

/**
 * The throughput ceiling: READ_PHYSICAL commands encoded with the codec and written in corked
 * bursts, replies only framed and counted (the data is not copied out), `window` in flight.
 */
export class PipelinedReader {
  private seq = 1;
  private onReply: ((err: number) => void) | undefined;

  constructor(private readonly socket: Socket) {
    const framer = createFramer(v9);
    socket.on("data", (chunk: Buffer) =>
      framer.push(chunk, (_hdr, body) => this.onReply?.(body.length >= 4 ? viewOf(body).getInt32(0, true) : -1)),
    );
    socket.resume();
  }

  /** Reads `pages` pages from `gpa` on; resolves with the count of error replies. */
  read(gpa: number, pages: number, window: number, pageBytes: number): Promise<number> {
    const spec = V9_COMMANDS.KVMI_VM_READ_PHYSICAL;
    return new Promise((resolve) => {
      let next = 0;
      let done = 0;
      let errors = 0;
      const issue = (): void => {
        if (next >= pages || next - done > window / 2) return;
        this.socket.cork();
        while (next < pages && next - done < window) {
          this.socket.write(encodeCommand(v9, spec, this.seq++, { gpa: BigInt(gpa + next * pageBytes), size: pageBytes }));
          next++;
        }
        this.socket.uncork();
      };
      this.onReply = (err) => {
        if (err !== 0) errors++;
        if (++done === pages) {
          this.onReply = undefined;
          resolve(errors);
        } else issue();
      };
      issue();
    });
  }
}
