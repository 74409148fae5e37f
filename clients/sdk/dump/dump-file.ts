// SPDX-License-Identifier: Apache-2.0
/**
 * {@link dumpToFile}: guest physical memory to a file in one pass over DumpMemory, as a raw sparse
 * image, an ELF64 core (QEMU `dump-guest-memory` style) or a LiME file. Holes are never written:
 * in the raw image they are sparse gaps, in ELF and LiME they are gaps between ranges.
 *
 * The ELF program header table goes at the end of the file (e_phoff says where; the gABI allows
 * it anywhere), so one pass suffices without knowing the memory map first. Progress is kept in a
 * small state file next to the output (`<file>.kvmi-resume`) after each chunk; `resume` truncates
 * the output to the last recorded point and continues from there, so an interrupted dump (even a
 * killed process) and its resumption give the same bytes as one uninterrupted run of a guest that
 * did not change meanwhile.
 *
 * @see ../../README.md ("Memory dumps")
 */
import { open, readFile, rename, rm, writeFile } from "node:fs/promises";
import type { FileHandle } from "node:fs/promises";
import type { VmHandle } from "../client.js";
import type { X86Regs } from "../command-types.js";
import {
  ELF64_EHDR_BYTES, elfHeader, LIME_HEADER_BYTES, limeHeader, programHeader, prstatusNotes, PT_LOAD, PT_NOTE,
} from "./dump-formats.js";
import type { VcpuRegisters } from "./dump-formats.js";

/** Output formats of {@link dumpToFile}. */
export type DumpFormat = "raw" | "elf" | "lime";

/** Options of {@link dumpToFile}. */
export interface DumpToFileOptions {
  /** `raw` (default): byte offset = gpa − start; `elf`: ELF64 core; `lime`: LiME ranges. */
  readonly format?: DumpFormat;
  /** First GPA, a multiple of 4096 (default 0). */
  readonly start?: bigint;
  /** Bytes, a multiple of 4096; 0 or absent: up to the end of guest memory. */
  readonly length?: bigint;
  /** Bytes per streamed chunk (see `VmHandle.dump`). */
  readonly chunkSize?: number;
  /** Continue the partial dump recorded in `<file>.kvmi-resume` instead of starting over. */
  readonly resume?: boolean;
  readonly signal?: AbortSignal;
  /** Called after each chunk. */
  readonly onProgress?: (progress: DumpFileProgress) => void;
}

/** Where a dump is. */
export interface DumpFileProgress {
  /** Bytes of the range processed (holes included), counting what a resumed run found done. */
  readonly bytesDone: bigint;
  readonly bytesTotal: bigint;
  readonly dataBytes: bigint;
  readonly holeBytes: bigint;
}

/** The result of {@link dumpToFile}. */
export interface DumpFileResult extends DumpFileProgress {
  readonly format: DumpFormat;
  /** The readable ranges, as written (ELF PT_LOADs, LiME ranges). */
  readonly ranges: ReadonlyArray<{ readonly gpa: bigint; readonly length: bigint }>;
  /** Size of the output file. */
  readonly fileBytes: bigint;
  /** Where a resumed dump picked up; `undefined` for a fresh one. */
  readonly resumedAt: bigint | undefined;
}

/** A `resume` that cannot continue: no state file, or one of another dump. */
export class DumpResumeError extends Error {
  override readonly name = "DumpResumeError";
}

/** The state file's contents (bigints as decimal strings). */
interface ResumeState {
  readonly version: 1;
  readonly format: DumpFormat;
  readonly vm: string;
  readonly start: string;
  readonly length: string;
  /** Exclusive end of the whole dump; "" until the bridge told the total. */
  end: string;
  nextGpa: string;
  fileBytes: number;
  dataBytes: string;
  holeBytes: string;
  ranges: Array<{ gpa: string; length: string; offset: number }>;
  notes: { offset: number; length: number } | undefined;
}

const STATE_SUFFIX = ".kvmi-resume";
const STATE_SAVE_INTERVAL_MS = 250;

/** The state file of a dump to `path`. */
export function resumeStatePath(path: string): string {
  return `${path}${STATE_SUFFIX}`;
}

