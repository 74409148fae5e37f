// SPDX-License-Identifier: Apache-2.0
// The trace example (clients/examples/trace.ts) against Debian's kernel behind kvmi-qemu: a breakpoint
// on the ticker's syscall, followed for several seconds. It used to end ~0.2 s after arming: its
// `--duration` timer started before the preparation, which takes seconds of gdbstub round trips on
// a real guest, so the abort had already fired when the event loop began.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TICKER_SYSCALL } from "../guest/build.js";
import { startClientsBridge, startNode, tsxArgs, type ClientsBridge } from "../support/clients-harness.js";
import { startLinuxVm, type LinuxVm } from "./linux-harness.js";

let bridge: ClientsBridge;
let vm: LinuxVm;

beforeAll(async () => {
  bridge = await startClientsBridge({ vms: [] });
  vm = await startLinuxVm(bridge);
});

afterAll(async () => {
  await vm?.stop();
  await bridge?.stop();
});

interface Hit {
  readonly t: number;
  readonly vcpu: number;
  readonly pid: number;
  readonly comm: string;
}

const traceArgs = (...extra: string[]): string[] => [
  ...tsxArgs("clients/examples/trace.ts"),
  "--target", bridge.target, "--vm", "linux-0", "--profile", vm.image.profile,
  "--symbol", TICKER_SYSCALL.kernelFunction, "--method", "int3", "--json", ...extra,
];

const hitsOf = (stdout: string): Hit[] =>
  stdout.split("\n").filter((line) => line.startsWith("{\"t\"")).map((line) => JSON.parse(line) as Hit);

describe("trace on the real guest", () => {
  it("follows kvmi-ticker's getppid for seconds and ends only when asked", async () => {
    const ticker = vm.snapshot.ps.find((p) => p.comm === "kvmi-ticker")!;
    const trace = startNode(traceArgs("--comm", "kvmi-ticker", "--follow"));
    await trace.waitFor(/armed: INT3 at __x64_sys_getppid/, 60_000);
    // Six seconds of tracing, checked each second: the process is alive and hits keep arriving.
    let seen = 0;
    for (let second = 1; second <= 6; second++) {
      await new Promise((resolve) => setTimeout(resolve, 1000));
      expect(trace.child.exitCode, `trace ended after ${second - 1} s:\n${trace.stderr()}`).toBeNull();
      const now = hitsOf(trace.stdout()).length;
      expect(now, `no new hit in second ${second}`).toBeGreaterThan(seen);
      seen = now;
    }
    trace.child.kill("SIGINT");
    const result = await trace.exited;
    expect(result.code, result.stderr).toBe(0);
    const hits = hitsOf(result.stdout);
    expect(hits.every((hit) => hit.pid === ticker.pid && hit.comm === "kvmi-ticker")).toBe(true);
    expect(hits.at(-1)!.t).toBeGreaterThan(5);
    const summary = JSON.parse(result.stdout.trim().split("\n").at(-1)!) as { syscalls: Record<string, number>; total: number; seconds: number };
    expect(summary.syscalls).toEqual({ [String(ticker.pid)]: hits.length });
    expect(summary.seconds).toBeGreaterThan(6);
    expect(result.stderr).toMatch(/disarmed: entry byte is 0xf \(restored\)/);
  });

  it("--duration counts from arming: a 3 s trace traces for 3 s however long the preparation took", async () => {
    const started = performance.now();
    const result = await new Promise<Awaited<ReturnType<typeof startNode>["exited"]>>((resolve) => {
      const trace = startNode(traceArgs("--duration", "3000"));
      void trace.exited.then(resolve);
    });
    expect(result.code, result.stderr).toBe(0);
    const summary = JSON.parse(result.stdout.trim().split("\n").at(-1)!) as { syscalls: Record<string, number>; total: number; seconds: number };
    expect(summary.seconds).toBeGreaterThanOrEqual(3);
    expect(summary.total).toBeGreaterThan(3);
    expect((performance.now() - started) / 1000).toBeGreaterThan(summary.seconds);
  });
});
