package apiclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"time"
)

// MachineLifecycle is the lifecycle part of a Machine.
type MachineLifecycle struct {
	// Netboot: the machine PXE boots the installer while Deploying; the
	// installer turns it off once the image is written.
	Netboot          bool      `json:"netboot"`
	DeployImage      string    `json:"deploy_image"`            // root-dd image of the last deploy
	UserDataSize     int       `json:"user_data_size"`          // bytes of the deployment's user-data; 0 = none
	Owner            string    `json:"owner"`                   // API token name that deployed it
	PreviousStatus   string    `json:"previous_status"`         // where abort, exit-rescue and mark-fixed return to
	ErrorDescription string    `json:"error_description"`       // why it failed or was marked broken
	StatusExpires    time.Time `json:"status_expires,omitzero"` // zero (absent) outside monitored states
	// Commissioning inventory: the summary beside CPUCount and MemoryMB, and
	// the whole inventory (nil before the machine was commissioned).
	DiskCount    int        `json:"disk_count"`
	StorageBytes int64      `json:"storage_bytes"`
	Inventory    *Inventory `json:"inventory,omitempty"`
}

// Inventory is what the ephemeral agent found while commissioning.
type Inventory struct {
	CPU struct {
		Model string `json:"model"`
		Count int    `json:"count"`
	} `json:"cpu"`
	MemoryMB int64           `json:"memory_mb"`
	Disks    []InventoryDisk `json:"disks"`
	NICs     []InventoryNIC  `json:"nics"`
	DMI      struct {
		Vendor  string `json:"vendor"`
		Product string `json:"product"`
		Serial  string `json:"serial"`
		UUID    string `json:"uuid"`
	} `json:"dmi"`
	Firmware string `json:"firmware"` // bios or uefi
}

// InventoryDisk is a disk of an Inventory.
type InventoryDisk struct {
	Name      string `json:"name"`
	SizeBytes int64  `json:"size_bytes"`
	Model     string `json:"model"`
	Serial    string `json:"serial"`
	Removable bool   `json:"removable"`
}

// InventoryNIC is a network interface of an Inventory.
type InventoryNIC struct {
	Name   string `json:"name"`
	MAC    string `json:"mac"`
	Driver string `json:"driver"`
	Link   bool   `json:"link"`
}

// MachineCreate is the body of POST /api/v1/machines: a machine added by hand.
type MachineCreate struct {
	MACAddresses    []string          `json:"mac_addresses"` // boot interface first
	Architecture    string            `json:"architecture"`  // e.g. amd64/generic
	Hostname        string            `json:"hostname,omitempty"`
	PowerType       string            `json:"power_type,omitempty"`
	PowerParameters map[string]string `json:"power_parameters,omitempty"`
}

// CreateMachine adds a machine by hand (POST /api/v1/machines); it starts
// in state New, to be commissioned. A MAC another machine has or a taken
// hostname is an *Error with StatusCode 409.
func (c *Client) CreateMachine(ctx context.Context, mc MachineCreate) (Machine, error) {
	var out Machine
	if err := c.doJSON(ctx, http.MethodPost, nil, mc, &out, "machines"); err != nil {
		return Machine{}, fmt.Errorf("create machine: %w", err)
	}
	return out, nil
}

// DeleteMachine removes a machine in any state (DELETE /api/v1/machines/{id}).
func (c *Client) DeleteMachine(ctx context.Context, systemID string) error {
	if err := checkSegment("system ID", systemID); err != nil {
		return err
	}
	if err := c.doJSON(ctx, http.MethodDelete, nil, nil, nil, "machines", systemID); err != nil {
		return fmt.Errorf("delete machine %s: %w", systemID, err)
	}
	return nil
}

// ActionOptions are the options some actions take.
type ActionOptions struct {
	Image string `json:"image,omitempty"` // deploy: root-dd image; "" = the last one deployed
	// UserData is deploy's user-data for the installed system's cloud-init
	// (sent base64-encoded; the region accepts at most 16 KiB); nil = none.
	// Every deploy replaces it, release clears it.
	UserData []byte `json:"user_data,omitempty"`
	// Erase (release): the ephemeral environment zeroes every disk before the
	// machine is Ready; QuickErase only the first and last 2 MiB of each.
	Erase      bool   `json:"erase,omitempty"`
	QuickErase bool   `json:"quick_erase,omitempty"`
	Comment    string `json:"comment,omitempty"` // mark-broken: why
}

// Action asks for a lifecycle action (POST /api/v1/machines/{id}/{action}):
// commission, deploy, release, rescue, exit-rescue, abort, mark-broken or
// mark-fixed. It returns the machine after the action. An action the
// machine's state does not allow is an *Error with StatusCode 409 whose
// message names the state ("cannot deploy a machine in state
// Commissioning").
func (c *Client) Action(ctx context.Context, systemID, action string, opts ActionOptions) (Machine, error) {
	if err := checkSegment("system ID", systemID); err != nil {
		return Machine{}, err
	}
	if err := checkSegment("action", action); err != nil {
		return Machine{}, err
	}
	var out Machine
	if err := c.doJSON(ctx, http.MethodPost, nil, opts, &out, "machines", systemID, action); err != nil {
		return Machine{}, fmt.Errorf("%s machine %s: %w", action, systemID, err)
	}
	return out, nil
}

// UploadRootDD uploads a raw disk image as the kind "root-dd" image name
// (e.g. "custom/debian-12") for arch with POST /api/v1/images; deploy
// writes it to a machine's disk. An image with the same name and arch is
// replaced. The file is streamed.
func (c *Client) UploadRootDD(ctx context.Context, name, arch string, image io.Reader) (Image, error) {
	if name == "" || arch == "" {
		return Image{}, errors.New("upload root-dd image: name and arch are required")
	}
	if image == nil {
		return Image{}, fmt.Errorf("upload root-dd image %s: no image", name)
	}
	write := func(mw *multipart.Writer) error {
		for _, kv := range [][2]string{{"name", name}, {"arch", arch}, {"kind", "root-dd"}} {
			if err := mw.WriteField(kv[0], kv[1]); err != nil {
				return err
			}
		}
		part, err := mw.CreateFormFile("root-dd", "root-dd")
		if err != nil {
			return err
		}
		if _, err := io.Copy(part, readerOf{"image", image}); err != nil {
			return err
		}
		return mw.Close()
	}
	img, err := c.postMultipart(ctx, write)
	if err != nil {
		return Image{}, fmt.Errorf("upload root-dd image %s: %w", name, err)
	}
	return img, nil
}