/**
 * Dumps guest physical memory of `vm` to `path`.
 * @throws DumpResumeError when `resume` finds nothing to continue; the SDK's errors from
 *   DumpMemory (CancelledError on abort: the state file then allows `resume`).
 */
export async function dumpToFile(vm: VmHandle, path: string, options: DumpToFileOptions = {}): Promise<DumpFileResult> {
  const format = options.format ?? "raw";
  const start = options.start ?? 0n;
  const length = options.length ?? 0n;
  const statePath = resumeStatePath(path);
  let state: ResumeState;
  let file: FileHandle;
  let resumedAt: bigint | undefined;
  if (options.resume) {
    state = await loadState(statePath, { format, vm: vm.name, start, length });
    file = await open(path, "r+");
    await file.truncate(state.fileBytes);
    resumedAt = BigInt(state.nextGpa);
  } else {
    await rm(statePath, { force: true });
    state = {
      version: 1, format, vm: vm.name, start: String(start), length: String(length), end: "", nextGpa: String(start),
      fileBytes: 0, dataBytes: "0", holeBytes: "0", ranges: [], notes: undefined,
    };
    file = await open(path, "w");
    if (format === "elf") {
      // The header is written last (it needs the program header count); the notes go right after it.
      const notes = prstatusNotes(await vcpuRegisters(vm, options.signal));
      await file.write(new Uint8Array(ELF64_EHDR_BYTES), 0, ELF64_EHDR_BYTES, 0);
      await file.write(notes, 0, notes.length, ELF64_EHDR_BYTES);
      state.notes = { offset: ELF64_EHDR_BYTES, length: notes.length };
      state.fileBytes = ELF64_EHDR_BYTES + notes.length;
    }
  }
  let lastSave = 0;
  const save = async (force: boolean): Promise<void> => {
    if (!force && performance.now() - lastSave < STATE_SAVE_INTERVAL_MS) return;
    lastSave = performance.now();
    await writeFile(`${statePath}.tmp`, JSON.stringify(state));
    await rename(`${statePath}.tmp`, statePath);
  };
  const progress = (): DumpFileProgress => ({
    bytesDone: BigInt(state.nextGpa) - start,
    bytesTotal: state.end === "" ? 0n : BigInt(state.end) - start,
    dataBytes: BigInt(state.dataBytes),
    holeBytes: BigInt(state.holeBytes),
  });
  try {
    await save(true);
    const from = BigInt(state.nextGpa);
    const remaining = state.end === "" ? (length === 0n ? 0n : start + length - from) : BigInt(state.end) - from;
    if (state.end === "" || remaining > 0n) {
      const chunks = vm.dump({ start: from, length: remaining, ...(options.chunkSize !== undefined && { chunkSize: options.chunkSize }), ...(options.signal && { signal: options.signal }) });
      for await (const chunk of chunks) {
        if (state.end === "") state.end = String(from + chunk.bytesTotal);
        // `bytesDone` runs ahead of the data (pages in flight); what is on disk ends where the data and holes end.
        let holes = 0n;
        let covered = BigInt(state.nextGpa);
        for (const h of chunk.holes) {
          holes += h.length;
          if (h.address + h.length > covered) covered = h.address + h.length;
        }
        state.holeBytes = String(BigInt(state.holeBytes) + holes);
        if (chunk.data.length > 0) {
          await writeData(file, state, format, start, chunk.gpa, chunk.data);
          const end = chunk.gpa + BigInt(chunk.data.length);
          if (end > covered) covered = end;
        }
        state.nextGpa = String(covered);
        await save(false);
        options.onProgress?.(progress());
      }
      state.nextGpa = state.end;
    }
    await finish(file, state, format, start);
  } catch (err) {
    await save(true).catch(() => undefined);
    await file.close();
    throw err;
  }
  const fileBytes = BigInt((await file.stat()).size);
  await file.close();
  await rm(statePath, { force: true });
  return {
    ...progress(),
    format,
    ranges: state.ranges.map((r) => ({ gpa: BigInt(r.gpa), length: BigInt(r.length) })),
    fileBytes,
    resumedAt,
  };
}

