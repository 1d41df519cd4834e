package lab

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Event is one entry of `ferrite events list -o json`.
type Event struct {
	ID          int64  `json:"id"`
	Time        string `json:"time"`
	Type        string `json:"type"`
	SystemID    string `json:"system_id"`
	MAC         string `json:"mac"`
	IP          string `json:"ip"`
	Rack        string `json:"rack"`
	Description string `json:"description"`
}

// Machine is one entry of `ferrite machines list -o json`.
type Machine struct {
	SystemID     string   `json:"system_id"`
	Hostname     string   `json:"hostname"`
	Status       string   `json:"status"`
	Architecture string   `json:"architecture"`
	MACAddresses []string `json:"mac_addresses"`
	CPUCount     int      `json:"cpu_count"`
	MemoryMB     int64    `json:"memory_mb"`
	DiskCount    int      `json:"disk_count"`
	StorageBytes int64    `json:"storage_bytes"`
}

// Step is one thing a booting machine must be seen doing, in order.
type Step struct {
	Name  string
	Match func(Event) bool
}

// EnlistmentSteps are the steps of an unknown machine enlisting, as the
// region records them. loaders are the files the firmware fetches, in
// order, before it asks for its config (e.g. "bootx64.efi", "grubx64.efi").
func EnlistmentSteps(mac string, loaders ...string) []Step {
	is := func(text string, types ...string) func(Event) bool {
		return func(e Event) bool {
			return slices.Contains(types, e.Type) && strings.EqualFold(e.MAC, mac) && strings.Contains(e.Description, text)
		}
	}
	fetched := func(name string) func(Event) bool { return is(name, "TFTP_REQUEST", "HTTP_REQUEST") }
	steps := []Step{{"DHCP lease", is("", "DHCP_ACK")}}
	for _, l := range loaders {
		steps = append(steps, Step{"fetch " + l, fetched(l)})
	}
	return append(steps,
		Step{"region answers with purpose enlist", is("enlist", "BOOT_CONFIG")},
		Step{"kernel download", fetched("boot-kernel")},
		Step{"initrd download", fetched("boot-initrd")},
		Step{"agent enlists the machine", is("", "ENLISTED")},
	)
}

// CheckSteps reports the first step not found in events after the step
// before it. Events are ordered by the time they happened: racks send
// theirs in batches, so arrival order differs.
func CheckSteps(events []Event, steps []Step) error {
	events = slices.Clone(events)
	slices.SortStableFunc(events, func(a, b Event) int {
		ta, _ := time.Parse(time.RFC3339Nano, a.Time)
		tb, _ := time.Parse(time.RFC3339Nano, b.Time)
		return ta.Compare(tb)
	})
	i := 0
	for _, st := range steps {
		found := false
		for ; i < len(events); i++ {
			if st.Match(events[i]) {
				found = true
				break
			}
		}
		if !found {
			return fmt.Errorf("step %q did not happen", st.Name)
		}
	}
	return nil
}

// WaitForSteps checks that the events `ferrite events list FILTER...` (e.g. --mac MAC)
// shows hold steps in order (CheckSteps). Racks send their events in batches, so it asks
// again for up to 10 s before it reports the first step missing.
func (s *Site) WaitForSteps(ctx context.Context, steps []Step, filter ...string) error {
	var err error
	for range 20 {
		var events []Event
		if err = s.CLIJSON(ctx, &events, append([]string{"events", "list", "--limit", "5000"}, filter...)...); err == nil {
			if err = CheckSteps(events, steps); err == nil {
				return nil
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	return err
}
