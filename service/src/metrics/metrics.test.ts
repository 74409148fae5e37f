// SPDX-License-Identifier: Apache-2.0
// Bridge metrics on their own registry, and the /metrics endpoint on a real ephemeral port.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { commandStatusOf, createBridgeMetrics, startMetricsServer } from "./index.js";
import type { BridgeMetrics, MetricsServer } from "./index.js";

const NAMES = [
  "kvmi_bridge_vms_hooked",
  "kvmi_bridge_commands_total",
  "kvmi_bridge_command_duration_seconds",
  "kvmi_bridge_event_round_trip_seconds",
  "kvmi_bridge_events_total",
  "kvmi_bridge_event_auto_replies_total",
  "kvmi_bridge_bytes_read_total",
  "kvmi_bridge_unhook_to_close_seconds",
  "kvmi_bridge_grpc_requests_total",
];

let metrics: BridgeMetrics;
let server: MetricsServer;

beforeAll(async () => {
  metrics = createBridgeMetrics();
  metrics.vmsHooked.set(2);
  metrics.observeCommand("KVMI_VCPU_GET_REGISTERS", "ok", 0.00004);
  metrics.observeCommand("KVMI_VCPU_GET_REGISTERS", commandStatusOf({ code: "KVMI_TIMEOUT" }), 1);
  metrics.eventsTotal.inc({ event: "cr" });
  metrics.observeEventReply("cr", 0.002);
  metrics.countAutoReply("cr", "deadline");
  metrics.bytesReadTotal.inc(4096);
  metrics.unhookToCloseSeconds.observe(0.3);
  metrics.grpcRequestsTotal.inc({ method: "/kvmi.v1.IntrospectionService/GetVm", code: "OK" });
  server = await startMetricsServer("127.0.0.1:0", metrics.registry);
});

afterAll(async () => {
  await server.close();
});

describe("metrics endpoint", () => {
  it("serves the text exposition format with every bridge metric and the Node defaults", async () => {
    expect(server.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    const response = await fetch(server.url);
    expect(response.status).toBe(200);
    expect(response.headers.get("content-type")).toMatch(/^text\/plain; version=0\.0\.4/);
    const body = await response.text();
    for (const name of NAMES) expect(body, name).toContain(`# TYPE ${name} `);
    expect(body).toContain("kvmi_bridge_vms_hooked 2");
    expect(body).toContain('kvmi_bridge_commands_total{command="KVMI_VCPU_GET_REGISTERS",status="timeout"} 1');
    expect(body).toContain('kvmi_bridge_command_duration_seconds_bucket{le="0.00005",command="KVMI_VCPU_GET_REGISTERS"} 1');
    expect(body).toContain('kvmi_bridge_event_auto_replies_total{event="cr",reason="deadline"} 1');
    expect(body).toContain("kvmi_bridge_bytes_read_total 4096");
    expect(body).toContain("process_cpu_user_seconds_total");
    expect(body).toContain("nodejs_eventloop_lag_seconds");
  });

  it("answers 404 elsewhere and 405 to other methods on /metrics", async () => {
    const base = server.url.replace(/\/metrics$/, "");
    expect((await fetch(`${base}/`)).status).toBe(404);
    expect((await fetch(`${base}/metrics/x`)).status).toBe(404);
    expect((await fetch(`${base}/healthz`)).status).toBe(404);
    expect((await fetch(`${server.url}?name[]=x`)).status).toBe(200);
    const post = await fetch(server.url, { method: "POST" });
    expect(post.status).toBe(405);
    expect(post.headers.get("allow")).toBe("GET, HEAD");
  });

  it("uses a private registry, so two bridges in one process do not collide", () => {
    expect(() => createBridgeMetrics({ defaultMetrics: false })).not.toThrow();
  });

  it("refuses a malformed listen address and reports EADDRINUSE", async () => {
    await expect(startMetricsServer("off", metrics.registry)).rejects.toThrow(/metrics listen address/);
    const port = new URL(server.url).port;
    await expect(startMetricsServer(`127.0.0.1:${port}`, metrics.registry)).rejects.toMatchObject({ code: "EADDRINUSE" });
  });
});

describe("commandStatusOf", () => {
  it("maps kvm-bridge error codes to bounded label values", () => {
    expect(commandStatusOf()).toBe("ok");
    expect(commandStatusOf({ code: "KVMI_REMOTE_ERROR" })).toBe("remote_error");
    expect(commandStatusOf({ code: "KVMI_SESSION_LOST" })).toBe("session_lost");
    expect(commandStatusOf(new Error("x"))).toBe("error");
    expect(commandStatusOf({ code: "ENOENT" })).toBe("error");
  });
});

describe("observeCommandBurst", () => {
  it("counts every command of a burst by status and observes the burst's duration once", async () => {
    const m = createBridgeMetrics({ defaultMetrics: false });
    m.observeCommandBurst("KVMI_VM_READ_PHYSICAL", 62, ["remote_error", "remote_error", "timeout"], 0.003);
    const text = await m.registry.metrics();
    expect(text).toContain('kvmi_bridge_commands_total{command="KVMI_VM_READ_PHYSICAL",status="ok"} 62');
    expect(text).toContain('kvmi_bridge_commands_total{command="KVMI_VM_READ_PHYSICAL",status="remote_error"} 2');
    expect(text).toContain('kvmi_bridge_commands_total{command="KVMI_VM_READ_PHYSICAL",status="timeout"} 1');
    expect(text).toContain('kvmi_bridge_command_duration_seconds_count{command="KVMI_VM_READ_PHYSICAL"} 1');
    expect(text).toContain('kvmi_bridge_command_duration_seconds_sum{command="KVMI_VM_READ_PHYSICAL"} 0.003');
  });
});
