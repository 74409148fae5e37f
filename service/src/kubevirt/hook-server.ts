// SPDX-License-Identifier: Apache-2.0
/**
 * KubeVirt's hook protocol over gRPC on a UNIX socket: `kubevirt.hooks.info.Info/Info` (name,
 * versions `["v1alpha3"]`, the `OnDefineDomain` hook point) and `kubevirt.hooks.v1alpha3.Callbacks`
 * (`OnDefineDomain`, `PreCloudInitIso`, `Shutdown`). virt-launcher dials every socket in the hook
 * directory, asks Info once, then calls the subscribed hook points with a one-minute deadline.
 *
 * @see https://github.com/kubevirt/kubevirt/blob/main/pkg/hooks/manager.go
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

/** The Callbacks version this server implements. */
export const HOOKS_VERSION = "v1alpha3";
/** KubeVirt's name of the domain hook point (`hooksInfo.OnDefineDomainHookPointName`). */
export const ON_DEFINE_DOMAIN = "OnDefineDomain";

/** The input of an OnDefineDomain call, decoded. */
export interface DefineDomainCall {
  /** The libvirt domain XML. */
  readonly domainXml: string;
  /** The VirtualMachineInstance, parsed from JSON (undefined when it was not valid JSON). */
  readonly vmi: unknown;
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
  /** Priority of the OnDefineDomain hook point. */
  readonly priority: number;
  /** Returns the new domain XML; may throw {@link HookRequestError} or `DomainXmlError`. */
  readonly onDefineDomain: (call: DefineDomainCall) => string;
  /** Called once after Shutdown was answered: virt-launcher is done with the VM. */
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
      logger.info({ versions: [HOOKS_VERSION], hookPoints: [ON_DEFINE_DOMAIN] }, "virt-launcher asked for hook info");
      callback(
        null,
        create(InfoResultSchema, {
          name: options.name,
          versions: [HOOKS_VERSION],
          hookPoints: [create(HookPointSchema, { name: ON_DEFINE_DOMAIN, priority: options.priority })],
        }),
      );
    },
  };
  let shutdownSeen = false;
  const callbacks: ServiceImplementationFor<typeof Callbacks> = {
    onDefineDomain(call, callback) {
      let domainXml: string;
      try {
        domainXml = utf8.decode(call.request.domainXML);
      } catch {
        callback(fail(status.INVALID_ARGUMENT, "domainXML is not UTF-8"));
        return;
      }
      let vmi: unknown;
      try {
        vmi = call.request.vmi.length === 0 ? undefined : JSON.parse(utf8.decode(call.request.vmi));
      } catch {
        vmi = undefined;
      }
      try {
        const rewritten = options.onDefineDomain({ domainXml, vmi });
        logger.info({ changed: rewritten !== domainXml, bytes: rewritten.length }, "OnDefineDomain answered");
        callback(null, create(OnDefineDomainResultSchema, { domainXML: new TextEncoder().encode(rewritten) }));
      } catch (error) {
        if (error instanceof HookRequestError) {
          logger.error({ err: error }, "OnDefineDomain refused");
          callback(fail(error.grpcCode, error.message));
        } else if (error instanceof DomainXmlError) {
          logger.error({ err: error, code: error.code }, "OnDefineDomain refused");
          callback(fail(error.code === "KVMI_DOMAIN_XML_MALFORMED" ? status.INVALID_ARGUMENT : status.FAILED_PRECONDITION, error.message));
        } else {
          logger.error({ err: error }, "OnDefineDomain failed");
          callback(fail(status.INTERNAL, "internal error"));
        }
      }
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
  server.addService(createServiceDefinition(Info), info);
  server.addService(createServiceDefinition(Callbacks), callbacks);
  rmSync(options.socketPath, { force: true });
  await new Promise<void>((resolve, reject) => {
    server.bindAsync(`unix:${options.socketPath}`, ServerCredentials.createInsecure(), (error) => (error ? reject(error) : resolve()));
  });
  logger.info({ socket: options.socketPath, name: options.name }, "hook server listening");

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
