// SPDX-License-Identifier: Apache-2.0
// `kvmictl dump --format elf|lime|raw` and the SDK's dumpToFile against an emulated guest whose
// memory does not change (manual workload ticks). The ELF core and the LiME file are parsed here
// with offsets written from the specifications (System V gABI, Linux `elf_prstatus`, LiME's
// `lime_mem_range_header`), never with the code under test; gdb reads the core without a vmlinux;
// an interrupted dump (aborted, or the process killed) resumed with --resume equals one
// uninterrupted run byte for byte.
import { execFile, execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CancelledError, dumpToFile, resumeStatePath } from "@kvmi/clients";
import type { DumpFormat } from "@kvmi/clients";
import { guestModel } from "@kvmi/kvm-bridge/emulator";
import type { EmulatedVm } from "@kvmi/kvm-bridge/emulator";
import { KVMICTL_BIN, REPO_ROOT, runNode, startClientsBridge } from "../support/clients-harness.js";
import type { ClientsBridge } from "../support/clients-harness.js";

const MiB = 1024 * 1024;
const MEMORY_MIB = 16;

let bridge: ClientsBridge;
let vm: EmulatedVm;
let dir: string;

beforeAll(async () => {
  bridge = await startClientsBridge({ vms: [{ name: "dump-a", vcpus: 2, memoryMiB: MEMORY_MIB, workload: { tickIntervalMs: 0 } }] });
  [vm] = bridge.vms as [EmulatedVm];
  // A few ticks start vCPU 1 and give the tasks some history; then the guest stands still.
  await vm.guest.workload!.runTicks(4);
  dir = mkdtempSync(join(tmpdir(), "kvmi-dump-"));
}, 30_000);

