// SPDX-License-Identifier: Apache-2.0
/** Small helpers the benchmark's phases share: progress lines, polling a child, profiling a phase. */
import { join } from "node:path";
import type { ChildHandle } from "./ipc.js";

export const progress = (text: string): void => void process.stderr.write(`[bench] ${text}\n`);
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * With --profile, samples `children` (name → process) with the in-process V8 profiler while
 * `body` runs and writes `<dir>/<name>-<phase>.cpuprofile`.
 */
export async function profiled<T>(dir: string | undefined, phase: string, children: Readonly<Record<string, ChildHandle>>, body: () => Promise<T>): Promise<T> {
  if (dir === undefined) return body();
  const entries = Object.entries(children);
  await Promise.all(entries.map(([, child]) => child.call("profileStart", { intervalUs: 250 })));
  try {
    return await body();
  } finally {
    await Promise.all(entries.map(([name, child]) => child.call("profileStop", { file: join(dir, `${name}-${phase}.cpuprofile`) })));
  }
}

export async function waitFor(condition: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await sleep(50);
  }
}

/**
 * After the controllers left: waits until the bridge has undone their hooks (so stopping the
 * emulator cannot cut the undo short), then records the bridge's warnings and unhandled rejections.
 */
export async function drainBridge(child: ChildHandle, what: string, warnings: string[]): Promise<void> {
  await waitFor(() => child.call<boolean>("settled"), 5000, `${what}: hook ledgers empty`).catch((err: Error) => warnings.push(err.message));
  for (const p of await child.call<Array<{ text: string; count: number }>>("problems")) warnings.push(`${what}: ${p.text} (×${p.count})`);
}
