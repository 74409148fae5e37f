// SPDX-License-Identifier: Apache-2.0
/**
 * `kvmictl dump <vm> --out FILE [--format raw|elf|lime] [--progress] [--resume]`: guest physical
 * memory to a file through the SDK's `dumpToFile`. Progress goes to stderr: a redrawn bar on a
 * terminal, and with `--progress` one line a second also when stderr is a pipe or a log file. The
 * summary line comes last. An interrupted dump keeps its state file; `--resume` continues it.
 */
import { readFile } from "node:fs/promises";
import { CancelledError, dumpToFile, resumeStatePath } from "@kvmi/clients";
import type { DumpFileProgress, DumpFormat } from "@kvmi/clients";
import { parseLength, parseSize, UsageError } from "./args.js";
import type { CliContext } from "./context.js";
import { formatBytes, progressBar, toJson } from "./format.js";

/** Options of `kvmictl dump`. */
export interface DumpCommandOptions {
  readonly out: string;
  readonly format?: string;
  readonly start?: string;
  readonly length?: string;
  readonly chunkSize?: string;
  readonly progress?: boolean;
  readonly resume?: boolean;
}

const FORMATS: readonly DumpFormat[] = ["raw", "elf", "lime"];
/** Seconds between progress lines when stderr is not a terminal. */
const LINE_INTERVAL_MS = 1000;

/** `dump <vm> --out FILE`. */
export async function dump(ctx: CliContext, ref: string, options: DumpCommandOptions): Promise<number> {
  const format = (options.format ?? "raw").toLowerCase() as DumpFormat;
  if (!FORMATS.includes(format)) throw new UsageError(`--format: "${options.format}" is not one of ${FORMATS.join(", ")}`);
  const start = options.start === undefined ? 0n : parseSize(options.start, "--start");
  const length = options.length === undefined ? 0n : parseSize(options.length, "--length");
  const chunkSize = options.chunkSize === undefined ? undefined : parseLength(options.chunkSize, "--chunk-size");
  if (start % 4096n !== 0n || length % 4096n !== 0n) throw new UsageError("--start and --length must be multiples of 4096");
  const vm = await ctx.resolveVm(ref);
  const tty = ctx.io.stderrIsTTY && !ctx.json;
  const lines = options.progress === true && !tty;
  const started = performance.now();
  let lastDraw = 0;
  const rateOf = (p: DumpFileProgress, since: bigint): number => Number(p.bytesDone - since) / Math.max(0.001, (performance.now() - started) / 1000);
  let resumedAt = 0n;
  const onProgress = (p: DumpFileProgress): void => {
    const now = performance.now();
    const last = p.bytesDone === p.bytesTotal;
    if (tty && (now - lastDraw > 100 || last)) {
      lastDraw = now;
      ctx.io.stderr(`\r${progressBar(p.bytesDone, p.bytesTotal)}  ${formatBytes(rateOf(p, resumedAt))}/s `);
    } else if (lines && (now - lastDraw >= LINE_INTERVAL_MS || last)) {
      lastDraw = now;
      const percent = p.bytesTotal === 0n ? 100 : Number((p.bytesDone * 1000n) / p.bytesTotal) / 10;
      ctx.err(`dump: ${percent.toFixed(1)}% ${formatBytes(p.bytesDone)} of ${formatBytes(p.bytesTotal)}, ${formatBytes(rateOf(p, resumedAt))}/s`);
    }
  };
  let result;
  try {
    if (options.resume) {
      // The rate counts only this run's bytes.
      const peek = await readResumePoint(options.out);
      resumedAt = peek === undefined ? 0n : peek - start;
    }
    result = await dumpToFile(ctx.client.vm(vm.uuid), options.out, {
      format, start, length, onProgress, signal: ctx.io.signal,
      ...(chunkSize !== undefined && { chunkSize }),
      ...(options.resume && { resume: true }),
    });
  } catch (err) {
    if (tty) ctx.io.stderr("\n");
    if (err instanceof CancelledError && ctx.io.signal.aborted) {
      ctx.err(`kvmictl: dump interrupted; ${options.out} is incomplete: run the same command with --resume to continue`);
      return 1;
    }
    throw err;
  }
  if (tty) ctx.io.stderr("\n");
  const seconds = (performance.now() - started) / 1000;
  const rate = Number(result.bytesDone - resumedAt) / Math.max(0.001, seconds);
  if (ctx.json) {
    // The JSON convention (README): addresses as 0x strings, sizes and counts as numbers.
    ctx.out(toJson({
      vm: vm.name, file: options.out, format, start, bytes: Number(result.bytesTotal), dataBytes: Number(result.dataBytes), holeBytes: Number(result.holeBytes),
      ranges: result.ranges.length, fileBytes: Number(result.fileBytes), resumedAt: result.resumedAt, seconds: Number(seconds.toFixed(3)), bytesPerSecond: Math.round(rate),
    }));
  } else {
    const details = [
      ...(format !== "raw" ? [`${format}, ${result.ranges.length} range(s)`] : []),
      ...(result.resumedAt !== undefined ? [`resumed at ${formatBytes(result.resumedAt - start)}`] : []),
    ];
    ctx.err(
      `dumped ${formatBytes(result.bytesTotal)} of ${vm.name} to ${options.out} in ${seconds.toFixed(2)} s (${formatBytes(rate)}/s); ` +
        `${formatBytes(result.dataBytes)} read, ${formatBytes(result.holeBytes)} in holes${details.length > 0 ? `; ${details.join(", ")}` : ""}`,
    );
  }
  return 0;
}

/** The GPA a resumable dump of `out` stopped at, if its state file is readable. */
async function readResumePoint(out: string): Promise<bigint | undefined> {
  try {
    return BigInt((JSON.parse(await readFile(resumeStatePath(out), "utf8")) as { nextGpa: string }).nextGpa);
  } catch {
    return undefined;
  }
}
