// SPDX-License-Identifier: Apache-2.0
/**
 * The standard gRPC health service (`grpc.health.v1.Health`, grpc-health-check 2.1) with one
 * status for the whole server (`""`) and one per served service (`kvmi.v1.IntrospectionService`).
 * Kubernetes `grpc:` probes and grpc_health_probe query it.
 *
 * @see https://github.com/grpc/grpc/blob/master/doc/health-checking.md
 */
import { HealthImplementation } from "grpc-health-check";
import type { ServingStatus } from "grpc-health-check";

export type { ServingStatus };

/** The health statuses of one server. */
export interface HealthController {
  /** The grpc-health-check implementation; `addToServer(server)` registers it. */
  readonly implementation: HealthImplementation;
  /** The names that have a status: `""` first, then every served service. */
  readonly services: readonly string[];
  /**
   * Sets every status to SERVING or NOT_SERVING at once; Watch streams are told immediately.
   * Flip to NOT_SERVING at the start of shutdown so probes and balancers stop sending work.
   */
  setServing(serving: boolean): void;
  /** Sets one service's status (`""` is the whole server). */
  setStatus(service: string, status: ServingStatus): void;
}

/**
 * Creates the health statuses for the given fully-qualified service names, all NOT_SERVING until
 * the server is listening.
 */
export function createHealth(serviceNames: readonly string[]): HealthController {
  const services = ["", ...new Set(serviceNames.filter((name) => name !== ""))];
  const implementation = new HealthImplementation(Object.fromEntries(services.map((name) => [name, "NOT_SERVING"])));
  return {
    implementation,
    services,
    setServing(serving) {
      for (const name of services) implementation.setStatus(name, serving ? "SERVING" : "NOT_SERVING");
    },
    setStatus(service, status) {
      implementation.setStatus(service, status);
    },
  };
}
