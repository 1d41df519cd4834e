package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap/zaptest"
)

// jobRig runs the agent with a fake root against a fakeMetadata that also serves the
// cloud-config (with {{URL}} replaced) and an image at /images/img/root-dd.
type jobRig struct {
	md    *fakeMetadata
	root  string
	power *recordingPower
	image []byte
}

func newJobRig(t *testing.T, cloudConfig string, image []byte, files map[string]string) *jobRig {
	t.Helper()
	r := &jobRig{power: &recordingPower{}, image: image}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /MAAS/metadata/latest/by-id/abc123/", func(w http.ResponseWriter, req *http.Request) {
		fmt.Fprint(w, strings.ReplaceAll(cloudConfig, "{{URL}}", r.md.URL))
	})
	mux.HandleFunc("GET /images/img/root-dd", func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(len(r.image)))
		w.Write(r.image)
	})
	r.md = newFakeMetadata(t, mux)
	all := map[string]string{
		"proc/cmdline":                  "console=ttyS0\n",
		"proc/cpuinfo":                  cpuinfoQEMU,
		"sys/devices/system/cpu/online": "0-1\n",
		"proc/meminfo":                  "MemTotal: 1048576 kB\n",
		"sys/class/net/eth0/address":    "52:54:00:12:34:56\n",
		"sys/class/net/eth0/carrier":    "1\n",
		"sys/block/vda/size":            "8192\n", // 4 MiB
		"sys/block/vda/removable":       "0\n",
		"dev/vda":                       string(bytes.Repeat([]byte{0xEE}, 4<<20)),
	}
	for k, v := range files {
		all[k] = v
	}
	r.root = fakeRoot(t, all)
	return r
}

func (r *jobRig) run(t *testing.T, ctx context.Context) error {
	t.Helper()
	a := New(Config{
		Root:           r.root,
		CloudConfigURL: r.md.URL + "/MAAS/metadata/latest/by-id/abc123/?op=get_preseed",
		RetryFor:       time.Second,
		RetryDelay:     10 * time.Millisecond,
	}, zaptest.NewLogger(t), r.power)
	a.condition = func(context.Context, string) error { return nil }
	return a.Run(ctx)
}

func jobConfig(job, powerState, extra string) string {
	ps := ""
	if powerState != "" {
		ps = fmt.Sprintf(`,"power_state":{"delay":"now","mode":%q,"timeout":1800,"condition":"test ! -e /tmp/block-%s"}`, powerState, powerState)
	}
	return fmt.Sprintf(`#cloud-config
{"datasource":{"MAAS":{"metadata_url":"{{URL}}/MAAS/metadata/","consumer_key":"ck","token_key":"tk","token_secret":"ts"}},
 "ferrite":{"job":%q,"system_id":"abc123","metadata_url":"{{URL}}/MAAS/metadata/"%s}%s}
`, job, extra, ps)
}

