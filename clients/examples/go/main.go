// SPDX-License-Identifier: Apache-2.0

// Command kvmi-example is a kvmi.v1 client in Go from generated stubs alone: it lists the VMs,
// gets one by its display name (resolved by the bridge), reads guest physical memory, and decodes
// the google.rpc.ErrorInfo of a refused read. See README.md for generating the stubs.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"regexp"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	kvmiv1 "example.com/kvmi-example/gen/kvmi/v1"
)

var uuidPattern = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// vmName turns a UUID into vms/UUID and anything else into the server-side display-name alias.
func vmName(ref string) string {
	if uuidPattern.MatchString(ref) {
		return "vms/" + ref
	}
	if len(ref) > 4 && ref[:4] == "vms/" {
		return ref
	}
	return "vms/-/by-name/" + ref
}

func main() {
	target := flag.String("target", "127.0.0.1:50051", "bridge gRPC address")
	vmRef := flag.String("vm", "demo-0", "UUID, vms/UUID or display name")
	gpa := flag.Uint64("gpa", 0x1000, "guest physical address to read")
	flag.Parse()

	conn, err := grpc.NewClient(*target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatalf("dial %s: %v", *target, err)
	}
	defer conn.Close()
	client := kvmiv1.NewIntrospectionServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	listed, err := client.ListVms(ctx, &kvmiv1.ListVmsRequest{PageSize: 100})
	if err != nil {
		log.Fatalf("ListVms: %v", err)
	}
	for _, vm := range listed.GetVms() {
		fmt.Printf("%s  %-12s  %s\n", vm.GetName(), vm.GetDisplayName(), vm.GetState())
	}

	got, err := client.GetVm(ctx, &kvmiv1.GetVmRequest{Vm: vmName(*vmRef)})
	if err != nil {
		log.Fatalf("GetVm: %v", err)
	}
	vm := got.GetVm()
	fmt.Printf("%s is %q, %d vCPU(s)\n", vm.GetName(), vm.GetDisplayName(), vm.GetVcpuCount())

	read, err := client.ReadPhysicalMemory(ctx, &kvmiv1.ReadPhysicalMemoryRequest{Vm: vm.GetName(), Gpa: *gpa, Size: 64})
	if err != nil {
		log.Fatalf("ReadPhysicalMemory: %v", err)
	}
	fmt.Printf("%016x: % x\n", *gpa, read.GetData()[:16])

	// A read may not cross a page: refused with INVALID_ARGUMENT and an ErrorInfo.
	_, err = client.ReadPhysicalMemory(ctx, &kvmiv1.ReadPhysicalMemoryRequest{Vm: vm.GetName(), Gpa: 0xfff, Size: 2})
	st := status.Convert(err)
	for _, detail := range st.Details() {
		if info, ok := detail.(*errdetails.ErrorInfo); ok {
			fmt.Printf("unaligned read refused: %s, reason %s, command %s\n", st.Code(), info.GetReason(), info.GetMetadata()["command"])
		}
	}
}
