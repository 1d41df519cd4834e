package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// symlink makes root/link point at target, as sysfs's device/driver links do.
func symlink(tb testing.TB, root, link, target string) {
	tb.Helper()
	p := filepath.Join(root, link)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := os.Symlink(target, p); err != nil {
		tb.Fatal(err)
	}
}

const cpuinfoQEMU = `processor	: 0
vendor_id	: GenuineIntel
model name	: QEMU Virtual CPU version 2.5+
flags		: fpu

processor	: 1
model name	: QEMU Virtual CPU version 2.5+
`

func TestGatherFullInventory(t *testing.T) {
	server := map[string]string{
		"proc/cpuinfo":                    cpuinfoQEMU,
		"sys/devices/system/cpu/online":   "0-1\n",
		"proc/meminfo":                    "MemTotal:        2048000 kB\n",
		"sys/block/vda/size":              "20971520\n",
		"sys/block/vda/removable":         "0\n",
		"sys/block/vda/serial":            "disk-serial-1\n",
		"sys/block/sda/size":              "7864320\n",
		"sys/block/sda/removable":         "1\n",
		"sys/block/sda/device/model":      "Flash Disk      \n",
		"sys/block/sda/device/serial":     "USB123\n",
		"sys/block/nvme0n1/size":          "1953525168\n",
		"sys/block/nvme0n1/removable":     "0\n",
		"sys/block/nvme0n1/device/model":  "Samsung SSD 970 EVO 1TB\n",
		"sys/block/nvme0n1/device/serial": "S5H9NS0N\n",
		"sys/block/sr0/size":              "2097152\n",
		"sys/block/loop0/size":            "1000\n",
		"sys/block/ram0/size":             "8192\n",
		"sys/block/zram0/size":            "8192\n",
		"sys/block/dm-0/size":             "8192\n",
		"sys/block/md0/size":              "8192\n",
		"sys/block/sdb/size":              "0\n", // empty card reader
		"sys/class/net/lo/address":        "00:00:00:00:00:00\n",
		"sys/class/net/eth0/address":      "52:54:00:12:34:56\n",
		"sys/class/net/eth0/carrier":      "1\n",
		"sys/class/net/eth0/operstate":    "up\n",
		"sys/class/net/eth1/address":      "52:54:00:AB:CD:EF\n",
		"sys/class/net/eth1/operstate":    "down\n",
		"sys/class/net/br0/address":       "52:54:00:00:00:01\n",
		"sys/class/net/br0/carrier":       "0\n",
		"sys/class/net/bonding_masters":   "",
		"sys/class/dmi/id/sys_vendor":     "QEMU\n",
		"sys/class/dmi/id/product_name":   "Standard PC (i440FX + PIIX, 1996)\n",
		"sys/class/dmi/id/product_serial": "VM-1\n",
		"sys/class/dmi/id/product_uuid":   "0A4E5F2C-1B3D-4E5F-8A9B-0C1D2E3F4A5B\n",
	}
	tests := []struct {
		name    string
		files   map[string]string
		links   map[string]string
		efi     bool
		want    Inventory
		wantErr string
	}{
		{
			name:  "server with virtio, usb and nvme disks",
			files: server,
			links: map[string]string{
				"sys/class/net/eth0/device/driver": "../../../../bus/virtio/drivers/virtio_net",
				"sys/class/net/eth1/device/driver": "../../../../bus/pci/drivers/e1000e",
			},
			efi: true,
			want: Inventory{
				CPU:      CPUInfo{Model: "QEMU Virtual CPU version 2.5+", Count: 2},
				MemoryMB: 2000,
				Disks: []Disk{
					{Name: "nvme0n1", SizeBytes: 1953525168 * 512, Model: "Samsung SSD 970 EVO 1TB", Serial: "S5H9NS0N"},
					{Name: "sda", SizeBytes: 7864320 * 512, Model: "Flash Disk", Serial: "USB123", Removable: true},
					{Name: "vda", SizeBytes: 10 << 30, Serial: "disk-serial-1"},
				},
				NICs: []NIC{
					{Name: "br0", MAC: "52:54:00:00:00:01"},
					{Name: "eth0", MAC: "52:54:00:12:34:56", Driver: "virtio_net", Link: true},
					{Name: "eth1", MAC: "52:54:00:ab:cd:ef", Driver: "e1000e"},
				},
				DMI:      DMI{Vendor: "QEMU", Product: "Standard PC (i440FX + PIIX, 1996)", Serial: "VM-1", UUID: "0a4e5f2c-1b3d-4e5f-8a9b-0c1d2e3f4a5b"},
				Firmware: "uefi",
			},
		},
		{
			name: "bare: no disks, no dmi, bios",
			files: map[string]string{
				"proc/cpuinfo":                  "processor : 0\nProcessor : ARMv7 rev 4\n",
				"sys/devices/system/cpu/online": "0\n",
				"proc/meminfo":                  "MemTotal: 1048576 kB\n",
				"sys/block/loop0/size":          "8\n",
				"sys/class/net/eth0/address":    "52:54:00:12:34:56\n",
			},
			want: Inventory{
				CPU: CPUInfo{Model: "ARMv7 rev 4", Count: 1}, MemoryMB: 1024,
				Disks: []Disk{}, NICs: []NIC{{Name: "eth0", MAC: "52:54:00:12:34:56"}}, Firmware: "bios",
			},
		},
		{
			name: "unreadable pieces are reported, the rest is kept",
			files: map[string]string{
				"proc/cpuinfo":                  cpuinfoQEMU,
				"sys/devices/system/cpu/online": "0-3\n",
				"sys/block/vda/size":            "lots\n",
				"sys/block/vdb/size":            "2048\n",
			},
			want: Inventory{
				CPU:   CPUInfo{Model: "QEMU Virtual CPU version 2.5+", Count: 4},
				Disks: []Disk{{Name: "vdb", SizeBytes: 1 << 20}}, NICs: []NIC{}, Firmware: "bios",
			},
			wantErr: `read memory size`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := fakeRoot(t, tt.files)
			for link, target := range tt.links {
				symlink(t, root, link, target)
			}
			if tt.efi {
				if err := os.MkdirAll(filepath.Join(root, "sys/firmware/efi"), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			got, err := gatherFullInventory(root)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("inventory (-want +got):\n%s", diff)
			}
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("error: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestIsPhysicalDisk(t *testing.T) {
	for name, want := range map[string]bool{
		"vda": true, "vdab": true, "sda": true, "hda": true, "xvda": true, "nvme0n1": true, "nvme12n3": true, "mmcblk0": true,
		"vda1": false, "sda2": false, "nvme0n1p1": false, "nvme0": false, "mmcblk0boot0": false, "mmcblk0p1": false,
		"loop0": false, "ram0": false, "zram0": false, "sr0": false, "dm-0": false, "md0": false, "nbd0": false, "vd": false,
	} {
		if got := isPhysicalDisk(name); got != want {
			t.Errorf("isPhysicalDisk(%q) = %v, want %v", name, got, want)
		}
	}
}