func TestCommissionJob(t *testing.T) {
	r := newJobRig(t, jobConfig("commission", "poweroff", ""), nil, nil)
	if err := r.run(t, context.Background()); err != nil {
		t.Fatalf("Run: %v", err)
	}
	got := r.md.got()
	if len(got) != 1 || got[0].Op != "signal" || got[0].Status != "OK" || got[0].Error != "" {
		t.Fatalf("requests = %+v, want one OK signal", got)
	}
	var inv Inventory
	if err := json.Unmarshal([]byte(got[0].Files["inventory.json"]), &inv); err != nil {
		t.Fatalf("inventory.json: %v", err)
	}
	want := Inventory{
		CPU: CPUInfo{Model: "QEMU Virtual CPU version 2.5+", Count: 2}, MemoryMB: 1024,
		Disks:    []Disk{{Name: "vda", SizeBytes: 4 << 20}},
		NICs:     []NIC{{Name: "eth0", MAC: "52:54:00:12:34:56", Link: true}},
		Firmware: "bios",
	}
	if diff := cmp.Diff(want, inv); diff != "" {
		t.Errorf("inventory (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"poweroff"}, r.power.got()); diff != "" {
		t.Errorf("power (-want +got):\n%s", diff)
	}
}

func TestCommissionJobFailsWithoutMemory(t *testing.T) {
	r := newJobRig(t, jobConfig("commission", "poweroff", ""), nil, nil)
	os.Remove(filepath.Join(r.root, "proc/meminfo"))
	if err := r.run(t, context.Background()); err == nil {
		t.Fatal("Run succeeded without /proc/meminfo")
	}
	got := r.md.got()
	if len(got) != 1 || got[0].Status != "FAILED" || !strings.Contains(got[0].Error, "read memory size") {
		t.Errorf("requests = %+v, want one FAILED signal naming the memory", got)
	}
}

func TestCredentialsForAnotherMachine(t *testing.T) {
	r := newJobRig(t, jobConfig("commission", "poweroff", ""), nil, nil)
	r.md.systemID = "other"
	err := r.run(t, context.Background())
	if err == nil || !strings.Contains(err.Error(), `"other"`) {
		t.Fatalf("Run = %v, want a refusal naming the other machine", err)
	}
	if got := r.md.got(); len(got) != 0 {
		t.Errorf("the agent signalled with another machine's credentials: %+v", got)
	}
}

func TestDeployJob(t *testing.T) {
	img, sum := testImage(3<<20 + 17)
	deployFor := func(sha string, size int) string {
		return fmt.Sprintf(`,"deploy":{"image_url":"{{URL}}/images/img/root-dd","sha256":%q,"size":%d,"disk":""}`, sha, size)
	}
	tests := []struct {
		name        string
		extra       string
		serve       []byte
		files       map[string]string
		wantErr     string
		wantStatus  []string // signal statuses in order, netboot_off as "netboot_off"
		wantPower   []string
		wantWritten bool
	}{
		{
			name: "writes, verifies, netboot off, reboots", extra: deployFor(sum, len(img)), serve: img,
			wantStatus: []string{"WORKING", "netboot_off", "OK"}, wantPower: []string{"reboot"}, wantWritten: true,
		},
		{
			name: "corrupted download fails and powers off", extra: deployFor(sum, len(img)),
			serve:   append(append([]byte(nil), img[:len(img)-1]...), img[len(img)-1]^1),
			wantErr: "sha256", wantStatus: []string{"WORKING", "FAILED"}, wantPower: []string{"poweroff"},
		},
		{
			name: "wrong length fails before writing", extra: deployFor(sum, len(img)+1), serve: img,
			wantErr: "want 3145746", wantStatus: []string{"FAILED"}, wantPower: []string{"poweroff"},
		},
		{
			name: "mounted disk is refused", extra: deployFor(sum, len(img)), serve: img,
			files:   map[string]string{"proc/mounts": "/dev/vda1 / ext4 rw 0 0\n"},
			wantErr: "no free disk", wantStatus: []string{"FAILED"}, wantPower: []string{"poweroff"},
		},
		{
			name: "no deploy instructions", serve: img,
			wantErr: "without deploy.image_url", wantStatus: []string{"FAILED"}, wantPower: []string{"poweroff"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newJobRig(t, jobConfig("deploy", "reboot", tt.extra), tt.serve, tt.files)
			err := r.run(t, context.Background())
			if tt.wantErr == "" && err != nil {
				t.Fatalf("Run: %v", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("Run = %v, want an error containing %q", err, tt.wantErr)
			}
			var statuses []string
			for _, rec := range r.md.got() {
				if rec.Op == "netboot_off" {
					statuses = append(statuses, "netboot_off")
					continue
				}
				if rec.Status == "WORKING" && len(statuses) > 0 && statuses[len(statuses)-1] == "WORKING" {
					continue // progress reports vary with speed
				}
				statuses = append(statuses, rec.Status)
				if rec.Status == "FAILED" && !strings.Contains(rec.Error, tt.wantErr) {
					t.Errorf("FAILED signal's error %q does not say %q", rec.Error, tt.wantErr)
				}
			}
			if diff := cmp.Diff(tt.wantStatus, statuses); diff != "" {
				t.Errorf("signals (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantPower, r.power.got()); diff != "" {
				t.Errorf("power (-want +got):\n%s", diff)
			}
			disk, _ := os.ReadFile(filepath.Join(r.root, "dev/vda"))
			if written := bytes.HasPrefix(disk, img); written != tt.wantWritten {
				t.Errorf("the disk holds the image: %v, want %v", written, tt.wantWritten)
			}
		})
	}
}

func TestRescueJob(t *testing.T) {
	r := newJobRig(t, jobConfig("rescue", "", ""), nil, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.run(t, ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for len(r.md.got()) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case err := <-done:
		t.Fatalf("rescue returned before ctx ended: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	want := []signalRecord{{Method: "POST", Path: "/MAAS/metadata/2012-03-01/", Op: "signal", Status: "OK", Error: "rescue mode ready"}}
	if diff := cmp.Diff(want, r.md.got()); diff != "" {
		t.Errorf("requests (-want +got):\n%s", diff)
	}
	if got := r.power.got(); len(got) != 0 {
		t.Errorf("rescue changed the power: %v", got)
	}
}
