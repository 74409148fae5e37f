#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""A kvmi.v1 client in Python from generated stubs alone (no SDK): list the VMs, get one by its
display name, read guest physical memory, and decode the google.rpc.ErrorInfo of an error.

    ./generate.sh && PYTHONPATH=gen python3 kvmi_example.py --target 127.0.0.1:50051 --vm demo-0
"""
import argparse
import json
import re
import sys

import grpc

# The google.rpc modules must be imported before google.protobuf is touched through them: both
# live under the `google` package, generated into PYTHONPATH beside the runtime's google.protobuf.
from google.rpc import error_details_pb2, status_pb2
from kvmi.v1 import command_pb2, introspection_service_pb2_grpc, vm_pb2

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def vm_name(ref: str) -> str:
    """A VM resource name: `vms/UUID` for a UUID, else the server-side display-name alias."""
    ref = ref.removeprefix("vms/") if ref.startswith("vms/") and UUID.match(ref[4:]) else ref
    return f"vms/{ref}" if UUID.match(ref) else f"vms/-/by-name/{ref}"


def error_info(err: grpc.RpcError):
    """The ErrorInfo in the `grpc-status-details-bin` trailer, or None."""
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    return info
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051", help="bridge gRPC address")
    parser.add_argument("--vm", required=True, help="UUID, vms/UUID or display name")
    parser.add_argument("--gpa", default="0x1000", help="guest physical address to read")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of text")
    args = parser.parse_args()

    with grpc.insecure_channel(args.target) as channel:
        stub = introspection_service_pb2_grpc.IntrospectionServiceStub(channel)
        listed = stub.ListVms(vm_pb2.ListVmsRequest(page_size=100), timeout=10)
        vm = stub.GetVm(vm_pb2.GetVmRequest(vm=vm_name(args.vm)), timeout=10).vm
        gpa = int(args.gpa, 0)
        data = stub.ReadPhysicalMemory(command_pb2.ReadPhysicalMemoryRequest(vm=vm.name, gpa=gpa, size=64), timeout=10).data
        # A read may not cross a page: the bridge refuses it with INVALID_ARGUMENT and an ErrorInfo.
        try:
            stub.ReadPhysicalMemory(command_pb2.ReadPhysicalMemoryRequest(vm=vm.name, gpa=0xFFF, size=2), timeout=10)
            refused = None
        except grpc.RpcError as err:
            refused = (err.code().name, error_info(err))

    if args.json:
        info = refused[1] if refused else None
        print(json.dumps({
            "vms": [{"name": v.name, "displayName": v.display_name, "state": vm_pb2.State.Name(v.state)} for v in listed.vms],
            "vm": {"name": vm.name, "uuid": vm.uuid, "displayName": vm.display_name, "vcpuCount": vm.vcpu_count},
            "read": {"gpa": hex(gpa), "data": data.hex()},
            "error": refused and {"code": refused[0], "reason": info and info.reason, "domain": info and info.domain, "metadata": info and dict(info.metadata)},
        }))
        return 0
    for v in listed.vms:
        print(f"{v.name}  {v.display_name or '-':12}  {vm_pb2.State.Name(v.state)}")
    print(f"{vm.name} is {vm.display_name!r}, {vm.vcpu_count} vCPU(s)")
    print(f"{gpa:016x}: {data[:16].hex(' ')}")
    if refused:
        code, info = refused
        print(f"unaligned read refused: {code}, reason {info.reason if info else '?'}, command {info.metadata.get('command') if info else '?'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
