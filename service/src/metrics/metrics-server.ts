// SPDX-License-Identifier: Apache-2.0
/**
 * The Prometheus scrape endpoint, on its own HTTP port so that scraping never shares a listener
 * (or TLS policy) with the gRPC API. Serves `GET /metrics` (and `HEAD`), 405 for other methods on
 * that path, 404 for everything else.
 *
 * @see https://prometheus.io/docs/instrumenting/exposition_formats/
 */
import { createServer } from "node:http";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { Registry } from "prom-client";
import { formatHostPort, parseHostPort } from "../config/index.js";

/** A running metrics endpoint. */
export interface MetricsServer {
  /** Where it listens, e.g. `http://127.0.0.1:9464/metrics` (the real port when 0 was asked). */
  readonly url: string;
  /** Stops listening and drops open connections. Idempotent. */
  close(): Promise<void>;
}

/**
 * Starts the metrics endpoint.
 *
 * @param listen `HOST:PORT` (port 0 picks a free one), as in `BridgeConfig.metricsListen`; the
 *   caller skips this call when that is `"off"`.
 * @param registry The registry to expose, usually `BridgeMetrics.registry`.
 * @throws Error for a malformed `listen`; the `listen` error (e.g. `EADDRINUSE`) otherwise.
 */
export async function startMetricsServer(listen: string, registry: Registry): Promise<MetricsServer> {
  const address = parseHostPort(listen);
  if (!address.ok) throw new Error(`metrics listen address: ${address.error}`);

  const server = createServer((request, response) => {
    handle(request, response, registry).catch((error: unknown) => {
      if (!response.headersSent) response.writeHead(500, { "content-type": "text/plain; charset=utf-8" });
      response.end(`collecting metrics failed: ${(error as Error).message}\n`);
    });
  });
  // Scrapes are small and quick; do not let a stuck client hold a socket for minutes.
  server.requestTimeout = 30_000;
  server.headersTimeout = 10_000;
  server.keepAliveTimeout = 65_000;

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen({ host: address.value.host, port: address.value.port }, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const bound = server.address() as AddressInfo;
  const url = `http://${formatHostPort({ kind: "tcp", host: bound.address, port: bound.port })}/metrics`;

  let closing: Promise<void> | undefined;
  return {
    url,
    close: () =>
      (closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      })),
  };
}

async function handle(request: IncomingMessage, response: ServerResponse, registry: Registry): Promise<void> {
  const path = (request.url ?? "/").split("?", 1)[0];
  if (path !== "/metrics") {
    response.writeHead(404, { "content-type": "text/plain; charset=utf-8" });
    response.end("not found; metrics are at /metrics\n");
    return;
  }
  if (request.method !== "GET" && request.method !== "HEAD") {
    response.writeHead(405, { allow: "GET, HEAD", "content-type": "text/plain; charset=utf-8" });
    response.end("method not allowed\n");
    return;
  }
  const body = await registry.metrics();
  response.writeHead(200, { "content-type": registry.contentType, "cache-control": "no-store" });
  response.end(request.method === "HEAD" ? undefined : body);
}
