// SPDX-License-Identifier: Apache-2.0
/**
 * One gdb connection: reads RSP packets, answers each (one at a time, as all-stop gdb expects),
 * and turns them into {@link GdbTarget} calls. vCPU `n` is gdb thread `n + 1` (thread 0 means
 * "any" in the protocol).
 *
 * @see ../../README.md ("GDB gateway")
 */
import type { Socket } from "node:net";
import type { X86Regs } from "../command-types.js";
import { encodePacket, escapeBinary, fromHex, MAX_PACKET_BYTES, RspReader, toHex, unescapeBinary } from "./rsp-packet.js";
import type { GdbTarget, ResumeAction, StopReport } from "./gdb-target.js";
import type { RegisterSource } from "./x86-registers.js";
import { readAllRegisters, readRegister, ReadOnlyRegisterError, targetXml, writeAllRegisters, writeRegister } from "./x86-registers.js";

/** Error replies (`Enn`, errno values as gdbserver uses them). */
const E_FAULT = "E0e";
const E_INVAL = "E16";
const E_NOENT = "E02";

const SUPPORTED = [
  `PacketSize=${MAX_PACKET_BYTES.toString(16)}`,
  "qXfer:features:read+",
  "qXfer:threads:read+",
  "QStartNoAckMode+",
  "swbreak+",
  "vContSupported+",
].join(";");

const MONITOR_HELP = [
  "kvmi-bridge gdb gateway monitor commands:",
  "  monitor phys on|off   addresses of m/M/X/Z0 are guest physical (on) or virtual through the thread's vCPU (off, default)",
  "  monitor phys          show the mode",
  "",
].join("\n");

const latin1 = new TextDecoder("latin1");

/** Serves one gdb connection until it detaches or disconnects. */
export class RspSession {
  private readonly reader = new RspReader();
  private readonly queue: Uint8Array[] = [];
  private wake: (() => void) | undefined;
  private noAck = false;
  private closed = false;
  private lastSent: Uint8Array | undefined;
  /** Thread of register and memory operations (`Hg`); a vCPU index. */
  private gVcpu = 0;
  /** Thread of `s`/`c` without vCont (`Hc`); undefined = all. */
  private cVcpu: number | undefined;

  constructor(
    private readonly socket: Socket,
    private readonly target: Promise<GdbTarget>,
    private readonly log: (line: string) => void,
  ) {
    socket.on("data", (chunk: Buffer) => this.onData(chunk));
    socket.on("close", () => this.onClose());
    socket.on("error", () => undefined);
  }

  /** Resolves when the connection is over and the target detached. */
  async run(): Promise<void> {
    let target: GdbTarget;
    try {
      target = await this.target;
    } catch (err) {
      this.log(`gdb connection refused: ${(err as Error).message}`);
      this.socket.destroy();
      return;
    }
    try {
      while (!this.closed || this.queue.length > 0) {
        const payload = this.queue.shift();
        if (payload === undefined) {
          await new Promise<void>((resolve) => (this.wake = resolve));
          continue;
        }
        const done = await this.handle(target, payload);
        if (done) break;
      }
    } finally {
      await target.detach();
      this.socket.end();
    }
  }

  private onData(chunk: Buffer): void {
    for (const item of this.reader.feed(chunk)) {
      switch (item.kind) {
        case "packet":
          if (!this.noAck) this.socket.write("+");
          this.queue.push(item.payload);
          this.signal();
          break;
        case "interrupt":
          void this.target.then((t) => t.interrupt()).catch(() => undefined);
          break;
        case "corrupt":
          if (!this.noAck) this.socket.write("-");
          break;
        case "nack":
          if (!this.noAck && this.lastSent !== undefined) this.socket.write(this.lastSent);
          break;
        case "ack":
          break;
      }
    }
  }

  private onClose(): void {
    this.closed = true;
    this.signal();
  }

