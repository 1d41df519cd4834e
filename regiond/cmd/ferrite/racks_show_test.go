package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ferrite-metal/ferrite/regiond/apiclient"
)

func TestRackDetails(t *testing.T) {
	at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	k, i, r, old := strings.Repeat("1", 64), strings.Repeat("2", 64), strings.Repeat("3", 64), strings.Repeat("9", 64)
	use := func(file string) []apiclient.RackFileUse {
		return []apiclient.RackFileUse{{Resource: "custom/x", Arch: "amd64/generic", Kind: "kernel-initrd", Filename: file}}
	}
	rk := apiclient.RackDetail{
		Rack:    apiclient.Rack{ID: "rack-abc123", Name: "rack1", Version: "0.1.0", LastSeen: at, Interfaces: []apiclient.RackInterface{{Name: "eth0", Addresses: []string{"10.0.0.2/24"}}}},
		Regions: []apiclient.RackRegion{{Region: "10.0.0.1:5250", LastSeen: at}},
		Sync: apiclient.RackSync{State: apiclient.SyncSyncing, Reported: "2030-01-02T03:04:05Z", FilesWanted: 3, FilesComplete: 1,
			BytesWanted: 3 << 30, BytesHeld: 1<<30 + 1<<29, Files: []apiclient.RackSyncFile{
				{SHA256: k, Size: 1 << 30, State: apiclient.FileComplete, Held: 1 << 30, Uses: use("boot-kernel")},
				{SHA256: i, Size: 1 << 30, State: apiclient.FilePartial, Held: 1 << 29, Downloading: true, Uses: use("boot-initrd")},
				{SHA256: r, Size: 1 << 30, State: apiclient.FileFailed, Error: "FetchFile: code = Internal", Uses: use("root-dd")},
			},
			ToRemove: []apiclient.RackCachedFile{{SHA256: old, Held: 2048, Complete: true}}},
	}
	var b bytes.Buffer
	if err := emit(&b, "", rk, rackDetails(rk)); err != nil {
		t.Fatal(err)
	}
	want := `ID:           rack-abc123
Name:         rack1
Version:      0.1.0
Last seen:    2030-01-02T03:04:05Z
Regions:      10.0.0.1:5250 (last call 2030-01-02T03:04:05Z)
Interfaces:   eth0 10.0.0.2/24
Sync:         syncing: 1 of 3 files, 1.5 of 3.0 GiB
Last report:  2030-01-02T03:04:05Z

STATE                                 SIZE     SHA256        FILE                                ERROR
complete                              1.0 GiB  111111111111  custom/x amd64/generic boot-kernel  -
partial 0.5 of 1.0 GiB (downloading)  1.0 GiB  222222222222  custom/x amd64/generic boot-initrd  -
failed                                1.0 GiB  333333333333  custom/x amd64/generic root-dd      FetchFile: code = Internal

To remove (held, no longer wanted):
SHA256                                                            HELD
9999999999999999999999999999999999999999999999999999999999999999  2.0 KiB
`
	if diff := cmp.Diff(want, b.String()); diff != "" {
		t.Errorf("racks show (-want +got):\n%s", diff)
	}

	never := apiclient.RackDetail{Rack: apiclient.Rack{ID: "rack-x", Name: "new"}, Sync: apiclient.RackSync{State: apiclient.SyncNotReported, FilesWanted: 2, BytesWanted: 3 << 20}}
	b.Reset()
	if err := emit(&b, "", never, rackDetails(never)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "Sync:        not reported yet: the rack has not said what it holds (2 files, 3.0 MiB wanted)") {
		t.Errorf("never reported:\n%s", b.String())
	}
}

func TestSizeOf(t *testing.T) {
	for _, tc := range []struct {
		n, total int64
		want     string
	}{
		{0, 0, "0 of 0 B"},
		{512, 1000, "512 of 1000 B"},
		{1 << 20, 3 << 20, "1.0 of 3.0 MiB"},
		{14 << 30 / 10, 15 << 30 / 10, "1.4 of 1.5 GiB"},
	} {
		if got := sizeOf(tc.n, tc.total); got != tc.want {
			t.Errorf("sizeOf(%d, %d) = %q, want %q", tc.n, tc.total, got, tc.want)
		}
	}
}
