// SPDX-License-Identifier: Apache-2.0
/**
 * KubeVirt's two domain hook protocols over gRPC on a UNIX socket:
 *
 * - the hook sidecar (every KubeVirt version; deprecated since v1.9): `kubevirt.hooks.info.Info/Info`
 *   (name, versions `["v1alpha3"]`, the hook points `OnDefineDomain` and `Shutdown`) and
 *   `kubevirt.hooks.v1alpha3.Callbacks`. virt-launcher dials every socket in the hook directory,
 *   asks Info, then calls only the hook points a sidecar listed, with a one-minute deadline: a
 *   sidecar that does not list `Shutdown` is never told the VM is gone;
 * - the Plugin API (v1.9+, `Plugins` feature gate): `kubevirt.hooks.plugins.v1alpha1.DomainHookService/
 *   MutateDomain`, called for each Plugin whose `domainHooks` name this socket, with an invocation
 *   context (`Boot`, `MigrationSource`, `MigrationTarget`); there is no Info and no Shutdown.
 *
 * Both hand the domain XML and the VMI to the same `onDefineDomain`; virt-launcher may call it
 * several times per VM start (each domain definition, the migration target), so it must be
 * idempotent on its own output.
 *
 * @see https://github.com/kubevirt/kubevirt/blob/main/pkg/hooks/manager.go
 * @see https://github.com/kubevirt/kubevirt/blob/main/pkg/virt-launcher/virtwrap/plugins/sidecar.go
 * @see ../../../deploy/kubevirt/proto/ (the vendored protos)
 */
import { rmSync } from "node:fs";
import { create } from "@bufbuild/protobuf";
import { Server, ServerCredentials, status } from "@grpc/grpc-js";
import type { ServiceError } from "@grpc/grpc-js";
import type { Logger } from "@kvmi/kvm-bridge";
import { createServiceDefinition } from "../rpc/service-definition.js";
import type { ServiceImplementationFor } from "../rpc/service-definition.js";
import { DomainXmlError } from "./domain-xml.js";
import { HookPointSchema, Info, InfoResultSchema } from "./gen/kubevirt/hooks/info/api_info_pb.js";
import {
  Callbacks,
  OnDefineDomainResultSchema,
  PreCloudInitIsoResultSchema,
  ShutdownResultSchema,
} from "./gen/kubevirt/hooks/v1alpha3/api_v1alpha3_pb.js";
import { DomainHookService, MutateDomainResponseSchema } from "./gen/kubevirt/hooks/plugins/v1alpha1/api_pb.js";

/** The Callbacks version this server implements. */
export const HOOKS_VERSION = "v1alpha3";
/** KubeVirt's name of the domain hook point (`hooksInfo.OnDefineDomainHookPointName`). */
export const ON_DEFINE_DOMAIN = "OnDefineDomain";
/** KubeVirt's name of the shutdown hook point (`hooksInfo.ShutdownHookPointName`). */
export const SHUTDOWN = "Shutdown";

/** The input of an OnDefineDomain call, decoded. */
export interface DefineDomainCall {
  /** The libvirt domain XML. */
  readonly domainXml: string;
  /** The VirtualMachineInstance, parsed from JSON (undefined when it was not valid JSON). */
  readonly vmi: unknown;
  /** Plugin API: `Boot`, `MigrationSource` or `MigrationTarget`; hook sidecar: `OnDefineDomain`. */
  readonly invocation: string;
}

/** Thrown by an `onDefineDomain` handler for a request that cannot be served as sent. */
export class HookRequestError extends Error {
  constructor(
    readonly grpcCode: status.INVALID_ARGUMENT | status.FAILED_PRECONDITION,
    message: string,
  ) {
    super(message);
    this.name = "HookRequestError";
  }
}

/** Options of {@link startHookServer}. */
export interface HookServerOptions {
  /** The UNIX socket to listen on; a stale file there is removed first. */
  readonly socketPath: string;
  /** Name announced in Info. */
  readonly name: string;
  /** Which protocol to serve on the socket. */
  readonly api: "hook-sidecar" | "plugin";
  /** Returns the new domain XML; may throw {@link HookRequestError} or `DomainXmlError`. */
  readonly onDefineDomain: (call: DefineDomainCall) => string;
  /** Called once after Shutdown was answered: virt-launcher is done with the VM (hook sidecar only). */
  readonly onShutdown: () => void;
  readonly logger: Logger;
}