  private signal(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  private send(payload: string | Uint8Array): void {
    if (this.closed) return;
    this.lastSent = encodePacket(payload);
    this.socket.write(this.lastSent);
  }

  /** Handles one packet; true when the connection should end. */
  private async handle(target: GdbTarget, payload: Uint8Array): Promise<boolean> {
    const text = latin1.decode(payload);
    try {
      const reply = await target.exclusive(() => this.reply(target, text, payload));
      if (reply === END) return true;
      if (reply !== NO_REPLY) this.send(reply);
      if (text === "QStartNoAckMode") this.noAck = true;
      if (text.startsWith("D") || text.startsWith("vKill")) return true;
      return false;
    } catch (err) {
      if (target.ended) {
        this.send("X09");
        return true;
      }
      this.log(`gdb packet ${text.slice(0, 40)}: ${(err as Error).message}`);
      this.send(E_FAULT);
      return false;
    }
  }

  private async reply(target: GdbTarget, text: string, raw: Uint8Array): Promise<string | Uint8Array | typeof END | typeof NO_REPLY> {
    const head = text[0];
    switch (head) {
      case "?":
        return stopReply(target.lastStop);
      case "g":
        return toHex(readAllRegisters(await target.registers(this.gVcpu)));
      case "G":
        return this.setRegisters(target, (source) => writeAllRegisters(source, fromHex(text.slice(1))));
      case "p": {
        const value = readRegister(parseInt(text.slice(1), 16), await target.registers(this.gVcpu));
        return value === undefined ? E_INVAL : toHex(value);
      }
      case "P": {
        const [n, value] = text.slice(1).split("=");
        const regnum = parseInt(n!, 16);
        return this.setRegisters(target, (source) => writeRegister(source.regs, regnum, fromHex(value ?? "")));
      }
      case "m": {
        const [address, length] = parseAddressLength(text.slice(1));
        const data = await target.memory.readMemory(this.gVcpu, address, Math.min(length, MAX_PACKET_BYTES / 2));
        return data.length === 0 && length > 0 ? E_FAULT : toHex(data);
      }
      case "M": {
        const [spec, hexData] = splitOnce(text.slice(1), ":");
        const [address] = parseAddressLength(spec);
        return (await target.memory.writeMemory(this.gVcpu, address, fromHex(hexData))) ? "OK" : E_FAULT;
      }
      case "X": {
        const colon = raw.indexOf(0x3a);
        const [address, length] = parseAddressLength(latin1.decode(raw.subarray(1, colon)));
        const data = unescapeBinary(raw.subarray(colon + 1));
        if (data.length !== length) return E_INVAL;
        if (length === 0) return "OK";
        return (await target.memory.writeMemory(this.gVcpu, address, data)) ? "OK" : E_FAULT;
      }
      case "Z":
      case "z": {
        const [type, addressText] = text.slice(1).split(",");
        if (type !== "0") return ""; // hardware breakpoints and watchpoints: not served
        const address = BigInt(`0x${addressText}`);
        if (head === "z") {
          await target.memory.removeBreakpoint(address);
          return "OK";
        }
        return (await target.memory.insertBreakpoint(this.gVcpu, address)) ? "OK" : E_FAULT;
      }
      case "H": {
        const vcpu = this.threadArg(target, text.slice(2));
        if (vcpu === null) return E_NOENT;
        if (text[1] === "g") this.gVcpu = vcpu ?? this.gVcpu;
        else this.cVcpu = vcpu;
        return "OK";
      }
      case "T":
        return this.threadArg(target, text.slice(1)) === null ? E_NOENT : "OK";
      case "c":
      case "C":
      case "s":
      case "S": {
        const step = head === "s" || head === "S";
        const actions = new Map<number, ResumeAction>();
        if (step) actions.set(this.cVcpu ?? this.gVcpu, "step");
        else for (let v = 0; v < target.vcpuCount; v++) actions.set(v, "continue");
        return stopReply((this.lastStopThread(await target.resume(actions))));
      }
      case "D":
        return "OK";
      case "k":
        return END;
      case "v":
        return this.vPacket(target, text);
      case "q":
      case "Q":
        return this.query(target, text);
      default:
        return "";
    }
  }

  /** Makes the stopped thread the current one, as gdbserver does. */
  private lastStopThread(report: StopReport): StopReport {
    this.gVcpu = report.thread;
    return report;
  }

  private async setRegisters(target: GdbTarget, compute: (source: RegisterSource) => X86Regs): Promise<string> {
    const source = await target.registers(this.gVcpu);
    try {
      target.setRegisters(this.gVcpu, compute(source));
      return "OK";
    } catch (err) {
      if (err instanceof ReadOnlyRegisterError || err instanceof RangeError) {
        this.log(err.message);
        return E_INVAL;
      }
      throw err;
    }
  }

  /** A thread id argument: a vCPU index, `undefined` for "any"/"all", `null` for an unknown thread. */
  private threadArg(target: GdbTarget, text: string): number | undefined | null {
    if (text === "0" || text === "-1" || text === "") return undefined;
    const tid = parseInt(text, 16);
    return Number.isInteger(tid) && tid >= 1 && tid <= target.vcpuCount ? tid - 1 : null;
  }

  private async vPacket(target: GdbTarget, text: string): Promise<string | typeof NO_REPLY> {
    if (text === "vCont?") return "vCont;c;C;s;S;t";
    if (text.startsWith("vCont;")) {
      const actions = new Map<number, ResumeAction>();
      const assigned = new Set<number>();
      // The leftmost action that names a thread wins for it; one without a thread covers the rest.
      for (const part of text.slice(6).split(";")) {
        const [action, thread] = part.split(":");
        const kind: ResumeAction | undefined = action![0] === "c" || action![0] === "C" ? "continue" : action![0] === "s" || action![0] === "S" ? "step" : undefined;
        const vcpus = thread === undefined || thread === "-1" ? [...Array(target.vcpuCount).keys()] : [this.threadArg(target, thread)];
        for (const v of vcpus) {
          if (v === null || v === undefined || assigned.has(v)) continue;
          assigned.add(v);
          if (kind !== undefined) actions.set(v, kind);
        }
      }
      return stopReply(this.lastStopThread(await target.resume(actions)));
    }
    if (text.startsWith("vKill")) return "OK";
    if (text === "vCtrlC") {
      target.interrupt();
      return "OK";
    }
    return "";
  }

  private query(target: GdbTarget, text: string): string {
    if (text.startsWith("qSupported")) return SUPPORTED;
    if (text === "QStartNoAckMode") return "OK";
    if (text === "qAttached" || text.startsWith("qAttached:")) return "1";
    if (text === "qC") return `QC${(this.gVcpu + 1).toString(16)}`;
    if (text === "qfThreadInfo") return `m${threadIds(target).join(",")}`;
    if (text === "qsThreadInfo") return "l";
    if (text.startsWith("qThreadExtraInfo,")) {
      const v = this.threadArg(target, text.slice(17));
      return toHex(new TextEncoder().encode(v === null || v === undefined ? "" : `vCPU ${v}`));
    }
    if (text.startsWith("qXfer:features:read:target.xml:")) return xferChunk(targetXml(), text.slice(31));
    if (text.startsWith("qXfer:threads:read::")) return xferChunk(threadsXml(target), text.slice(20));
    if (text.startsWith("qXfer:")) return E_NOENT;
    if (text.startsWith("qRcmd,")) return this.monitor(target, latin1.decode(fromHex(text.slice(6))).trim());
    if (text.startsWith("qSymbol")) return "OK";
    return "";
  }

  private monitor(target: GdbTarget, command: string): string {
    const words = command.split(/\s+/).filter(Boolean);
    let out: string;
    if (words[0] === "phys" && (words[1] === "on" || words[1] === "off")) {
      target.memory.physical = words[1] === "on";
      out = `addresses are guest ${target.memory.physical ? "physical" : "virtual (translated with the selected thread's vCPU)"}\n`;
    } else if (words[0] === "phys" && words.length === 1) {
      out = `phys ${target.memory.physical ? "on" : "off"}\n`;
    } else out = MONITOR_HELP;
    return toHex(new TextEncoder().encode(out));
  }
}

const END = Symbol("end");
const NO_REPLY = Symbol("no reply");

function threadIds(target: GdbTarget): string[] {
  return Array.from({ length: target.vcpuCount }, (_, v) => (v + 1).toString(16));
}

function threadsXml(target: GdbTarget): string {
  const threads = Array.from({ length: target.vcpuCount }, (_, v) => `<thread id="${(v + 1).toString(16)}" core="${v}" name="vCPU ${v}"/>`);
  return `<?xml version="1.0"?><threads>${threads.join("")}</threads>`;
}

/** `T` stop reply: signal, thread, and `swbreak` when RIP is already at the INT3. */
export function stopReply(report: StopReport): string {
  return `T${report.signal.toString(16).padStart(2, "0")}thread:${(report.thread + 1).toString(16)};${report.swbreak ? "swbreak:;" : ""}`;
}

/** One `qXfer` read: `m` + data when more follows, `l` + data for the last piece. */
export function xferChunk(document: string, range: string): string {
  const [offset, length] = parseAddressLength(range);
  const bytes = new TextEncoder().encode(document);
  const start = Number(offset);
  const piece = bytes.subarray(start, start + length);
  const last = start + length >= bytes.length;
  return (last ? "l" : "m") + latin1.decode(escapeBinary(piece));
}

function splitOnce(text: string, separator: string): [string, string] {
  const i = text.indexOf(separator);
  return i < 0 ? [text, ""] : [text.slice(0, i), text.slice(i + 1)];
}

/** `addr,length` in hex. @throws RangeError */
function parseAddressLength(text: string): [bigint, number] {
  const [a, l] = text.split(",");
  if (a === undefined || l === undefined || !/^[0-9a-fA-F]+$/.test(a) || !/^[0-9a-fA-F]+$/.test(l)) throw new RangeError(`bad address,length "${text}"`);
  return [BigInt(`0x${a}`), parseInt(l, 16)];
}