afterAll(async () => {
  await bridge?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const spawnCli = (...args: string[]) => runNode([KVMICTL_BIN, "--target", bridge.target, ...args], { timeoutMs: 60_000 });

/** Guest RAM as the emulator holds it: [gpa, bytes] per memslot. */
function guestRam(): Array<{ gpa: bigint; bytes: Buffer }> {
  return vm.guest.memory.slots.map((slot) => {
    const r = vm.guest.memory.read(slot.baseGpa, Number(slot.sizeBytes));
    if (!r.ok) throw new Error("slot not readable");
    return { gpa: slot.baseGpa, bytes: Buffer.from(r.bytes) };
  });
}

interface ElfSegment {
  readonly type: number;
  readonly offset: number;
  readonly vaddr: bigint;
  readonly paddr: bigint;
  readonly filesz: number;
}

/** Elf64_Ehdr and Elf64_Phdr fields at their gABI offsets. */
function parseElf(file: Buffer) {
  expect([...file.subarray(0, 7)]).toEqual([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]);
  const phoff = Number(file.readBigUInt64LE(32));
  const phnum = file.readUInt16LE(56);
  expect(file.readUInt16LE(54)).toBe(56);
  const segments: ElfSegment[] = Array.from({ length: phnum }, (_, i) => {
    const at = phoff + 56 * i;
    return {
      type: file.readUInt32LE(at),
      offset: Number(file.readBigUInt64LE(at + 8)),
      vaddr: file.readBigUInt64LE(at + 16),
      paddr: file.readBigUInt64LE(at + 24),
      filesz: Number(file.readBigUInt64LE(at + 32)),
    };
  });
  return { type: file.readUInt16LE(16), machine: file.readUInt16LE(18), segments };
}

/** Elf64_Nhdr records of a PT_NOTE. */
function parseNotes(notes: Buffer): Array<{ name: string; type: number; desc: Buffer }> {
  const out = [];
  for (let at = 0; at < notes.length; ) {
    const namesz = notes.readUInt32LE(at);
    const descsz = notes.readUInt32LE(at + 4);
    const type = notes.readUInt32LE(at + 8);
    const name = notes.subarray(at + 12, at + 12 + namesz - 1).toString("latin1");
    const descAt = at + 12 + ((namesz + 3) & ~3);
    out.push({ name, type, desc: notes.subarray(descAt, descAt + descsz) });
    at = descAt + ((descsz + 3) & ~3);
  }
  return out;
}

/** LiME: 32-byte headers {u32 magic, u32 version, u64 s_addr, u64 e_addr (inclusive), u8 reserved[8]} each followed by its range. */
function parseLime(file: Buffer): Array<{ start: bigint; end: bigint; bytes: Buffer }> {
  const ranges = [];
  for (let at = 0; at < file.length; ) {
    expect(file.readUInt32LE(at)).toBe(0x4c694d45);
    expect(file.readUInt32LE(at + 4)).toBe(1);
    const start = file.readBigUInt64LE(at + 8);
    const end = file.readBigUInt64LE(at + 16);
    expect([...file.subarray(at + 24, at + 32)]).toEqual([0, 0, 0, 0, 0, 0, 0, 0]);
    const size = Number(end - start + 1n);
    ranges.push({ start, end, bytes: file.subarray(at + 32, at + 32 + size) });
    at += 32 + size;
  }
  return ranges;
}

describe("kvmictl dump --format elf", { timeout: 120_000 }, () => {
  it("writes a core with one PT_LOAD per backed range, the hole as a gap, and one NT_PRSTATUS per vCPU", async () => {
    const core = join(dir, "guest.core");
    const result = await spawnCli("dump", "dump-a", "--format", "elf", "--out", core);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stderr).toMatch(/^dumped 16\.0 MiB of vms\/\S+ to \S+ in [\d.]+ s \([\d.]+ \S+\/s\); 15\.6 MiB read, 388\.0 KiB in holes; elf, 2 range\(s\)\n$/);
    const file = readFileSync(core);
    const elf = parseElf(file);
    expect(elf.type).toBe(4); // ET_CORE
    expect(elf.machine).toBe(62); // EM_X86_64
    const [note, ...loads] = elf.segments;
    expect(note!.type).toBe(4); // PT_NOTE
    const ram = guestRam();
    expect(loads.map((s) => [s.type, s.paddr, s.vaddr, s.filesz])).toEqual(ram.map((r) => [1, r.gpa, r.gpa, r.bytes.length]));
    for (const [i, load] of loads.entries()) expect(file.subarray(load.offset, load.offset + load.filesz).equals(ram[i]!.bytes)).toBe(true);
    // The legacy hole 0x9f000..0x100000 is in no segment.
    expect(loads.some((s) => s.paddr <= 0xa0000n && s.paddr + BigInt(s.filesz) > 0xa0000n)).toBe(false);
    const notes = parseNotes(file.subarray(note!.offset, note!.offset + note!.filesz));
    expect(notes.map((n) => [n.name, n.type, n.desc.length])).toEqual([["CORE", 1, 336], ["CORE", 1, 336]]);
    for (const [i, n] of notes.entries()) {
      const regs = vm.guest.vcpus[i]!.state.regs;
      const sregs = vm.guest.vcpus[i]!.state.sregs;
      expect(n.desc.readUInt32LE(32)).toBe(i + 1); // pr_pid
      const reg = (k: number) => n.desc.readBigUInt64LE(112 + 8 * k); // pr_reg, user_regs_struct order
      expect(reg(16)).toBe(regs.rip);
      expect(reg(19)).toBe(regs.rsp);
      expect(reg(10)).toBe(regs.rax);
      expect(reg(17)).toBe(BigInt(sregs.cs.selector));
      expect(reg(22)).toBe(sregs.gs.base);
    }
  });

  it("is readable by gdb without a vmlinux: x/8xb shows the bytes the bridge reads", async () => {
    try {
      execFileSync("gdb", ["--version"], { stdio: "ignore" });
    } catch {
      throw new Error("this test needs Debian's gdb: apt-get install gdb (test/setup/prepare.sh installs it)");
    }
    const core = join(dir, "gdb.core");
    const result = await spawnCli("dump", "dump-a", "--format", "elf", "--out", core);
    expect(result.code, result.stderr).toBe(0);
    const walk = guestModel.walkPageTables(vm.guest.memory, vm.guest.workload!.swapperCr3, guestModel.LINUX_BANNER_GVA)!;
    const bridgeBytes = await bridge.client.vm(vm.uuid).readPhysical(walk.gpa, 8);
    const output = await new Promise<string>((resolve, reject) =>
      execFile("gdb", ["-nx", "-batch", "-c", core, "-ex", `x/8xb 0x${walk.gpa.toString(16)}`], { cwd: REPO_ROOT, timeout: 30_000 }, (err, stdout, stderr) =>
        err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout),
      ),
    );
    const line = output.split("\n").find((l) => l.startsWith(`0x${walk.gpa.toString(16)}:`));
    expect(line, output).toBeDefined();
    const printed = line!.split(":")[1]!.trim().split(/\s+/).map((b) => parseInt(b, 16));
    expect(printed).toEqual([...bridgeBytes]);
    expect(Buffer.from(bridgeBytes).toString("latin1")).toBe("Linux ve");
  });
});

