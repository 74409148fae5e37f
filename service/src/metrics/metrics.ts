// SPDX-License-Identifier: Apache-2.0
/**
 * The Prometheus metrics of the bridge (conventions §9: count guest-triggered things here, not in
 * logs). One {@link BridgeMetrics} per process, on its own registry, created by the composition
 * root and passed to whoever records. Label values are bounded sets (command and event names, the
 * statuses below), never VM names or errno text, to keep series cardinality fixed.
 *
 * @see https://prometheus.io/docs/practices/naming/
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import type { EventName } from "../config/index.js";

/**
 * Outcome of one KVMI command (the `status` label), derived from kvm-bridge's error codes by
 * {@link commandStatusOf}.
 */
export type CommandStatus =
  | "ok"
  | "remote_error"
  | "timeout"
  | "session_lost"
  | "protocol_error"
  | "unsupported"
  | "invalid_argument"
  | "error";

/** Why the bridge answered an event itself instead of the controller (the `reason` label). */
export type AutoReplyReason =
  /** The controller did not answer in time. */
  | "deadline"
  /** No controller is attached. */
  | "no_controller"
  /** The controller left with events pending. */
  | "controller_gone"
  /** The controller's stream is too far behind to take more events. */
  | "slow_consumer"
  /** The VM is being unhooked (device manager or operator). */
  | "unhook"
  /** The bridge is shutting down. */
  | "shutdown"
  /** The event's kind has no kvmi.v1 message (kvmi-v7's CREATE_VCPU and CPUID). */
  | "not_in_api";

/**
 * Buckets for one KVMI command round trip on a local socket: 20 µs (a cached reply) to 1 s
 * (a stuck vCPU), about three per decade.
 */
export const COMMAND_DURATION_BUCKETS: readonly number[] = [
  0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
];

/**
 * Buckets for event received → reply sent: includes a trip to the controller over gRPC, and the
 * default 5 s reply deadline must land inside a bucket.
 */
export const EVENT_ROUND_TRIP_BUCKETS: readonly number[] = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
];

/** Buckets for UNHOOK → socket closed: the controller's cleanup, bounded by unhookDeadlineMs. */
export const UNHOOK_TO_CLOSE_BUCKETS: readonly number[] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

/** The metrics of one bridge process. Every metric is registered on {@link registry}. */
export interface BridgeMetrics {
  /** The registry to serve (`startMetricsServer(listen, metrics.registry)`). */
  readonly registry: Registry;
  /** `kvmi_bridge_vms_hooked`: VMs with a live, handshaken KVMI connection. */
  readonly vmsHooked: Gauge;
  /**
   * `kvmi_bridge_vms_not_connected{state,reason}`: VMs a forwarder announced whose QEMU has not
   * connected: `state` is `awaiting` (within the deadline) or `missed` (past it).
   */
  readonly vmsNotConnected: Gauge<"state" | "reason">;
  /** `kvmi_bridge_commands_total{command,status}`: KVMI commands by kernel name and outcome. */
  readonly commandsTotal: Counter<"command" | "status">;
  /** `kvmi_bridge_command_duration_seconds{command}`: command sent → reply received on the socket. */
  readonly commandDurationSeconds: Histogram<"command">;
  /** `kvmi_bridge_events_total{event}`: events received from KVM. */
  readonly eventsTotal: Counter<"event">;
  /** `kvmi_bridge_event_round_trip_seconds{event}`: event received → reply written. */
  readonly eventRoundTripSeconds: Histogram<"event">;
  /** `kvmi_bridge_event_auto_replies_total{event,reason}`: replies the bridge made itself. */
  readonly eventAutoRepliesTotal: Counter<"event" | "reason">;
  /**
   * `kvmi_bridge_filter_events_total{event,outcome}`: events the controllers' event filters looked
   * at, by outcome (replied, notified, delivered, unmatched, notification_dropped). Per-rule
   * counters go on the session stream (EventFilterSummary): rule names are the clients' words, not
   * a bounded label set.
   */
  readonly filterEventsTotal: Counter<"event" | "outcome">;
  /** `kvmi_bridge_bytes_read_total`: guest physical memory bytes returned by memory-read RPCs. */
  readonly bytesReadTotal: Counter;
  /** `kvmi_bridge_unhook_to_close_seconds`: UNHOOK event sent → KVMI socket closed. */
  readonly unhookToCloseSeconds: Histogram;
  /** `kvmi_bridge_grpc_requests_total{method,code}`: finished RPCs by full method path and status name. */
  readonly grpcRequestsTotal: Counter<"method" | "code">;

  /** Records one finished KVMI command (`command` = kernel name, e.g. `KVMI_VCPU_GET_REGISTERS`). */
  observeCommand(command: string, status: CommandStatus, seconds: number): void;
  /**
   * Records a burst of commands sent in one write (the page reads of DumpMemory and
   * BatchReadMemory): each command counts in `kvmi_bridge_commands_total`, by its status (`ok` of
   * them succeeded, one entry of `failed` per other), and the burst is one duration observation,
   * from its write to its last reply (a label hash per page read showed in bulk profiles).
   */
  observeCommandBurst(command: string, ok: number, failed: readonly CommandStatus[], seconds: number): void;
  /** Records one answered event (`event` as in {@link EventName}). */
  observeEventReply(event: EventName, seconds: number): void;
  /** Records one reply the bridge made on the controller's behalf. */
  countAutoReply(event: EventName, reason: AutoReplyReason): void;
}

