package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/ferrite-metal/ferrite/regiond/apiclient"
)

func TestInventoryDetails(t *testing.T) {
	var m apiclient.Machine
	if err := json.Unmarshal([]byte(`{"disk_count":1,"storage_bytes":10737418240,"inventory":{"cpu":{"model":"QEMU Virtual CPU","count":2},
		"memory_mb":1024,"disks":[{"name":"vda","size_bytes":10737418240,"serial":"d1"}],
		"nics":[{"name":"ens3","mac":"52:54:00:00:00:01","driver":"virtio_net","link":true}],
		"dmi":{"vendor":"QEMU","product":"Standard PC","uuid":"u1"},"firmware":"uefi"}}`), &m); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	inventoryDetails(&b, m)
	for _, want := range []string{"1 disk(s), 10737418240 bytes", "QEMU Virtual CPU", "vda\t10737418240 bytes", "52:54:00:00:00:01\tvirtio_net\tlink", "uuid u1", "uefi"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, b.String())
		}
	}
	b.Reset()
	inventoryDetails(&b, apiclient.Machine{})
	if b.Len() != 0 {
		t.Errorf("uncommissioned machine printed %q", b.String())
	}
}
