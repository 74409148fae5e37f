// SPDX-License-Identifier: Apache-2.0
/**
 * Forwarder process: the in-pod KVMI forwarder of KubeVirt node mode (`startForwarder` from
 * @kvmi/service), in a process of its own as it runs in its own container. The emulated VM
 * connects to its socket; it carries the bytes to the raw tool's forwarded listener in run.ts.
 */
import { silentLogger } from "@kvmi/kvm-bridge";
import { startForwarder } from "@kvmi/service";
import { serve } from "./lib/ipc.js";

serve({
  start: async (params: { listenPath: string; upstreamPath: string }): Promise<{ listenPath: string }> => {
    const forwarder = await startForwarder({
      listenPath: params.listenPath,
      socketMode: 0o600,
      upstream: { kind: "unix", path: params.upstreamPath },
      origin: () => ({ namespace: "bench", name: "vm", pod: "" }),
      logger: silentLogger,
    });
    return { listenPath: forwarder.listenPath };
  },
  memory: () => process.memoryUsage(),
});
