package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/ferrite-metal/ferrite/pkg/preseed"
)

func TestEraseJob(t *testing.T) {
	const size = 6 << 20 // the rig's vda, refilled: larger than two quick-erase edges
	tests := []struct {
		name       string
		extra      string
		files      map[string]string
		wantErr    string
		wantStatus []string
		wantPower  []string
		wantZero   [][2]int64 // byte ranges that must be zero; everything else 0xEE
	}{
		{
			name: "full", extra: `,"erase":{"mode":"full"}`,
			wantStatus: []string{"OK"}, wantPower: []string{"poweroff"}, wantZero: [][2]int64{{0, size}},
		},
		{
			name: "quick", extra: `,"erase":{"mode":"quick"}`,
			wantStatus: []string{"OK"}, wantPower: []string{"poweroff"},
			wantZero: [][2]int64{{0, preseed.QuickEraseBytes}, {size - preseed.QuickEraseBytes, size}},
		},
		{
			name: "a mounted disk fails the job", extra: `,"erase":{"mode":"quick"}`,
			files:   map[string]string{"proc/mounts": "/dev/vda2 /mnt ext4 rw 0 0\n"},
			wantErr: "is mounted", wantStatus: []string{"FAILED"}, wantPower: []string{"poweroff"},
		},
		{
			name: "no mode", wantErr: "without erase.mode", wantStatus: []string{"FAILED"}, wantPower: []string{"poweroff"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			files := map[string]string{
				"sys/block/vda/size": "12288\n",
				"dev/vda":            string(bytes.Repeat([]byte{0xEE}, size)),
			}
			for k, v := range tt.files {
				files[k] = v
			}
			r := newJobRig(t, jobConfig("erase", "poweroff", tt.extra), nil, files)
			err := r.run(t, context.Background())
			if tt.wantErr == "" && err != nil {
				t.Fatalf("Run: %v", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("Run = %v, want an error containing %q", err, tt.wantErr)
			}
			var statuses []string
			for _, rec := range r.md.got() {
				if rec.Status != "WORKING" {
					statuses = append(statuses, rec.Status)
				}
			}
			if diff := cmp.Diff(tt.wantStatus, statuses); diff != "" {
				t.Errorf("signals (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantPower, r.power.got()); diff != "" {
				t.Errorf("power (-want +got):\n%s", diff)
			}
			disk, err := os.ReadFile(filepath.Join(r.root, "dev/vda"))
			if err != nil || len(disk) != size {
				t.Fatalf("disk: %d bytes, %v", len(disk), err)
			}
			for i, b := range disk {
				zero := false
				for _, z := range tt.wantZero {
					zero = zero || (int64(i) >= z[0] && int64(i) < z[1])
				}
				if want := map[bool]byte{true: 0, false: 0xEE}[zero]; b != want {
					t.Fatalf("byte %d is %#x, want %#x", i, b, want)
				}
			}
		})
	}
}