describe("kvmictl dump --format lime", { timeout: 120_000 }, () => {
  it("writes one LiME range per backed range: header, then exactly its bytes", async () => {
    const out = join(dir, "guest.lime");
    const result = await spawnCli("dump", "dump-a", "--format", "lime", "--out", out, "--json");
    expect(result.code, result.stderr).toBe(0);
    expect(JSON.parse(result.stdout)).toMatchObject({ format: "lime", ranges: 2 });
    const ranges = parseLime(readFileSync(out));
    const ram = guestRam();
    expect(ranges.map((r) => [r.start, r.end])).toEqual(ram.map((r) => [r.gpa, r.gpa + BigInt(r.bytes.length) - 1n]));
    for (const [i, r] of ranges.entries()) expect(r.bytes.equals(ram[i]!.bytes)).toBe(true);
  });
});

describe("progress and resume", { timeout: 120_000 }, () => {
  it("prints progress lines on a non-terminal stderr with --progress, then the summary", async () => {
    const out = join(dir, "progress.img");
    const result = await spawnCli("dump", "dump-a", "--out", out, "--progress", "--chunk-size", "4k");
    expect(result.code, result.stderr).toBe(0);
    const lines = result.stderr.trim().split("\n");
    expect(lines.length).toBeGreaterThanOrEqual(2);
    for (const l of lines.slice(0, -1)) expect(l).toMatch(/^dump: \d+\.\d% [\d.]+ \S+ of 16\.0 MiB, [\d.]+ \S+\/s$/);
    expect(lines.at(-2)).toMatch(/^dump: 100\.0% 16\.0 MiB of 16\.0 MiB/);
    expect(lines.at(-1)).toMatch(/^dumped 16\.0 MiB of /);
    expect(statSync(out).size).toBe(MEMORY_MIB * MiB);
  });

  it.each<DumpFormat>(["raw", "elf", "lime"])("an aborted %s dump resumed gives the bytes of one uninterrupted run", async (format) => {
    const handle = bridge.client.vm(vm.uuid);
    const whole = join(dir, `whole.${format}`);
    const parts = join(dir, `parts.${format}`);
    await dumpToFile(handle, whole, { format, chunkSize: 64 * 1024 });
    const abort = new AbortController();
    const first = dumpToFile(handle, parts, {
      format, chunkSize: 64 * 1024, signal: abort.signal,
      onProgress: (p) => p.bytesDone * 5n >= p.bytesTotal * 2n && abort.abort(),
    });
    await expect(first).rejects.toBeInstanceOf(CancelledError);
    expect(existsSync(resumeStatePath(parts))).toBe(true);
    const resumed = await dumpToFile(handle, parts, { format, chunkSize: 64 * 1024, resume: true });
    expect(resumed.resumedAt).toBeGreaterThan(0n);
    expect(resumed.bytesDone).toBe(BigInt(MEMORY_MIB * MiB));
    expect(readFileSync(parts).equals(readFileSync(whole))).toBe(true);
    expect(existsSync(resumeStatePath(parts))).toBe(false);
  });

  it("kvmictl dump killed mid-way and run again with --resume gives the same file", async () => {
    const whole = join(dir, "cli-whole.core");
    const parts = join(dir, "cli-parts.core");
    expect((await spawnCli("dump", "dump-a", "--format", "elf", "--out", whole)).code).toBe(0);
    const child = spawn(process.execPath, [KVMICTL_BIN, "--target", bridge.target, "dump", "dump-a", "--format", "elf", "--out", parts, "--chunk-size", "4k"], {
      cwd: REPO_ROOT,
      stdio: "ignore",
    });
    const exited = new Promise((resolve) => child.on("exit", resolve));
    // Kill it (no chance to clean up) once its state file shows real progress.
    for (;;) {
      const state = (() => {
        try {
          return JSON.parse(readFileSync(resumeStatePath(parts), "utf8")) as { nextGpa: string };
        } catch {
          return undefined;
        }
      })();
      if (state !== undefined && BigInt(state.nextGpa) > 0n) break;
      if (child.exitCode !== null) throw new Error("the dump finished before it could be interrupted");
      await new Promise((r) => setTimeout(r, 5));
    }
    child.kill("SIGKILL");
    await exited;
    const again = await spawnCli("dump", "dump-a", "--format", "elf", "--out", parts, "--resume");
    expect(again.code, again.stderr).toBe(0);
    expect(again.stderr).toMatch(/; elf, 2 range\(s\), resumed at [\d.]+ \S+\n$/);
    expect(readFileSync(parts).equals(readFileSync(whole))).toBe(true);
    const wrong = await spawnCli("dump", "dump-a", "--format", "lime", "--out", parts, "--resume");
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toMatch(/nothing to resume/);
  });
});
