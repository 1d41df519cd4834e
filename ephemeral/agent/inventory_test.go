package main

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// fakeRoot writes files (path relative to the root → content) into a temporary directory.
func fakeRoot(tb testing.TB, files map[string]string) string {
	tb.Helper()
	root := tb.TempDir()
	for name, content := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	return root
}

const meminfo512 = `MemTotal:         482404 kB
MemFree:          401220 kB
MemAvailable:     420000 kB
`

func TestGatherInventory(t *testing.T) {
	tests := []struct {
		name    string
		files   map[string]string
		bootMAC string
		want    EnlistRequest
		wantErr bool
	}{
		{
			name: "qemu vm",
			files: map[string]string{
				"sys/class/net/lo/address":             "00:00:00:00:00:00\n",
				"sys/class/net/eth0/address":           "52:54:00:12:34:56\n",
				"sys/class/net/eth1/address":           "52:54:00:AB:CD:EF\n",
				"sys/class/net/sit0/address":           "00:00:00:00\n",
				"sys/class/net/dummy0/address":         "00:00:00:00:00:00\n",
				"sys/class/net/ib0/address":            "80:00:02:08:fe:80:00:00:00:00:00:00:00:02:c9:03:00:0a:bc:de\n",
				"sys/devices/system/cpu/online":        "0-3\n",
				"proc/meminfo":                         meminfo512,
				"sys/class/dmi/id/product_uuid":        "0A4E5F2C-1B3D-4E5F-8A9B-0C1D2E3F4A5B\n",
				"sys/class/net/bonding_masters":        "",
				"sys/class/net/eth1/device/vendor":     "0x1af4",
				"sys/class/net/eth0/operstate":         "up\n",
				"sys/class/net/eth0/carrier":           "1\n",
				"sys/class/net/eth0/device/subsystem":  "pci",
				"sys/devices/system/cpu/cpu0/online":   "1",
				"sys/class/dmi/id/sys_vendor":          "QEMU\n",
				"sys/class/net/eth1/statistics/rx_pkt": "0",
			},
			bootMAC: "52:54:00:12:34:56",
			want: EnlistRequest{
				Architecture: "amd64/generic",
				MACAddresses: []string{"52:54:00:12:34:56", "52:54:00:ab:cd:ef"},
				BootMAC:      "52:54:00:12:34:56",
				CPUCount:     4,
				MemoryMB:     471,
				HardwareUUID: "0a4e5f2c-1b3d-4e5f-8a9b-0c1d2e3f4a5b",
			},
		},
		{
			name: "no dmi, all-zero uuid, duplicate mac",
			files: map[string]string{
				"sys/class/net/eth0/address":      "52:54:00:12:34:56\n",
				"sys/class/net/bond0/address":     "52:54:00:12:34:56\n",
				"sys/devices/system/cpu/online":   "0\n",
				"proc/meminfo":                    "MemTotal: 1048576 kB\n",
				"sys/class/dmi/id/product_serial": "x",
			},
			want: EnlistRequest{
				Architecture: "amd64/generic",
				MACAddresses: []string{"52:54:00:12:34:56"},
				CPUCount:     1,
				MemoryMB:     1024,
			},
		},
		{
			name: "all-zero uuid is no uuid",
			files: map[string]string{
				"sys/class/net/eth0/address":    "52:54:00:12:34:56\n",
				"sys/devices/system/cpu/online": "0-1,3\n",
				"proc/meminfo":                  "MemTotal: 2048 kB\n",
				"sys/class/dmi/id/product_uuid": "00000000-0000-0000-0000-000000000000\n",
			},
			want: EnlistRequest{
				Architecture: "amd64/generic",
				MACAddresses: []string{"52:54:00:12:34:56"},
				CPUCount:     3,
				MemoryMB:     2,
			},
		},
		{
			name: "no interfaces at all",
			files: map[string]string{
				"sys/class/net/lo/address":      "00:00:00:00:00:00\n",
				"sys/devices/system/cpu/online": "0\n",
				"proc/meminfo":                  meminfo512,
			},
			want: EnlistRequest{
				Architecture: "amd64/generic",
				MACAddresses: []string{},
				CPUCount:     1,
				MemoryMB:     471,
			},
		},
		{
			name: "no meminfo",
			files: map[string]string{
				"sys/class/net/eth0/address":    "52:54:00:12:34:56\n",
				"sys/devices/system/cpu/online": "0\n",
			},
			wantErr: true,
		},
		{
			name: "no sys/class/net",
			files: map[string]string{
				"proc/meminfo": meminfo512,
			},
			wantErr: true,
		},
		{
			name: "bad cpu list",
			files: map[string]string{
				"sys/class/net/eth0/address":    "52:54:00:12:34:56\n",
				"sys/devices/system/cpu/online": "3-1\n",
				"proc/meminfo":                  meminfo512,
			},
			wantErr: true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := fakeRoot(t, tc.files)
			got, err := gatherInventory(root, tc.bootMAC, "amd64")
			if (err != nil) != tc.wantErr {
				t.Fatalf("gatherInventory error = %v, want error %v", err, tc.wantErr)
			}
			if tc.wantErr {
				return
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("gatherInventory (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCPUCountFallsBackToNumCPU(t *testing.T) {
	got, err := readCPUCount(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if got != runtime.NumCPU() {
		t.Errorf("readCPUCount without sys = %d, want runtime.NumCPU() = %d", got, runtime.NumCPU())
	}
}

func TestParseCPUList(t *testing.T) {
	tests := []struct {
		name, in string
		want     int
		wantErr  bool
	}{
		{"single", "0\n", 1, false},
		{"range", "0-7", 8, false},
		{"mixed", "0-3,6,8-9", 7, false},
		{"empty", "\n", 0, true},
		{"reversed", "4-2", 0, true},
		{"garbage", "a-b", 0, true},
		{"negative", "-1", 0, true},
		{"trailing comma", "0,", 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseCPUList(tc.in)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("parseCPUList(%q) = %d, %v; want %d, error %v", tc.in, got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestParseMemTotalMiB(t *testing.T) {
	tests := []struct {
		name, in string
		want     int64
		wantErr  bool
	}{
		{"typical", meminfo512, 471, false},
		{"not first line", "MemFree: 1 kB\nMemTotal: 16777216 kB\n", 16384, false},
		{"rounds down", "MemTotal: 2047 kB\n", 1, false},
		{"missing", "MemFree: 1 kB\n", 0, true},
		{"no unit", "MemTotal: 1024\n", 0, true},
		{"other unit", "MemTotal: 1024 MB\n", 0, true},
		{"not a number", "MemTotal: lots kB\n", 0, true},
		{"similar key", "MemTotalX: 1024 kB\n", 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseMemTotalMiB([]byte(tc.in))
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("parseMemTotalMiB(%q) = %d, %v; want %d, error %v", tc.in, got, err, tc.want, tc.wantErr)
			}
		})
	}
}
