// SPDX-License-Identifier: Apache-2.0
// The channel's grpc-js options: the SDK opens a 4 MiB HTTP/2 receive window (bulk reads stop
// every 64 KiB for a WINDOW_UPDATE otherwise), and a caller's own options win.
import { describe, expect, it } from "vitest";
import { channelGrpcOptions, RECEIVE_WINDOW_BYTES } from "./channel.js";

describe("channelGrpcOptions", () => {
  it("opens a 4 MiB receive window by default and keeps the caller's other options", () => {
    expect(RECEIVE_WINDOW_BYTES).toBe(4 * 1024 * 1024);
    expect(channelGrpcOptions({ "grpc.keepalive_time_ms": 10_000 })).toEqual({ "grpc-node.flow_control_window": RECEIVE_WINDOW_BYTES, "grpc.keepalive_time_ms": 10_000 });
    expect(channelGrpcOptions(undefined)).toEqual({ "grpc-node.flow_control_window": RECEIVE_WINDOW_BYTES });
  });

  it("lets the caller choose the window", () => {
    expect(channelGrpcOptions({ "grpc-node.flow_control_window": 65_535 })["grpc-node.flow_control_window"]).toBe(65_535);
  });
});