/** A listening hook server. */
export interface HookServer {
  readonly socketPath: string;
  /** Stops accepting calls, waits up to `graceMs` for running ones, removes the socket. Idempotent. */
  close(graceMs?: number): Promise<void>;
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

function fail(code: status, message: string): Partial<ServiceError> {
  return { code, details: message, message };
}

/** Starts the hook server; resolves once it listens. */
export async function startHookServer(options: HookServerOptions): Promise<HookServer> {
  const { logger } = options;
  const info: Partial<ServiceImplementationFor<typeof Info>> = {
    info(_call, callback) {
      logger.info({ versions: [HOOKS_VERSION], hookPoints: [ON_DEFINE_DOMAIN, SHUTDOWN] }, "virt-launcher asked for hook info");
      callback(
        null,
        create(InfoResultSchema, {
          name: options.name,
          versions: [HOOKS_VERSION],
          // Priority orders hook points within this sidecar only (manager.go); 0 for both.
          hookPoints: [create(HookPointSchema, { name: ON_DEFINE_DOMAIN, priority: 0 }), create(HookPointSchema, { name: SHUTDOWN, priority: 0 })],
        }),
      );
    },
  };
  /** One domain rewrite for either protocol: decoded input, the handler, errors as gRPC statuses. */
  const define = (domainBytes: Uint8Array, vmiBytes: Uint8Array, invocation: string): { xml: Uint8Array } | { error: Partial<ServiceError> } => {
    let domainXml: string;
    try {
      domainXml = utf8.decode(domainBytes);
    } catch {
      return { error: fail(status.INVALID_ARGUMENT, "the domain XML is not UTF-8") };
    }
    let vmi: unknown;
    try {
      vmi = vmiBytes.length === 0 ? undefined : JSON.parse(utf8.decode(vmiBytes));
    } catch {
      vmi = undefined;
    }
    try {
      const rewritten = options.onDefineDomain({ domainXml, vmi, invocation });
      logger.info({ invocation, changed: rewritten !== domainXml, bytes: rewritten.length }, "domain hook answered");
      return { xml: new TextEncoder().encode(rewritten) };
    } catch (error) {
      if (error instanceof HookRequestError) {
        logger.error({ err: error, invocation }, "domain hook refused");
        return { error: fail(error.grpcCode, error.message) };
      }
      if (error instanceof DomainXmlError) {
        logger.error({ err: error, code: error.code, invocation }, "domain hook refused");
        return { error: fail(error.code === "KVMI_DOMAIN_XML_MALFORMED" ? status.INVALID_ARGUMENT : status.FAILED_PRECONDITION, error.message) };
      }
      logger.error({ err: error, invocation }, "domain hook failed");
      return { error: fail(status.INTERNAL, "internal error") };
    }
  };
  const domainHooks: ServiceImplementationFor<typeof DomainHookService> = {
    mutateDomain(call, callback) {
      const { domainType, domain, vmi, sidecarContext } = call.request;
      if (domainType !== "" && domainType !== "libvirt") {
        callback(fail(status.INVALID_ARGUMENT, `domain_type "${domainType}" is not libvirt`));
        return;
      }
      const outcome = define(domain, vmi, sidecarContext?.invocationContext || "Boot");
      if ("error" in outcome) callback(outcome.error);
      else callback(null, create(MutateDomainResponseSchema, { domain: outcome.xml }));
    },
  };
  let shutdownSeen = false;
  const callbacks: ServiceImplementationFor<typeof Callbacks> = {
    onDefineDomain(call, callback) {
      const outcome = define(call.request.domainXML, call.request.vmi, ON_DEFINE_DOMAIN);
      if ("error" in outcome) callback(outcome.error);
      else callback(null, create(OnDefineDomainResultSchema, { domainXML: outcome.xml }));
    },
    preCloudInitIso(call, callback) {
      // Not subscribed in Info; answer unchanged in case a virt-launcher calls it anyway.
      callback(
        null,
        create(PreCloudInitIsoResultSchema, {
          cloudInitData: call.request.cloudInitData,
          cloudInitNoCloudSource: call.request.cloudInitNoCloudSource,
        }),
      );
    },
    shutdown(_call, callback) {
      logger.info({}, "virt-launcher announced shutdown");
      callback(null, create(ShutdownResultSchema, {}));
      if (!shutdownSeen) {
        shutdownSeen = true;
        setImmediate(options.onShutdown);
      }
    },
  };

  const server = new Server();
  if (options.api === "plugin") {
    server.addService(createServiceDefinition(DomainHookService), domainHooks);
  } else {
    server.addService(createServiceDefinition(Info), info);
    server.addService(createServiceDefinition(Callbacks), callbacks);
  }
  rmSync(options.socketPath, { force: true });
  await new Promise<void>((resolve, reject) => {
    server.bindAsync(`unix:${options.socketPath}`, ServerCredentials.createInsecure(), (error) => (error ? reject(error) : resolve()));
  });
  logger.info({ socket: options.socketPath, name: options.name, api: options.api }, "hook server listening");

  let closing: Promise<void> | undefined;
  return {
    socketPath: options.socketPath,
    close: (graceMs = 5_000) =>
      (closing ??= new Promise<void>((resolve) => {
        const force = setTimeout(() => server.forceShutdown(), graceMs);
        force.unref();
        server.tryShutdown(() => {
          clearTimeout(force);
          rmSync(options.socketPath, { force: true });
          resolve();
        });
      })),
  };
}
