package rpc

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	rackv1 "github.com/ferrite-metal/ferrite/proto/ferrite/rack/v1"
	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// TestBootPurposePerState drives a machine into every state through the
// store and checks what GetBootConfig answers for its MAC (MAAS's "what
// each state boots").
func TestBootPurposePerState(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	kernel, initrd := setupImage(t, e.store)
	setConfig(t, e.store, ConfigCommissioningImage, "custom/ephemeral")
	root := putBlob(t, e.store, store.FileRootDD, []byte("raw disk"))
	if _, err := e.store.SaveBootResource(ctxT(t), store.BootResource{Name: "custom/debian", Arch: "amd64/generic",
		Kind: store.KindRootDD, Files: []store.BootFile{root}}); err != nil {
		t.Fatal(err)
	}
	client, _ := e.rackClient(t, "rack-a")
	pk := &rackv1.BootFile{Sha256: kernel.SHA256, Size: kernel.Size, Filename: kernel.Filename}
	pi := &rackv1.BootFile{Sha256: initrd.SHA256, Size: initrd.Size, Filename: initrd.Filename}
	pr := &rackv1.BootFile{Sha256: root.SHA256, Size: root.Size, Filename: root.Filename}

	toReady := []string{"Commissioning", "Ready"}
	deploying := append(append([]string{}, toReady...), "deploy")
	deployed := append(append([]string{}, deploying...), "Deployed")
	rescue := append(append([]string{}, toReady...), "rescue")
	tests := []struct {
		status string
		path   []string // Transitions, or "deploy"/"rescue"/"netboot-off" actions
		want   string
	}{
		{"New", nil, "commissioning"},
		{"Commissioning", []string{"Commissioning"}, "commissioning"},
		{"Failed commissioning", []string{"Commissioning", "Failed commissioning"}, "poweroff"},
		{"Testing", []string{"Testing"}, "commissioning"},
		{"Failed testing", []string{"Testing", "Failed testing"}, "poweroff"},
		{"Ready", toReady, "poweroff"},
		{"Allocated", append(append([]string{}, toReady...), "Allocated"), "poweroff"},
		{"Deploying", deploying, "xinstall"},
		{"Deploying", append(append([]string{}, deploying...), "netboot-off"), "local"},
		{"Failed deployment", append(append([]string{}, deploying...), "Failed deployment"), "poweroff"},
		{"Deployed", deployed, "local"},
		{"Releasing", append(append([]string{}, deployed...), "Releasing"), "commissioning"},
		{"Failed releasing", append(append([]string{}, deployed...), "Releasing", "Failed releasing"), "poweroff"},
		{"Disk erasing", append(append([]string{}, deployed...), "Disk erasing"), "commissioning"},
		{"Failed disk erasing", append(append([]string{}, deployed...), "Disk erasing", "Failed disk erasing"), "poweroff"},
		{"Entering rescue mode", rescue, "rescue"},
		{"Rescue mode", append(append([]string{}, rescue...), "Rescue mode"), "rescue"},
		{"Failed to enter rescue mode", append(append([]string{}, rescue...), "Failed to enter rescue mode"), "poweroff"},
		{"Exiting rescue mode", append(append([]string{}, rescue...), "Rescue mode", "Exiting rescue mode"), "poweroff"},
		{"Failed to exit rescue mode", append(append([]string{}, rescue...), "Rescue mode", "Exiting rescue mode",
			"Failed to exit rescue mode"), "poweroff"},
		{"Broken", []string{"mark-broken"}, "poweroff"},
	}
	covered := map[string]bool{}
	for i, tc := range tests {
		covered[tc.status] = true
		mac := fmt.Sprintf("52:54:00:00:30:%02x", i)
		t.Run(fmt.Sprintf("%s %s", tc.status, tc.want), func(t *testing.T) {
			ctx := ctxT(t)
			m, _, err := e.store.EnlistMachine(ctx, store.Machine{Arch: "amd64/generic", MACs: []string{mac}})
			if err != nil {
				t.Fatal(err)
			}
			for _, step := range tc.path {
				switch step {
				case "deploy", "rescue", "mark-broken":
					_, err = e.store.ApplyAction(ctx, m.SystemID, store.ActionRequest{Action: store.Action(step), Image: "custom/debian"})
				case "netboot-off":
					err = e.store.SetNetboot(ctx, m.SystemID, false, store.NetbootRequest{})
				default:
					cur, _ := e.store.Machine(ctx, m.SystemID)
					_, err = e.store.Transition(ctx, m.SystemID, cur.Status, step, "")
				}
				if err != nil {
					t.Fatalf("step %s: %v", step, err)
				}
			}
			before, err := e.store.Machine(ctx, m.SystemID)
			if err != nil || before.Status != tc.status {
				t.Fatalf("machine in %q (%v), want %q", before.Status, err, tc.status)
			}
			time.Sleep(5 * time.Millisecond) // so a restarted timeout is visibly later
			got, err := client.GetBootConfig(context.Background(), &rackv1.GetBootConfigRequest{
				LocalIp: "10.0.0.2", Mac: mac, Path: "grub/grub.cfg-" + mac})
			if err != nil {
				t.Fatal(err)
			}
			want := &rackv1.GetBootConfigResponse{Arch: "amd64", Subarch: "generic", Purpose: tc.want,
				Hostname: m.Hostname, Domain: "local", SystemId: m.SystemID, LogHost: "10.0.0.2", LogPort: 5247}
			if tc.want != "local" {
				want.Osystem, want.Release, want.Kernel, want.Initrd = "custom", "ephemeral", pk, pi
				want.MetadataUrl = "http://10.0.0.2:5248/MAAS/metadata/latest/by-id/" + m.SystemID + "/?op=get_preseed"
			}
			if tc.want == "xinstall" {
				want.Root = pr
			}
			if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
				t.Errorf("response (-want +got):\n%s", diff)
			}
			after, err := e.store.Machine(ctx, m.SystemID)
			if err != nil {
				t.Fatal(err)
			}
			if store.Monitored(tc.status) && !after.StatusExpires.After(before.StatusExpires) {
				t.Errorf("status_expires %v not restarted (was %v)", after.StatusExpires, before.StatusExpires)
			}
			if !store.Monitored(tc.status) && !after.StatusExpires.IsZero() {
				t.Errorf("status_expires %v set in %s", after.StatusExpires, tc.status)
			}
		})
	}
	for _, st := range store.Statuses() {
		if !covered[st] {
			t.Errorf("state %s not covered", st)
		}
	}

	t.Run("deployed machine boots its disk without any image", func(t *testing.T) {
		ctx := ctxT(t)
		m, _, err := e.store.EnlistMachine(ctx, store.Machine{Arch: "amd64/generic", MACs: []string{"52:54:00:00:31:01"}})
		if err != nil {
			t.Fatal(err)
		}
		for _, step := range deployed {
			if step == "deploy" {
				_, err = e.store.ApplyAction(ctx, m.SystemID, store.ActionRequest{Action: store.ActionDeploy, Image: "custom/debian"})
			} else {
				cur, _ := e.store.Machine(ctx, m.SystemID)
				_, err = e.store.Transition(ctx, m.SystemID, cur.Status, step, "")
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		setConfig(t, e.store, ConfigCommissioningImage, "custom/gone")
		t.Cleanup(func() { setConfig(t, e.store, ConfigCommissioningImage, "custom/ephemeral") })
		got, err := client.GetBootConfig(context.Background(), &rackv1.GetBootConfigRequest{LocalIp: "10.0.0.2", Mac: "52:54:00:00:31:01"})
		if err != nil || got.GetPurpose() != "local" || got.GetKernel() != nil {
			t.Errorf("got %v, %v; want purpose local without a kernel", got, err)
		}
	})
}
