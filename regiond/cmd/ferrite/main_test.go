package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

type result struct {
	Code           int
	Stdout, Stderr string
}

// runCLI runs the CLI with exactly the given environment.
func runCLI(t testing.TB, env map[string]string, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), args, &stdout, &stderr, func(k string) string { return env[k] })
	return result{code, stdout.String(), stderr.String()}
}

// envFor returns an environment logged in to f through FERRITE_URL/FERRITE_TOKEN,
// with its own empty config directory.
func envFor(t testing.TB, f *testRegion) map[string]string {
	t.Helper()
	return map[string]string{"XDG_CONFIG_HOME": t.TempDir(), "FERRITE_URL": f.URL, "FERRITE_TOKEN": f.Token}
}

func TestCommands(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		want     result
		wantReqs []apiRequest
		seed     func(testing.TB, *testRegion) // default seedInventory
	}{
		{
			name: "racks list",
			args: []string{"racks", "list"},
			want: result{0, `ID           NAME   VERSION  LAST SEEN             INTERFACES
rack-RACKID  rack1  0.1.0    2000-01-01T00:00:01Z  eth0 10.99.0.2/24,fd00::2/64; eth1
`, ""},
			wantReqs: []apiRequest{{Method: "GET", Path: "/api/v1/racks"}},
		},
		{
			name: "racks list json",
			args: []string{"racks", "list", "-o", "json"},
			want: result{0, `[
  {
    "id": "rack-RACKID",
    "name": "rack1",
    "version": "0.1.0",
    "last_seen": "2000-01-01T00:00:01Z",
    "interfaces": [
      {
        "name": "eth0",
        "mac": "52:54:00:aa:00:01",
        "addresses": [
          "10.99.0.2/24",
          "fd00::2/64"
        ]
      },
      {
        "name": "eth1",
        "mac": "52:54:00:aa:00:02",
        "addresses": []
      }
    ]
  }
]
`, ""},
			wantReqs: []apiRequest{{Method: "GET", Path: "/api/v1/racks"}},
		},
		{
			name: "subnets list",
			args: []string{"subnets", "list"},
			want: result{0, `ID  CIDR          GATEWAY    DNS                DYNAMIC RANGES           NTP  BOOT DISABLED  RACK
1   10.99.0.0/24  10.99.0.1  10.99.0.1,1.1.1.1  10.99.0.100-10.99.0.200  -    -              rack1
`, ""},
			wantReqs: []apiRequest{{Method: "GET", Path: "/api/v1/subnets"}},
		},
		{
			name: "subnets create with NTP and disabled boot methods: compact columns",
			args: []string{"subnets", "create", "--cidr", "10.97.0.0/24", "--rack", "rack1", "--ntp", "10.97.0.1,10.97.0.2",
				"--disable-boot-method", "ipxe", "--disable-boot-method", "uefi_amd64_http"},
			want: result{0, `ID  CIDR          GATEWAY  DNS  DYNAMIC RANGES  NTP                  BOOT DISABLED         RACK
2   10.97.0.0/24  -        -    -               10.97.0.1,10.97.0.2  ipxe,uefi_amd64_http  rack1
`, ""},
			wantReqs: []apiRequest{{Method: "POST", Path: "/api/v1/subnets",
				Body: `{"cidr":"10.97.0.0/24","rack":"rack1","disabled_boot_methods":["ipxe","uefi_amd64_http"],"ntp_servers":["10.97.0.1","10.97.0.2"]}`}},
		},
		{
			name: "subnets list json",
			args: []string{"subnets", "list", "--output=json"},
			want: result{0, `[
  {
    "id": 1,
    "cidr": "10.99.0.0/24",
    "gateway": "10.99.0.1",
    "dns_servers": [
      "10.99.0.1",
      "1.1.1.1"
    ],
    "domain": "maas",
    "mtu": 1500,
    "dynamic_ranges": [
      {
        "start": "10.99.0.100",
        "end": "10.99.0.200"
      }
    ],
    "rack": "rack1",
    "disabled_boot_methods": [],
    "ntp_servers": []
  }
]
`, ""},
			wantReqs: []apiRequest{{Method: "GET", Path: "/api/v1/subnets"}},
		},
		{
			name: "subnets create with repeated and comma-separated dns",
			args: []string{"subnets", "create", "--cidr", "10.98.0.0/24", "--gateway", "10.98.0.1", "--dns", "10.98.0.1,9.9.9.9",
				"--dns", "fd00::53", "--dynamic-range", "10.98.0.100-10.98.0.199", "--rack", "rack1"},
			want: result{0, `ID  CIDR          GATEWAY    DNS                         DYNAMIC RANGES           NTP  BOOT DISABLED  RACK
2   10.98.0.0/24  10.98.0.1  10.98.0.1,9.9.9.9,fd00::53  10.98.0.100-10.98.0.199  -    -              rack1
`, ""},
			wantReqs: []apiRequest{{Method: "POST", Path: "/api/v1/subnets",
				Body: `{"cidr":"10.98.0.0/24","gateway":"10.98.0.1","dns_servers":["10.98.0.1","9.9.9.9","fd00::53"],` +
					`"dynamic_ranges":[{"start":"10.98.0.100","end":"10.98.0.199"}],"rack":"rack1"}`}},
		},
		{
			name: "subnets create minimal json",
			args: []string{"subnets", "create", "-o", "json", "--cidr=fd00:1::/64", "--rack=rack1"},
			want: result{0, `{
  "id": 2,
  "cidr": "fd00:1::/64",
  "gateway": "",
  "dns_servers": [],
  "domain": "",
  "mtu": 1500,
  "dynamic_ranges": [],
  "rack": "rack1",
  "disabled_boot_methods": [],
  "ntp_servers": []
}
`, ""},
			wantReqs: []apiRequest{{Method: "POST", Path: "/api/v1/subnets", Body: `{"cidr":"fd00:1::/64","rack":"rack1"}`}},
		},
		{
			name:     "subnets create unknown rack: API message",
			args:     []string{"subnets", "create", "--cidr", "10.98.0.0/24", "--rack", "nope"},
			want:     result{1, "", "ferrite: create subnet 10.98.0.0/24: rack: no rack named \"nope\" (HTTP 400)\n"},
			wantReqs: []apiRequest{{Method: "POST", Path: "/api/v1/subnets", Body: `{"cidr":"10.98.0.0/24","rack":"nope"}`}},
		},
		{
			name: "subnets create with NTP and disabled boot methods",
			args: []string{"subnets", "create", "-o", "json", "--cidr=10.97.0.0/24", "--rack=rack1", "--ntp", "10.97.0.1,10.97.0.2",
				"--disable-boot-method", "uefi_amd64_tftp", "--disable-boot-method=ipxe"},
			want: result{0, `{
  "id": 2,
  "cidr": "10.97.0.0/24",
  "gateway": "",
  "dns_servers": [],
  "domain": "",
  "mtu": 1500,
  "dynamic_ranges": [],
  "rack": "rack1",
  "disabled_boot_methods": [
    "uefi_amd64_tftp",
    "ipxe"
  ],
  "ntp_servers": [
    "10.97.0.1",
    "10.97.0.2"
  ]
}
`, ""},
			wantReqs: []apiRequest{{Method: "POST", Path: "/api/v1/subnets",
				Body: `{"cidr":"10.97.0.0/24","rack":"rack1","disabled_boot_methods":["uefi_amd64_tftp","ipxe"],"ntp_servers":["10.97.0.1","10.97.0.2"]}`}},
		},
		{
			name: "leases list",
			args: []string{"leases", "list"},
			want: result{0, `IP           MAC                HOSTNAME  STATE     EXPIRES               RACK
10.99.0.100  52:54:00:12:34:56  node1     active    2040-01-01T00:00:00Z  rack1
10.99.0.101  52:54:00:12:34:99  -         released  2026-03-01T10:00:00Z  rack1
`, ""},
			wantReqs: []apiRequest{{Method: "GET", Path: "/api/v1/leases"}},
			seed:     seedLeases,
		},
		{
			name:     "leases list by MAC, json",
			args:     []string{"leases", "list", "--mac", "52-54-00-12-34-99", "-o", "json"},
			wantReqs: []apiRequest{{Method: "GET", Path: "/api/v1/leases", Query: "mac=52%3A54%3A00%3A12%3A34%3A99"}},
			seed:     seedLeases,
			want: result{0, `[
  {
    "ip": "10.99.0.101",
    "mac": "52:54:00:12:34:99",
    "hostname": "",
    "state": "released",
    "expires": "2026-03-01T10:00:00Z",
    "updated": "2026-03-01T10:00:00Z",
    "rack": "rack1",
    "rack_id": "rack-RACKID"
  }
]
`, ""},
		},
		{
			name: "images list",
			args: []string{"images", "list"},
			want: result{0, `NAME              ARCH           KIND           CREATED               FILES
custom/ephemeral  amd64/generic  kernel-initrd  2000-01-01T00:00:02Z  boot-initrd (1.5 KiB), boot-kernel (12.0 MiB)
`, ""},
			wantReqs: []apiRequest{{Method: "GET", Path: "/api/v1/images"}},
		},
		{
			name: "images list json",
			args: []string{"images", "list", "-o", "json"},
			want: result{0, `[
  {
    "name": "custom/ephemeral",
    "arch": "amd64/generic",
    "kind": "kernel-initrd",
    "created": "2000-01-01T00:00:02Z",
    "files": [
      {
        "filename": "boot-initrd",
        "sha256": "INITRDSHA",
        "size": 1536
      },
      {
        "filename": "boot-kernel",
        "sha256": "KERNELSHA",
        "size": 12582912
      }
    ]
  }
]
`, ""},
			wantReqs: []apiRequest{{Method: "GET", Path: "/api/v1/images"}},
		},
		{
			name: "config get all",
			args: []string{"config", "get"},
			want: result{0, "KEY                    VALUE\ncommissioning_image    custom/ephemeral\nkernel_opts            console=ttyS0\n" +
				"node_timeout           -\npower_command_timeout  -\npower_query_interval   -\n", ""},
			wantReqs: []apiRequest{{Method: "GET", Path: "/api/v1/config"}},
		},
		{
			name: "config get all json",
			args: []string{"config", "get", "-o", "json"},
			want: result{0, "{\n  \"commissioning_image\": \"custom/ephemeral\",\n  \"kernel_opts\": \"console=ttyS0\",\n  \"node_timeout\": \"\",\n" +
				"  \"power_command_timeout\": \"\",\n  \"power_query_interval\": \"\"\n}\n", ""},
			wantReqs: []apiRequest{{Method: "GET", Path: "/api/v1/config"}},
		},
		{
			name:     "config get key prints the bare value",
			args:     []string{"config", "get", "kernel_opts"},
			want:     result{0, "console=ttyS0\n", ""},
			wantReqs: []apiRequest{{Method: "GET", Path: "/api/v1/config"}},
		},
		{
			name:     "config get key json, flag after the argument",
			args:     []string{"config", "get", "kernel_opts", "-o", "json"},
			want:     result{0, "{\n  \"key\": \"kernel_opts\",\n  \"value\": \"console=ttyS0\"\n}\n", ""},
			wantReqs: []apiRequest{{Method: "GET", Path: "/api/v1/config"}},
		},
		{
			name:     "config get unset key",
			args:     []string{"config", "get", "nope"},
			want:     result{1, "", "ferrite: config key \"nope\" is not set\n"},
			wantReqs: []apiRequest{{Method: "GET", Path: "/api/v1/config"}},
		},
		{
			name:     "config set",
			args:     []string{"config", "set", "kernel_opts", "console=ttyS1 quiet"},
			want:     result{0, "KEY          VALUE\nkernel_opts  console=ttyS1 quiet\n", ""},
			wantReqs: []apiRequest{{Method: "PUT", Path: "/api/v1/config/kernel_opts", Body: `{"value":"console=ttyS1 quiet"}`}},
		},
		{
			name:     "config set commissioning image that does not exist: API message",
			args:     []string{"config", "set", "commissioning_image", "custom/other"},
			want:     result{1, "", "ferrite: set config commissioning_image: value: no image named \"custom/other\" (see ferrite images list) (HTTP 400)\n"},
			wantReqs: []apiRequest{{Method: "PUT", Path: "/api/v1/config/commissioning_image", Body: `{"value":"custom/other"}`}},
		},
		{
			name:     "config set value starting with a dash after --",
			args:     []string{"config", "set", "-o", "json", "--", "kernel_opts", "--- quiet"},
			want:     result{0, "{\n  \"key\": \"kernel_opts\",\n  \"value\": \"--- quiet\"\n}\n", ""},
			wantReqs: []apiRequest{{Method: "PUT", Path: "/api/v1/config/kernel_opts", Body: `{"value":"--- quiet"}`}},
		},
		{
			name:     "config set unknown key: API message",
			args:     []string{"config", "set", "bogus", "1"},
			want:     result{1, "", "ferrite: set config bogus: unknown config key \"bogus\" (known: commissioning_image, kernel_opts, node_timeout, power_command_timeout, power_query_interval) (HTTP 400)\n"},
			wantReqs: []apiRequest{{Method: "PUT", Path: "/api/v1/config/bogus", Body: `{"value":"1"}`}},
		},
		{
			name: "machines list",
			args: []string{"machines", "list"},
			want: result{0, `SYSTEM ID  HOSTNAME        STATUS  ARCH           CPUS  MEMORY     MACS
MACH01     ferrite-MACH01  New     amd64/generic  2     2048 MiB   52:54:00:12:34:56,52:54:00:12:34:57
MACH02     ferrite-MACH02  New     arm64/generic  8     16384 MiB  52:54:00:12:34:99
`, ""},
			wantReqs: []apiRequest{{Method: "GET", Path: "/api/v1/machines"}},
		},
		{
			name: "machines show",
			args: []string{"machines", "show", "MACH01"},
			want: result{0, `System ID:      MACH01
Hostname:       ferrite-MACH01
Status:         New
Architecture:   amd64/generic
CPUs:           2
Memory:         2048 MiB
Interfaces:     52:54:00:12:34:56  dynamic
                52:54:00:12:34:57  dynamic
Power type:     (not set: ferrite machines set-power)
Power state:    unknown
Hardware UUID:  4c4c4544-0000-1000-8000-000000000001
Created:        2000-01-01T00:00:03Z
`, ""},
			wantReqs: []apiRequest{{Method: "GET", Path: "/api/v1/machines/MACH01"}},
		},
		{
			name: "machines show with a fixed address",
			args: []string{"machines", "show", "MACH01"},
			seed: seedFixedAddress,
			want: result{0, `System ID:      MACH01
Hostname:       ferrite-MACH01
Status:         New
Architecture:   amd64/generic
CPUs:           2
Memory:         2048 MiB
Interfaces:     52:54:00:12:34:56  dynamic
                52:54:00:12:34:57  fixed 10.99.0.57
Power type:     (not set: ferrite machines set-power)
Power state:    unknown
Hardware UUID:  4c4c4544-0000-1000-8000-000000000001
Created:        2000-01-01T00:00:03Z
`, ""},
			wantReqs: []apiRequest{{Method: "GET", Path: "/api/v1/machines/MACH01"}},
		},
		{
			name: "machines set-ip, flags after the system ID, MAC normalized",
			args: []string{"machines", "set-ip", "MACH01", "--mac", "52-54-00-12-34-56", "--ip", "10.99.0.56"},
			want: result{0, `System ID:      MACH01
Hostname:       ferrite-MACH01
Status:         New
Architecture:   amd64/generic
CPUs:           2
Memory:         2048 MiB
Interfaces:     52:54:00:12:34:56  fixed 10.99.0.56
                52:54:00:12:34:57  dynamic
Power type:     (not set: ferrite machines set-power)
Power state:    unknown
Hardware UUID:  4c4c4544-0000-1000-8000-000000000001
Created:        2000-01-01T00:00:03Z
`, ""},
			wantReqs: []apiRequest{{Method: "PUT", Path: "/api/v1/machines/MACH01/interfaces/52:54:00:12:34:56", Body: `{"ip":"10.99.0.56"}`}},
		},
		{
			name:     "machines set-ip --clear",
			args:     []string{"machines", "set-ip", "--clear", "--mac", "52:54:00:12:34:57", "MACH01", "-o", "json"},
			seed:     seedFixedAddress,
			wantReqs: []apiRequest{{Method: "PUT", Path: "/api/v1/machines/MACH01/interfaces/52:54:00:12:34:57", Body: `{"ip":""}`}},
			want:     result{0, machine1JSON, ""},
		},
		{
			name:     `machines set-ip --ip "" clears`,
			args:     []string{"machines", "set-ip", "MACH01", "--mac", "52:54:00:12:34:57", "--ip", ""},
			seed:     seedFixedAddress,
			wantReqs: []apiRequest{{Method: "PUT", Path: "/api/v1/machines/MACH01/interfaces/52:54:00:12:34:57", Body: `{"ip":""}`}},
			want: result{0, `System ID:      MACH01
Hostname:       ferrite-MACH01
Status:         New
Architecture:   amd64/generic
CPUs:           2
Memory:         2048 MiB
Interfaces:     52:54:00:12:34:56  dynamic
                52:54:00:12:34:57  dynamic
Power type:     (not set: ferrite machines set-power)
Power state:    unknown
Hardware UUID:  4c4c4544-0000-1000-8000-000000000001
Created:        2000-01-01T00:00:03Z
`, ""},
		},
		{
			name:     "machines set-ip taken: API message",
			args:     []string{"machines", "set-ip", "MACH02", "--mac", "52:54:00:12:34:99", "--ip", "10.99.0.57"},
			seed:     seedFixedAddress,
			wantReqs: []apiRequest{{Method: "PUT", Path: "/api/v1/machines/MACH02/interfaces/52:54:00:12:34:99", Body: `{"ip":"10.99.0.57"}`}},
			want: result{1, "", "ferrite: set address of 52:54:00:12:34:99 on machine MACH02: ip: 10.99.0.57 is already the fixed address of " +
				"52:54:00:12:34:57 on machine MACH01 (HTTP 409)\n"},
		},
		{
			name: "machines set-ip in the dynamic range: API message",
			args: []string{"machines", "set-ip", "MACH02", "--mac", "52:54:00:12:34:99", "--ip", "10.99.0.150"},
			wantReqs: []apiRequest{{Method: "PUT", Path: "/api/v1/machines/MACH02/interfaces/52:54:00:12:34:99",
				Body: `{"ip":"10.99.0.150"}`}},
			want: result{1, "", "ferrite: set address of 52:54:00:12:34:99 on machine MACH02: ip: 10.99.0.150 is inside the dynamic range " +
				"10.99.0.100-10.99.0.200 of 10.99.0.0/24: a fixed address must lie outside the DHCP pool (HTTP 400)\n"},
		},
		{
			name:     "machines show json",
			args:     []string{"machines", "show", "-o", "json", "MACH01"},
			want:     result{0, machine1JSON, ""},
			wantReqs: []apiRequest{{Method: "GET", Path: "/api/v1/machines/MACH01"}},
		},
		{
			name:     "machines show unknown: API message",
			args:     []string{"machines", "show", "zzz"},
			want:     result{1, "", "ferrite: get machine zzz: no machine with system_id \"zzz\" (HTTP 404)\n"},
			wantReqs: []apiRequest{{Method: "GET", Path: "/api/v1/machines/zzz"}},
		},
		{
			name: "events list escapes control characters",
			args: []string{"events", "list"},
			want: result{0, `TIME                  TYPE           SYSTEM ID  MAC                IP           RACK   DESCRIPTION
2026-03-01T10:00:00Z  DHCP_DISCOVER  -          52:54:00:12:34:56  -            rack1  arch 7
2026-03-01T10:00:01Z  TFTP_REQUEST   abc123     52:54:00:12:34:56  10.99.0.100  rack1  grub/grub.cfg\x1b[2J\tx
`, ""},
			wantReqs: []apiRequest{{Method: "GET", Path: "/api/v1/events"}},
			seed:     seedEvents,
		},
		{
			name:     "events list filters, MAC normalized",
			args:     []string{"events", "list", "--limit", "5", "--mac", "52-54-00-12-34-56", "--system-id", "abc123", "-o", "json"},
			wantReqs: []apiRequest{{Method: "GET", Path: "/api/v1/events", Query: "limit=5&mac=52%3A54%3A00%3A12%3A34%3A56&system_id=abc123"}},
			seed:     seedEvents,
			// The region filters: the DHCP_DISCOVER has the MAC but no system ID.
			want: result{0, `[
  {
    "id": 2,
    "time": "2026-03-01T10:00:01Z",
    "type": "TFTP_REQUEST",
    "system_id": "abc123",
    "mac": "52:54:00:12:34:56",
    "ip": "10.99.0.100",
    "rack": "rack1",
    "description": "grub/grub.cfg\u001b[2J\tx"
  }
]
`, ""},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			seed := tc.seed
			if seed == nil {
				seed = seedInventory
			}
			f := newRegion(t, seed)
			args := make([]string, len(tc.args))
			for i, a := range tc.args {
				args[i] = f.expand(a)
			}
			got := runCLI(t, envFor(t, f), args...)
			want := result{tc.want.Code, f.expand(tc.want.Stdout), f.expand(tc.want.Stderr)}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("ferrite %s (-want +got):\n%s", strings.Join(args, " "), diff)
			}
			wantReqs := append([]apiRequest(nil), tc.wantReqs...)
			for i := range wantReqs {
				wantReqs[i].Path = f.expand(wantReqs[i].Path)
			}
			if diff := cmp.Diff(wantReqs, f.requests()); diff != "" {
				t.Errorf("requests (-want +got):\n%s", diff)
			}
		})
	}
}