async function loadState(statePath: string, expected: { format: DumpFormat; vm: string; start: bigint; length: bigint }): Promise<ResumeState> {
  let text: string;
  try {
    text = await readFile(statePath, "utf8");
  } catch {
    throw new DumpResumeError(`nothing to resume: ${statePath} does not exist (it is kept only while a dump is incomplete)`);
  }
  let state: ResumeState;
  try {
    state = JSON.parse(text) as ResumeState;
  } catch {
    throw new DumpResumeError(`${statePath} is not a dump state file`);
  }
  const mismatch = [
    state.version !== 1 && "version",
    state.format !== expected.format && `format (${state.format})`,
    state.vm !== expected.vm && `VM (${state.vm})`,
    state.start !== String(expected.start) && `start (${state.start})`,
    state.length !== String(expected.length) && `length (${state.length})`,
  ].filter(Boolean);
  if (mismatch.length > 0) throw new DumpResumeError(`the partial dump was made with another ${mismatch.join(", ")}: repeat its options, or start over without --resume`);
  return state;
}

/** Writes readable bytes at `gpa`: extends the open range or starts a new one. */
async function writeData(file: FileHandle, state: ResumeState, format: DumpFormat, start: bigint, gpa: bigint, data: Uint8Array): Promise<void> {
  let range = state.ranges.at(-1);
  if (range === undefined || BigInt(range.gpa) + BigInt(range.length) !== gpa) {
    const offset = format === "raw" ? Number(gpa - start) : state.fileBytes + (format === "lime" ? LIME_HEADER_BYTES : 0);
    range = { gpa: String(gpa), length: "0", offset };
    state.ranges.push(range);
  }
  const at = range.offset + Number(gpa - BigInt(range.gpa));
  await file.write(data, 0, data.length, at);
  range.length = String(BigInt(range.length) + BigInt(data.length));
  if (format === "lime") {
    const header = limeHeader(BigInt(range.gpa), BigInt(range.gpa) + BigInt(range.length) - 1n);
    await file.write(header, 0, header.length, range.offset - LIME_HEADER_BYTES);
  }
  state.fileBytes = at + data.length;
  state.dataBytes = String(BigInt(state.dataBytes) + BigInt(data.length));
}

/** Raw: the file spans the whole range (trailing holes included). ELF: program headers and header. */
async function finish(file: FileHandle, state: ResumeState, format: DumpFormat, start: bigint): Promise<void> {
  if (format === "raw") {
    await file.truncate(Number(BigInt(state.end || String(start)) - start));
    return;
  }
  if (format !== "elf") return;
  const notes = state.notes!;
  const phdrs = [
    programHeader({ type: PT_NOTE, offset: BigInt(notes.offset), vaddr: 0n, paddr: 0n, filesz: BigInt(notes.length), memsz: 0n }),
    ...state.ranges.map((r) =>
      programHeader({ type: PT_LOAD, offset: BigInt(r.offset), vaddr: BigInt(r.gpa), paddr: BigInt(r.gpa), filesz: BigInt(r.length), memsz: BigInt(r.length) }),
    ),
  ];
  const phoff = (state.fileBytes + 7) & ~7;
  const table = new Uint8Array(phdrs.length * phdrs[0]!.length);
  phdrs.forEach((p, i) => table.set(p, i * p.length));
  await file.write(table, 0, table.length, phoff);
  await file.truncate(phoff + table.length);
  const header = elfHeader(BigInt(phoff), phdrs.length);
  await file.write(header, 0, header.length, 0);
}

/** Registers of every vCPU for the NT_PRSTATUS notes; a vCPU the guest has not started gets zeros. */
async function vcpuRegisters(vm: VmHandle, signal: AbortSignal | undefined): Promise<VcpuRegisters[]> {
  const { vcpuCount } = await vm.getVmInfo({ ...(signal && { signal }) });
  return Promise.all(
    Array.from({ length: vcpuCount }, async (_, index) => {
      try {
        const r = await vm.getRegisters(index, { ...(signal && { signal }) });
        return { index, regs: r.regs as X86Regs, sregs: r.sregs };
      } catch {
        return { index, regs: undefined, sregs: undefined };
      }
    }),
  );
}
