package apiclient

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
)

// ListRacks returns the registered racks (GET /api/v1/racks).
func (c *Client) ListRacks(ctx context.Context) ([]Rack, error) {
	var out []Rack
	if err := c.doJSON(ctx, http.MethodGet, nil, nil, &out, "racks"); err != nil {
		return nil, fmt.Errorf("list racks: %w", err)
	}
	return out, nil
}

// ListSubnets returns every subnet (GET /api/v1/subnets).
func (c *Client) ListSubnets(ctx context.Context) ([]Subnet, error) {
	var out []Subnet
	if err := c.doJSON(ctx, http.MethodGet, nil, nil, &out, "subnets"); err != nil {
		return nil, fmt.Errorf("list subnets: %w", err)
	}
	return out, nil
}

// CreateSubnet creates a subnet served by the rack named in sn (POST /api/v1/subnets).
func (c *Client) CreateSubnet(ctx context.Context, sn SubnetCreate) (Subnet, error) {
	var out Subnet
	if err := c.doJSON(ctx, http.MethodPost, nil, sn, &out, "subnets"); err != nil {
		return Subnet{}, fmt.Errorf("create subnet %s: %w", sn.CIDR, err)
	}
	return out, nil
}

// ListImages returns every boot image (GET /api/v1/images).
func (c *Client) ListImages(ctx context.Context) ([]Image, error) {
	var out []Image
	if err := c.doJSON(ctx, http.MethodGet, nil, nil, &out, "images"); err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	return out, nil
}

// Config returns every configuration setting (GET /api/v1/config).
func (c *Client) Config(ctx context.Context) (map[string]string, error) {
	var out map[string]string
	if err := c.doJSON(ctx, http.MethodGet, nil, nil, &out, "config"); err != nil {
		return nil, fmt.Errorf("get config: %w", err)
	}
	if out == nil {
		out = map[string]string{}
	}
	return out, nil
}

// SetConfig sets one configuration setting (PUT /api/v1/config/{key}).
func (c *Client) SetConfig(ctx context.Context, key, value string) (ConfigItem, error) {
	if err := checkSegment("config key", key); err != nil {
		return ConfigItem{}, err
	}
	var out ConfigItem
	body := struct {
		Value string `json:"value"`
	}{value}
	if err := c.doJSON(ctx, http.MethodPut, nil, body, &out, "config", key); err != nil {
		return ConfigItem{}, fmt.Errorf("set config %s: %w", key, err)
	}
	return out, nil
}

// ListMachines returns every machine (GET /api/v1/machines).
func (c *Client) ListMachines(ctx context.Context) ([]Machine, error) {
	var out []Machine
	if err := c.doJSON(ctx, http.MethodGet, nil, nil, &out, "machines"); err != nil {
		return nil, fmt.Errorf("list machines: %w", err)
	}
	return out, nil
}

// Machine returns one machine by system ID (GET /api/v1/machines/{id}); a
// missing machine is an *Error with StatusCode 404.
func (c *Client) Machine(ctx context.Context, systemID string) (Machine, error) {
	if err := checkSegment("system ID", systemID); err != nil {
		return Machine{}, err
	}
	var out Machine
	if err := c.doJSON(ctx, http.MethodGet, nil, nil, &out, "machines", systemID); err != nil {
		return Machine{}, fmt.Errorf("get machine %s: %w", systemID, err)
	}
	return out, nil
}

// SetInterfaceIP gives the interface with this MAC of machine systemID a
// fixed address that every rack serving its subnet hands out by DHCP, or
// clears it when ip is the zero Addr (PUT
// /api/v1/machines/{id}/interfaces/{mac}). It returns the machine. The
// region refuses (*Error) an address outside every subnet, inside a dynamic
// range or equal to a gateway with 400, one already taken with 409, and an
// unknown machine or MAC with 404.
func (c *Client) SetInterfaceIP(ctx context.Context, systemID, mac string, ip netip.Addr) (Machine, error) {
	if err := checkSegment("system ID", systemID); err != nil {
		return Machine{}, err
	}
	if err := checkSegment("MAC", mac); err != nil {
		return Machine{}, err
	}
	body := struct {
		IP string `json:"ip"`
	}{}
	if ip.IsValid() {
		body.IP = ip.String()
	}
	var out Machine
	if err := c.doJSON(ctx, http.MethodPut, nil, body, &out, "machines", systemID, "interfaces", mac); err != nil {
		if ip.IsValid() {
			return Machine{}, fmt.Errorf("set address of %s on machine %s: %w", mac, systemID, err)
		}
		return Machine{}, fmt.Errorf("clear address of %s on machine %s: %w", mac, systemID, err)
	}
	return out, nil
}

// ListEvents returns events in chronological order (GET /api/v1/events): the
// latest f.Limit ones, optionally only those of a MAC or a machine.
func (c *Client) ListEvents(ctx context.Context, f EventFilter) ([]Event, error) {
	if f.Limit < 0 {
		return nil, fmt.Errorf("list events: negative limit %d", f.Limit)
	}
	q := url.Values{}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	if f.MAC != "" {
		q.Set("mac", f.MAC)
	}
	if f.SystemID != "" {
		q.Set("system_id", f.SystemID)
	}
	var out []Event
	if err := c.doJSON(ctx, http.MethodGet, q, nil, &out, "events"); err != nil {
		return nil, fmt.Errorf("list events: %w", err)
	}
	return out, nil
}

// ListLeases returns DHCP leases as the racks reported them (GET
// /api/v1/leases), ordered by rack and address.
func (c *Client) ListLeases(ctx context.Context, f LeaseFilter) ([]Lease, error) {
	q := url.Values{}
	if f.MAC != "" {
		q.Set("mac", f.MAC)
	}
	if f.Rack != "" {
		q.Set("rack", f.Rack)
	}
	if f.State != "" {
		q.Set("state", f.State)
	}
	var out []Lease
	if err := c.doJSON(ctx, http.MethodGet, q, nil, &out, "leases"); err != nil {
		return nil, fmt.Errorf("list leases: %w", err)
	}
	return out, nil
}

// checkSegment refuses path segments that would not name a single resource.
func checkSegment(what, s string) error {
	if s == "" || s == "." || s == ".." {
		return fmt.Errorf("invalid %s %q", what, s)
	}
	return nil
}