func TestImagesUploadStreamsFiles(t *testing.T) {
	f := newRegion(t, seedInventory)
	dir := t.TempDir()
	kernel := bytes.Repeat([]byte("kernel-bytes-"), 5<<20/13) // ~5 MiB
	initrd := make([]byte, 3<<20+17)
	for i := range initrd {
		initrd[i] = byte(i * 7)
	}
	kpath, ipath := filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initrd.img")
	if err := os.WriteFile(kpath, kernel, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ipath, initrd, 0o644); err != nil {
		t.Fatal(err)
	}
	ksum, isum := sha256.Sum256(kernel), sha256.Sum256(initrd)
	ks, is := hex.EncodeToString(ksum[:]), hex.EncodeToString(isum[:])
	created := func(name string) string {
		t.Helper()
		brs, err := f.Store.BootResources(context.Background(), name)
		if err != nil || len(brs) != 1 {
			t.Fatalf("image %s in the region: %+v, %v", name, brs, err)
		}
		return when(brs[0].Created)
	}

	// Replaces the seeded image of the same name and arch. The sha256 and
	// sizes are the region's own account of what it received.
	got := runCLI(t, envFor(t, f), "images", "upload", "--name", "custom/ephemeral", "--kernel", kpath, "--initrd", ipath, "-o", "json")
	want := result{0, fmt.Sprintf(`{
  "name": "custom/ephemeral",
  "arch": "amd64/generic",
  "kind": "kernel-initrd",
  "created": %q,
  "files": [
    {
      "filename": "boot-initrd",
      "sha256": %q,
      "size": %d
    },
    {
      "filename": "boot-kernel",
      "sha256": %q,
      "size": %d
    }
  ]
}
`, created("custom/ephemeral"), is, len(initrd), ks, len(kernel)), ""}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("upload (-want +got):\n%s", diff)
	}
	wantReqs := []apiRequest{{Method: "POST", Path: "/api/v1/images"}}
	if diff := cmp.Diff(wantReqs, f.requests()); diff != "" {
		t.Errorf("requests (-want +got):\n%s", diff)
	}

	// The table form, and the upload is then listed.
	got = runCLI(t, envFor(t, f), "images", "upload", "--name=custom/small", "--arch=arm64/generic", "--kernel="+ipath, "--initrd="+ipath)
	smallCreated := created("custom/small")
	wantTable := "NAME          ARCH           KIND           CREATED               FILES\n" +
		"custom/small  arm64/generic  kernel-initrd  " + smallCreated + "  boot-initrd (3.0 MiB), boot-kernel (3.0 MiB)\n"
	if diff := cmp.Diff(result{0, wantTable, ""}, got); diff != "" {
		t.Errorf("upload table (-want +got):\n%s", diff)
	}
	got = runCLI(t, envFor(t, f), "images", "list")
	if !strings.Contains(got.Stdout, "\ncustom/small      arm64/generic  kernel-initrd  "+smallCreated+"  boot-initrd (3.0 MiB)") {
		t.Errorf("images list does not show the upload:\n%s", got.Stdout)
	}
}

