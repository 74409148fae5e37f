// SPDX-License-Identifier: Apache-2.0
/**
 * The peer baseline (`--phases socat`): what users do today to run a tool off-host without the
 * bridge is relay the raw KVMI stream over TCP with socat, as KVMIveggur does: no authentication,
 * no policy, every event and every page crossing the network to the tool. Here the VM's KVMI socket
 * is a socat `UNIX-LISTEN` that forwards to a TCP listener in this process, where the raw codec tool
 * (the same as the raw baseline's) answers the handshake, runs commands and answers events. The
 * bridge's session command, 4 KiB read and event round trip are compared with the same operations
 * through the relay, in the same run (report: bridge ÷ socat relay).
 */
import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import type { AddressInfo, Server } from "node:net";
import { join } from "node:path";
import { v9Ids } from "@kvmi/kvm-bridge/wire";
import { WireTool } from "../support/wire-tool.js";
import { waitFor } from "./lib/child-helpers.js";
import type { ChildHandle } from "./lib/ipc.js";
import { answerEvents, listenRaw } from "./lib/raw-kvmi.js";
import type { RawConnection } from "./lib/raw-kvmi.js";
import { CR3, eventLoop, MEM_BASE, PAGE, timeLoop } from "./perf-phases.js";
import type { Context } from "./perf-phases.js";

/** The VM whose KVMI connection socat carries. */
export const SOCAT_VM = "socat";

export interface SocatPeer {
  readonly tool: WireTool;
  /** socat's CPU time, in the shape of a child's `cpu` answer, for the CPU table. */
  readonly cpu: Pick<ChildHandle, "call">;
  stop(): void;
}

/** user and system CPU of a process in µs, from /proc (clock ticks of 10 ms: fine over a window). */
function procCpu(pid: number): NodeJS.CpuUsage {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const tick = 1e6 / 100;
  return { user: Number(fields[11]) * tick, system: Number(fields[12]) * tick };
}

/**
 * Starts the relay (`socat UNIX-LISTEN:… TCP:127.0.0.1:PORT,nodelay`, one connection, as a
 * per-VM relay runs), a 1-vCPU VM connected through it and the raw tool on the TCP side with CR3
 * events enabled and answered.
 * @throws Error naming the missing package when socat is not installed.
 */
export async function startSocatPeer(dir: string, emulator: ChildHandle): Promise<SocatPeer> {
  const connected = new Promise<RawConnection>((resolve) => {
    void listenRaw({ host: "127.0.0.1", port: 0 }, (c) => resolve(c)).then((server) => (listener = server));
  });
  let listener: Server | undefined;
  await waitFor(async () => listener !== undefined, 5_000, "the raw tool's TCP listener");
  const port = (listener!.address() as AddressInfo).port;
  const relayPath = join(dir, "socat-relay.sock");
  let socat: ChildProcess;
  try {
    // TCP_NODELAY on the relay's TCP side and on the tool's socket: the most favourable setting
    // for the relay (Nagle would hold small messages back).
    socat = spawn("socat", [`UNIX-LISTEN:${relayPath}`, `TCP:127.0.0.1:${port},nodelay`], { stdio: "ignore" });
    await new Promise<void>((resolve, reject) => {
      socat.once("error", (err) => reject(new Error(`socat could not start (${err.message}); install Debian's socat package (test/setup/prepare.sh does)`)));
      socat.once("spawn", () => resolve());
    });
  } catch (err) {
    listener!.close();
    throw err;
  }
  await waitFor(async () => existsSync(relayPath), 5_000, "socat's UNIX socket");
  await emulator.call("addVms", { specs: [{ key: SOCAT_VM, endpoint: { kind: "unix", path: relayPath }, vcpus: 1, memoryMiB: 64, workload: false }] });
  const { socket } = await connected;
  socket.setNoDelay(true);
  const tool = new WireTool(socket);
  tool.socket.resume();
  for (const [cmd, body] of [["KVMI_VCPU_CONTROL_EVENTS", { event_id: v9Ids.KVMI_EVENT_CR, enable: 1 }], ["KVMI_VCPU_CONTROL_CR", { cr: CR3, enable: 1 }]] as const) {
    const reply = await tool.command(cmd, body, 0);
    if (reply.err !== 0) throw new Error(`socat peer ${cmd}: err ${reply.err}`);
  }
  const responder = answerEvents(tool);
  const pid = socat.pid!;
  return {
    tool,
    cpu: { call: async <T>() => procCpu(pid) as T },
    stop: () => {
      responder.stop();
      socket.destroy();
      socat.kill();
      listener!.close();
    },
  };
}

/** GET_VCPU_INFO, a 4 KiB READ_PHYSICAL and a guest-timed CR3 event round trip through the relay. */
export async function socatPhase(c: Context, peer: SocatPeer): Promise<void> {
  const ms = c.settings.windowMs;
  const latency = async (id: string, label: string, once: () => Promise<unknown>): Promise<void> => {
    c.results.latency(id, label, await c.cpu.track(id, "op", () => timeLoop(ms, once), (s) => s.length));
  };
  await latency("socat.command.getVcpuInfo", "KVMI GET_VCPU_INFO through a socat TCP relay (raw tool)", () => peer.tool.command("KVMI_VCPU_GET_INFO", {}, 0));
  await latency("socat.command.read4k", "KVMI READ_PHYSICAL 4 KiB through a socat TCP relay", () =>
    peer.tool.command("KVMI_VM_READ_PHYSICAL", { gpa: BigInt(MEM_BASE), size: PAGE }),
  );
  const r = await c.cpu.track("socat.event.1", "event", () => eventLoop(c.emulator, SOCAT_VM, 1, ms), (x) => x.completed);
  if (r.failures > 0) c.warnings.push(`socat event loop: ${r.failures} MOV CR3 did not complete with the written value`);
  c.results.latency("socat.event.1", "KVMI event round trip through a socat TCP relay, 1 vCPU (guest-timed)", r.samples);
}
