// SPDX-License-Identifier: Apache-2.0
// Snapshots and dialects of kvmi-qemu against Debian's kernel (test/guest/README.md): a restored
// snapshot is a running guest in the state it was saved in, and `kvmi-qemu run --snapshot S
// --dialect kvmi-v7|v12` presents it to a bridge listening in that dialect. One VM at a time.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Profile, State, linux } from "@kvmi/clients";
import type { Session, SessionItem } from "@kvmi/clients";
import { runKvmictl } from "../support/clients-harness.js";
import { ensureGuestImage, MARKER, WORKLOAD_PROCESSES, type GuestImage } from "../guest/build.js";
import { REPO_ROOT, startClientsBridge, startNode, type ClientsBridge } from "../support/clients-harness.js";
import { ensureGuestSnapshot, startLinuxVm, type GuestSnapshot } from "./linux-harness.js";

let dir: string;
let bridge: ClientsBridge;
let image: GuestImage;
let snapshot: GuestSnapshot;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "kvmi-linux-dialects-"));
  // The harness's own socket speaks v9; two more listeners speak the other dialects.
  bridge = await startClientsBridge({
    vms: [],
    bridgeArgs: ["--kvmi-listen", `kvmi-v7@unix:${join(dir, "v7.sock")}`, "--kvmi-listen", `v12@unix:${join(dir, "v12.sock")}`],
  });
  image = await ensureGuestImage();
  snapshot = await ensureGuestSnapshot(image);
});

afterAll(async () => {
  await bridge?.stop();
  rmSync(dir, { recursive: true, force: true });
});

async function kvmictl(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return runKvmictl(["--target", bridge.target, ...args]);
}

async function psThroughBridge(vm: string): Promise<Map<number, string>> {
  const listed = await kvmictl("--json", "ps", vm, "--profile", image.profile);
  expect(listed.code, listed.stderr).toBe(0);
  return new Map((JSON.parse(listed.stdout) as Array<{ pid: number; comm: string }>).map((p) => [p.pid, p.comm]));
}

/** The next event matching `match`; every other event is continued. */
async function nextEvent(session: Session, match: (item: SessionItem) => boolean, timeoutMs = 60_000): Promise<SessionItem> {
  for await (const item of session.events({ signal: AbortSignal.timeout(timeoutMs) })) {
    if (match(item)) return item;
    if (item.kind === "event") await item.continue();
  }
  throw new Error("the event stream ended");
}

describe("snapshot restore", () => {
  it("gives a running guest with the workload's processes as they were saved", async () => {
    const workload = snapshot.ps.filter((p) => (WORKLOAD_PROCESSES as readonly string[]).includes(p.comm));
    expect(workload.map((p) => p.comm).sort()).toEqual([...WORKLOAD_PROCESSES].sort());
    const vm = await startLinuxVm(bridge, { name: "restored" });
    try {
      // Its own ps answers (the console and init run on) with the same workload pids.
      const ps = await vm.qemu.guestPs();
      for (const task of workload) expect(ps.find((p) => p.pid === task.pid)?.comm, task.comm).toBe(task.comm);
      // And the kernel's task list, read through the bridge, agrees.
      const ours = await psThroughBridge("restored");
      for (const task of workload) expect(ours.get(task.pid)).toBe(task.comm);
      // kvmi-marker's buffer holds its known text, and the restored process still runs: it notices a write.
      const guest = linux(bridge.client.vm(vm.backend.uuid), await Profile.load(image.profile));
      const marker = workload.find((p) => p.comm === "kvmi-marker")!;
      expect(new TextDecoder().decode(await guest.readProcessMemory(marker.pid, MARKER.gva, MARKER.text.length))).toBe(MARKER.text);
      const session = await bridge.client.attach(vm.backend.uuid, { role: "controller" });
      try {
        const seen = vm.qemu.waitForConsole(/KVMI-MARKER restored-and-running/, 30_000);
        const task = (await guest.processes()).find((p) => p.pid === marker.pid)!;
        await session.writeVirtual({ cr3: task.pageTable! }, MARKER.gva, new TextEncoder().encode("restored-and-running\0"));
        await seen;
      } finally {
        await session.release({ keepChanges: true });
      }
    } finally {
      await vm.stop();
    }
  });
});

describe("kvmi-qemu run --snapshot --dialect", () => {
  for (const dialect of ["kvmi-v7", "v12"] as const) {
    it(`presents the restored guest in ${dialect}: hooked, ps and a PAUSE_VCPU event through the bridge`, async () => {
      const name = `linux-${dialect}`;
      const socket = join(dir, dialect === "kvmi-v7" ? "v7.sock" : "v12.sock");
      const cli = startNode([
        join(REPO_ROOT, "kvm-bridge/bin/kvmi-qemu.mjs"), "run", "--kernel", image.kernel, "--initrd", image.initrd,
        "--append", image.cmdline, "--snapshot", snapshot.file, "--dialect", dialect, "--connect", `unix:${socket}`, "--name", name,
        "--log-level", "warn",
      ]);
      try {
        let uuid = "";
        for (let waited = 0; !uuid; waited += 200) {
          uuid = (await bridge.client.listVms()).find((vm) => vm.displayName === name && vm.state === State.HOOKED)?.uuid ?? "";
          if (!uuid && (waited > 60_000 || cli.child.exitCode !== null)) throw new Error(`${name} was not hooked:\n${cli.stderr()}`);
          if (!uuid) await new Promise((resolve) => setTimeout(resolve, 200));
        }
        const vm = await bridge.client.getVm(uuid);
        expect(vm.dialect).toBe(dialect);
        expect(vm.vcpuCount).toBe(2);
        const ours = await psThroughBridge(name);
        expect([...ours.values()]).toEqual(expect.arrayContaining([...WORKLOAD_PROCESSES]));
        const session = await bridge.client.attach(uuid, { role: "controller" });
        try {
          await session.pauseVcpu(0);
          const paused = await nextEvent(session, (item) => item.kind === "event" && item.type === "pauseVcpu");
          if (paused.kind !== "event") throw new Error("unreachable");
          expect(paused.vcpu).toBe(0);
          expect(paused.arch.sregs.cr3).toBeGreaterThan(0n);
          await paused.continue();
        } finally {
          await session.release();
        }
      } finally {
        cli.child.kill("SIGTERM");
        const result = await cli.exited;
        expect(result.code, result.stderr).toBe(0);
      }
    });
  }
});