/** Options of {@link createBridgeMetrics}. */
export interface BridgeMetricsOptions {
  /** Registry to register on. Default: a new one (never prom-client's global). */
  readonly registry?: Registry;
  /** Also collect prom-client's default process and Node.js metrics. Default true. */
  readonly defaultMetrics?: boolean;
}

/**
 * Creates and registers every bridge metric. Call once per registry: registering a metric name
 * twice on one registry throws.
 */
export function createBridgeMetrics(options: BridgeMetricsOptions = {}): BridgeMetrics {
  const registry = options.registry ?? new Registry();
  if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: registry });
  const registers = [registry];

  const commandsTotal = new Counter({
    name: "kvmi_bridge_commands_total",
    help: "KVMI commands sent, by kernel command name and outcome.",
    labelNames: ["command", "status"] as const,
    registers,
  });
  const commandDurationSeconds = new Histogram({
    name: "kvmi_bridge_command_duration_seconds",
    help: "Round trip of one KVMI command on the socket, from write to matching reply (a burst of page reads: one observation, from its write to its last reply).",
    labelNames: ["command"] as const,
    buckets: [...COMMAND_DURATION_BUCKETS],
    registers,
  });
  const eventRoundTripSeconds = new Histogram({
    name: "kvmi_bridge_event_round_trip_seconds",
    help: "Time from a KVMI event being received to its reply being written, by event.",
    labelNames: ["event"] as const,
    buckets: [...EVENT_ROUND_TRIP_BUCKETS],
    registers,
  });
  const eventAutoRepliesTotal = new Counter({
    name: "kvmi_bridge_event_auto_replies_total",
    help: "Event replies the bridge sent itself: reply deadline passed, controller gone, or shutdown.",
    labelNames: ["event", "reason"] as const,
    registers,
  });

  const filterEventsTotal = new Counter({
    name: "kvmi_bridge_filter_events_total",
    help: "Events the controllers' event filters looked at, by outcome: answered by a rule (replied, notified), delivered, unmatched, notification dropped.",
    labelNames: ["event", "outcome"] as const,
    registers,
  });

  return {
    registry,
    vmsHooked: new Gauge({
      name: "kvmi_bridge_vms_hooked",
      help: "VMs with a live KVMI connection that completed the handshake.",
      registers,
    }),
    vmsNotConnected: new Gauge({
      name: "kvmi_bridge_vms_not_connected",
      help: "VMs announced by their forwarder whose QEMU has not connected: awaiting (before the deadline) or missed (after it), by reason.",
      labelNames: ["state", "reason"] as const,
      registers,
    }),
    commandsTotal,
    commandDurationSeconds,
    eventsTotal: new Counter({
      name: "kvmi_bridge_events_total",
      help: "KVMI events received from KVM, by event.",
      labelNames: ["event"] as const,
      registers,
    }),
    eventRoundTripSeconds,
    eventAutoRepliesTotal,
    filterEventsTotal,
    bytesReadTotal: new Counter({
      name: "kvmi_bridge_bytes_read_total",
      help: "Guest physical memory bytes returned to clients by memory-read RPCs.",
      registers,
    }),
    unhookToCloseSeconds: new Histogram({
      name: "kvmi_bridge_unhook_to_close_seconds",
      help: "Time from the UNHOOK event being delivered to the KVMI socket being closed.",
      buckets: [...UNHOOK_TO_CLOSE_BUCKETS],
      registers,
    }),
    grpcRequestsTotal: new Counter({
      name: "kvmi_bridge_grpc_requests_total",
      help: "Finished gRPC requests, by full method path and status code name.",
      labelNames: ["method", "code"] as const,
      registers,
    }),
    observeCommand(command, status, seconds) {
      commandsTotal.inc({ command, status });
      commandDurationSeconds.observe({ command }, seconds);
    },
    observeCommandBurst(command, ok, failed, seconds) {
      if (ok > 0) commandsTotal.inc({ command, status: "ok" }, ok);
      for (const status of failed) commandsTotal.inc({ command, status });
      commandDurationSeconds.observe({ command }, seconds);
    },
    observeEventReply(event, seconds) {
      eventRoundTripSeconds.observe({ event }, seconds);
    },
    countAutoReply(event, reason) {
      eventAutoRepliesTotal.inc({ event, reason });
    },
  };
}

const STATUS_BY_CODE: Readonly<Record<string, CommandStatus>> = {
  KVMI_REMOTE_ERROR: "remote_error",
  KVMI_TIMEOUT: "timeout",
  KVMI_SESSION_LOST: "session_lost",
  KVMI_PROTOCOL_ERROR: "protocol_error",
  KVMI_UNSUPPORTED: "unsupported",
  KVMI_INVALID_ARGUMENT: "invalid_argument",
};

/**
 * The `status` label for a command outcome: `"ok"` without an error, else the kvm-bridge error
 * `code` in lower case (`KVMI_TIMEOUT` → `"timeout"`), and `"error"` for anything else.
 */
export function commandStatusOf(error?: unknown): CommandStatus {
  if (error === undefined || error === null) return "ok";
  const code = (error as { code?: unknown }).code;
  return (typeof code === "string" && STATUS_BY_CODE[code]) || "error";
}