func TestImagesUploadMissingFile(t *testing.T) {
	f := newRegion(t)
	dir := t.TempDir()
	got := runCLI(t, envFor(t, f), "images", "upload", "--name", "custom/x", "--kernel", filepath.Join(dir, "nope"), "--initrd", dir)
	want := result{1, "", fmt.Sprintf("ferrite: open %s: no such file or directory\n", filepath.Join(dir, "nope"))}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	got = runCLI(t, envFor(t, f), "images", "upload", "--name", "custom/x", "--kernel", dir, "--initrd", dir)
	want = result{1, "", fmt.Sprintf("ferrite: %s is not a regular file\n", dir)}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if len(f.requests()) != 0 {
		t.Errorf("requests sent: %v", f.requests())
	}
}

// TestAPIErrors: a region answers 500 only when its database fails, which
// a test cannot arrange from outside, so a small local double of a failing
// region answers 500 with the API's error body here.
func TestAPIErrors(t *testing.T) {
	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusInternalServerError)
		io.WriteString(w, `{"error":"boom: the database is on fire"}`)
	}))
	t.Cleanup(failing.Close)
	env := map[string]string{"XDG_CONFIG_HOME": t.TempDir(), "FERRITE_URL": failing.URL, "FERRITE_TOKEN": "t"}
	tests := []struct {
		name string
		args []string
		want result
	}{
		{"racks", []string{"racks", "list"},
			result{1, "", "ferrite: list racks: boom: the database is on fire (HTTP 500)\n"}},
		{"machines json", []string{"machines", "list", "-o", "json"},
			result{1, "", "ferrite: list machines: boom: the database is on fire (HTTP 500)\n"}},
		{"events", []string{"events", "list"},
			result{1, "", "ferrite: list events: boom: the database is on fire (HTTP 500)\n"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, runCLI(t, env, tc.args...)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestUsage(t *testing.T) {
	env := map[string]string{"XDG_CONFIG_HOME": t.TempDir()} // not logged in: usage errors come first
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string // substring
		wantStderr string // exact, unless wantStdout is set
	}{
		{name: "help", args: []string{"help"}, wantStdout: "Usage: ferrite COMMAND"},
		{name: "-h", args: []string{"-h"}, wantStdout: "  subnets create --cidr CIDR --rack NAME"},
		{name: "help command", args: []string{"help", "events", "list"}, wantStdout: "Usage: ferrite events list [--limit N] [--mac MAC]"},
		{name: "help group", args: []string{"help", "images"}, wantStdout: "Usage: ferrite images SUBCOMMAND"},
		{name: "command -h", args: []string{"subnets", "create", "-h"}, wantStdout: "  --dynamic-range LO-HI\n        DHCP pool LO-HI"},
		{name: "group -h", args: []string{"machines", "--help"}, wantStdout: "  machines show SYSTEM_ID [-o json]"},
		{name: "no args", args: nil, wantCode: 2},
		{name: "unknown command", args: []string{"frobnicate"}, wantCode: 2},
		{name: "missing subcommand", args: []string{"racks"}, wantCode: 2},
		{name: "unknown subcommand", args: []string{"racks", "delete"}, wantCode: 2},
		{name: "unknown flag", args: []string{"racks", "list", "--bogus"}, wantCode: 2,
			wantStderr: "ferrite racks list: flag provided but not defined: -bogus\nRun 'ferrite racks list -h' for usage.\n"},
		{name: "bad output format", args: []string{"machines", "list", "-o", "yaml"}, wantCode: 2,
			wantStderr: "ferrite machines list: invalid value \"yaml\" for flag -o: unknown output format \"yaml\": want table or json\nRun 'ferrite machines list -h' for usage.\n"},
		{name: "unexpected argument", args: []string{"machines", "list", "extra"}, wantCode: 2,
			wantStderr: "ferrite machines list: unexpected argument \"extra\"\nRun 'ferrite machines list -h' for usage.\n"},
		{name: "show without id", args: []string{"machines", "show"}, wantCode: 2,
			wantStderr: "ferrite machines show: want one SYSTEM_ID, got 0 arguments\nRun 'ferrite machines show -h' for usage.\n"},
		{name: "config set one arg", args: []string{"config", "set", "kernel_opts"}, wantCode: 2,
			wantStderr: "ferrite config set: want KEY VALUE, got 1 argument(s)\nRun 'ferrite config set -h' for usage.\n"},
		{name: "subnet missing flags", args: []string{"subnets", "create"}, wantCode: 2,
			wantStderr: "ferrite subnets create: --cidr is required\n--rack is required (see ferrite racks list)\nRun 'ferrite subnets create -h' for usage.\n"},
		{name: "subnet bad cidr", args: []string{"subnets", "create", "--cidr", "10.0.0.0/33"}, wantCode: 2,
			wantStderr: "ferrite subnets create: invalid value \"10.0.0.0/33\" for flag -cidr: not a CIDR such as 10.0.0.0/24 or fd00::/64\nRun 'ferrite subnets create -h' for usage.\n"},
		{name: "subnet cidr with host bits", args: []string{"subnets", "create", "--cidr", "10.0.0.5/24"}, wantCode: 2,
			wantStderr: "ferrite subnets create: invalid value \"10.0.0.5/24\" for flag -cidr: 10.0.0.5/24 has host bits set: did you mean 10.0.0.0/24?\nRun 'ferrite subnets create -h' for usage.\n"},
		{name: "subnet bad dns", args: []string{"subnets", "create", "--dns", "1.1.1.1,dns.example"}, wantCode: 2,
			wantStderr: "ferrite subnets create: invalid value \"1.1.1.1,dns.example\" for flag -dns: \"dns.example\" is not an IP address\nRun 'ferrite subnets create -h' for usage.\n"},
		{name: "subnet unknown boot method", args: []string{"subnets", "create", "--disable-boot-method", "uefi"}, wantCode: 2,
			wantStderr: "ferrite subnets create: invalid value \"uefi\" for flag -disable-boot-method: unknown boot method \"uefi\": want one of ipxe, pxe, uefi_amd64_tftp, uefi_amd64_http, uefi_arm64_tftp, uefi_arm64_http\nRun 'ferrite subnets create -h' for usage.\n"},
		{name: "set-ip without an address", args: []string{"machines", "set-ip", "abc123", "--mac", "52:54:00:12:34:56"}, wantCode: 2,
			wantStderr: "ferrite machines set-ip: --ip ADDRESS or --clear is required\nRun 'ferrite machines set-ip -h' for usage.\n"},
		{name: "set-ip everything wrong", args: []string{"machines", "set-ip", "abc123", "--mac", "zz", "--clear", "--ip", "10.0.0.5"}, wantCode: 2,
			wantStderr: "ferrite machines set-ip: --mac: \"zz\" is not a MAC address such as 52:54:00:12:34:56\n--clear and --ip ADDRESS contradict each other\nRun 'ferrite machines set-ip -h' for usage.\n"},
		{name: "set-ip no mac, bad ip", args: []string{"machines", "set-ip", "abc123", "--ip", "10.0.0.500"}, wantCode: 2,
			wantStderr: "ferrite machines set-ip: --mac is required (see ferrite machines show SYSTEM_ID)\n--ip: \"10.0.0.500\" is not an IP address\nRun 'ferrite machines set-ip -h' for usage.\n"},
		{name: "set-ip without id", args: []string{"machines", "set-ip", "--clear", "--mac", "52:54:00:12:34:56"}, wantCode: 2,
			wantStderr: "ferrite machines set-ip: want one SYSTEM_ID, got 0 arguments\nRun 'ferrite machines set-ip -h' for usage.\n"},
		{name: "leases bad state", args: []string{"leases", "list", "--state", "bound"}, wantCode: 2,
			wantStderr: "ferrite leases list: --state \"bound\": want active, released, expired or declined\nRun 'ferrite leases list -h' for usage.\n"},
		{name: "subnet range not a range", args: []string{"subnets", "create", "--dynamic-range", "10.0.0.1"}, wantCode: 2,
			wantStderr: "ferrite subnets create: invalid value \"10.0.0.1\" for flag -dynamic-range: \"10.0.0.1\" is not a range LO-HI such as 10.0.0.100-10.0.0.200\nRun 'ferrite subnets create -h' for usage.\n"},
		{name: "subnet range backwards", args: []string{"subnets", "create", "--dynamic-range", "10.0.0.9-10.0.0.1"}, wantCode: 2,
			wantStderr: "ferrite subnets create: invalid value \"10.0.0.9-10.0.0.1\" for flag -dynamic-range: range \"10.0.0.9-10.0.0.1\" ends before it starts\nRun 'ferrite subnets create -h' for usage.\n"},
		{name: "subnet range mixed families", args: []string{"subnets", "create", "--dynamic-range", "10.0.0.1-fd00::1"}, wantCode: 2,
			wantStderr: "ferrite subnets create: invalid value \"10.0.0.1-fd00::1\" for flag -dynamic-range: range \"10.0.0.1-fd00::1\" mixes IPv4 and IPv6\nRun 'ferrite subnets create -h' for usage.\n"},
		{name: "subnet every cross-check at once",
			args: []string{"subnets", "create", "--cidr", "10.0.0.0/24", "--rack", "r", "--gateway", "10.1.0.1",
				"--dynamic-range", "10.0.0.10-10.0.1.20", "--dynamic-range", "10.0.0.15-10.0.0.30"}, wantCode: 2,
			wantStderr: "ferrite subnets create: gateway 10.1.0.1 is not in 10.0.0.0/24\n" +
				"dynamic range 10.0.0.10-10.0.1.20 is not inside 10.0.0.0/24\n" +
				"dynamic ranges 10.0.0.10-10.0.1.20 and 10.0.0.15-10.0.0.30 overlap\nRun 'ferrite subnets create -h' for usage.\n"},
		{name: "gateway inside the pool",
			args: []string{"subnets", "create", "--cidr", "10.0.0.0/24", "--rack", "r", "--gateway", "10.0.0.20", "--dynamic-range", "10.0.0.10-10.0.0.30"}, wantCode: 2,
			wantStderr: "ferrite subnets create: gateway 10.0.0.20 is inside dynamic range 10.0.0.10-10.0.0.30\nRun 'ferrite subnets create -h' for usage.\n"},
		{name: "upload missing flags", args: []string{"images", "upload", "--arch", "amd64"}, wantCode: 2,
			wantStderr: "ferrite images upload: --name is required\n--kernel is required\n--initrd is required\n--arch \"amd64\": want ARCH/SUBARCH such as amd64/generic\nRun 'ferrite images upload -h' for usage.\n"},
		{name: "events bad mac", args: []string{"events", "list", "--mac", "52:54:00"}, wantCode: 2,
			wantStderr: "ferrite events list: --mac: \"52:54:00\" is not a MAC address such as 52:54:00:12:34:56\nRun 'ferrite events list -h' for usage.\n"},
		{name: "events negative limit", args: []string{"events", "list", "--limit", "-1"}, wantCode: 2,
			wantStderr: "ferrite events list: --limit -1: must not be negative\nRun 'ferrite events list -h' for usage.\n"},
		{name: "login without flags", args: []string{"login"}, wantCode: 2,
			wantStderr: "ferrite login: --url is required\n--token is required\nRun 'ferrite login -h' for usage.\n"},
		{name: "login url without scheme", args: []string{"login", "--url", "10.0.0.1:5240", "--token", "t"}, wantCode: 2,
			wantStderr: "ferrite login: invalid API URL \"10.0.0.1:5240\": want an http:// or https:// URL such as http://10.0.0.1:5240\nRun 'ferrite login -h' for usage.\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := runCLI(t, env, tc.args...)
			if got.Code != tc.wantCode {
				t.Errorf("exit code = %d, want %d (stderr %q)", got.Code, tc.wantCode, got.Stderr)
			}
			switch {
			case tc.wantStdout != "":
				if !strings.Contains(got.Stdout, tc.wantStdout) {
					t.Errorf("stdout does not contain %q:\n%s", tc.wantStdout, got.Stdout)
				}
				if got.Stderr != "" {
					t.Errorf("stderr = %q, want none", got.Stderr)
				}
			case tc.wantStderr != "":
				if diff := cmp.Diff(tc.wantStderr, got.Stderr); diff != "" {
					t.Errorf("stderr (-want +got):\n%s", diff)
				}
			default:
				if got.Stderr == "" || !strings.Contains(got.Stderr, "Usage: ferrite") {
					t.Errorf("stderr should show usage, got %q", got.Stderr)
				}
			}
			if tc.wantCode != 0 && got.Stdout != "" {
				t.Errorf("stdout = %q, want none on error", got.Stdout)
			}
		})
	}
}

// TestHelpListsEveryCommand keeps the help text true: every command of the
// contract is listed and has its own usage.
func TestHelpListsEveryCommand(t *testing.T) {
	help := runCLI(t, nil, "help").Stdout
	for _, c := range []string{"login", "racks list", "subnets create", "subnets list", "images upload", "images list",
		"config set", "config get", "machines list", "machines show", "machines set-ip", "events list"} {
		if !strings.Contains(help, "\n  "+c+" ") && !strings.Contains(help, "\n  "+c+"\n") {
			t.Errorf("ferrite help does not list %q", c)
		}
		args := append(strings.Fields(c), "-h")
		if got := runCLI(t, nil, args...); got.Code != 0 || !strings.HasPrefix(got.Stdout, "Usage: ferrite "+c) {
			t.Errorf("ferrite %s -h = %+v", c, got)
		}
	}
}

// machine1JSON is `machines show -o json MACH01` of the inventory seed without fixed addresses.
const machine1JSON = `{
  "system_id": "MACH01",
  "hostname": "ferrite-MACH01",
  "status": "New",
  "architecture": "amd64/generic",
  "mac_addresses": [
    "52:54:00:12:34:56",
    "52:54:00:12:34:57"
  ],
  "interfaces": [
    {
      "mac": "52:54:00:12:34:56",
      "ip": ""
    },
    {
      "mac": "52:54:00:12:34:57",
      "ip": ""
    }
  ],
  "cpu_count": 2,
  "memory_mb": 2048,
  "hardware_uuid": "4c4c4544-0000-1000-8000-000000000001",
  "created": "2000-01-01T00:00:03Z",
  "power_type": "",
  "power_parameters": {},
  "power_state": "unknown",
  "power_state_updated": "",
  "netboot": true,
  "deploy_image": "",
  "user_data_size": 0,
  "owner": "",
  "previous_status": "",
  "error_description": "",
  "disk_count": 0,
  "storage_bytes": 0
}
`
