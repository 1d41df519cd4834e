package apiclient

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// MachinePower is the power part of a Machine (embedded in it).
type MachinePower struct {
	PowerType string `json:"power_type"` // manual, webhook, ipmi, redfish; "" = not set
	// PowerParameters are the driver's parameters; the region masks
	// passwords and tokens ("********").
	PowerParameters   map[string]string `json:"power_parameters"`
	PowerState        string            `json:"power_state"`         // on, off, unknown
	PowerStateUpdated string            `json:"power_state_updated"` // RFC 3339; "" = never reported
}

// PowerCommand is one power action asked of a machine's BMC.
type PowerCommand struct {
	ID          int64     `json:"id"`
	SystemID    string    `json:"system_id"`
	Action      string    `json:"action"` // on, off, cycle, query, set_boot_pxe
	PowerType   string    `json:"power_type"`
	RackID      string    `json:"rack_id"` // "" for manual machines
	Status      string    `json:"status"`  // queued, sent, done, failed
	ResultState string    `json:"result_state"`
	Error       string    `json:"error"`
	Created     time.Time `json:"created"`
	SentAt      string    `json:"sent_at"`     // RFC 3339; "" = not sent
	FinishedAt  string    `json:"finished_at"` // RFC 3339; "" = not finished
	Deadline    time.Time `json:"deadline"`
}

// SetPower sets a machine's power type and driver parameters (PUT
// /api/v1/machines/{id}/power) and returns the machine. The region refuses
// (*Error, 400) an unknown type, a missing required parameter or an
// unknown one, naming every problem.
func (c *Client) SetPower(ctx context.Context, systemID, powerType string, params map[string]string) (Machine, error) {
	if err := checkSegment("system ID", systemID); err != nil {
		return Machine{}, err
	}
	if params == nil {
		params = map[string]string{}
	}
	body := struct {
		Type       string            `json:"type"`
		Parameters map[string]string `json:"parameters"`
	}{powerType, params}
	var out Machine
	if err := c.doJSON(ctx, http.MethodPut, nil, body, &out, "machines", systemID, "power"); err != nil {
		return Machine{}, fmt.Errorf("set power of machine %s: %w", systemID, err)
	}
	return out, nil
}

// PowerOn queues a power-on command (POST /api/v1/machines/{id}/power-on)
// and returns it; the rack that can reach the BMC runs it. 409: the
// machine has no power type; 503: no rack can reach the BMC.
func (c *Client) PowerOn(ctx context.Context, systemID string) (PowerCommand, error) {
	return c.power(ctx, systemID, "power-on")
}

// PowerOff queues a power-off command (POST /api/v1/machines/{id}/power-off).
func (c *Client) PowerOff(ctx context.Context, systemID string) (PowerCommand, error) {
	return c.power(ctx, systemID, "power-off")
}

func (c *Client) power(ctx context.Context, systemID, what string) (PowerCommand, error) {
	if err := checkSegment("system ID", systemID); err != nil {
		return PowerCommand{}, err
	}
	var out PowerCommand
	if err := c.doJSON(ctx, http.MethodPost, nil, nil, &out, "machines", systemID, what); err != nil {
		return PowerCommand{}, fmt.Errorf("%s machine %s: %w", what, systemID, err)
	}
	return out, nil
}

// PowerCommands returns a machine's latest power commands, oldest first
// (GET /api/v1/machines/{id}/power-commands); limit 0 is the API's default (20).
func (c *Client) PowerCommands(ctx context.Context, systemID string, limit int) ([]PowerCommand, error) {
	if err := checkSegment("system ID", systemID); err != nil {
		return nil, err
	}
	if limit < 0 {
		return nil, fmt.Errorf("power commands of %s: negative limit %d", systemID, limit)
	}
	q := url.Values{}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var out []PowerCommand
	if err := c.doJSON(ctx, http.MethodGet, q, nil, &out, "machines", systemID, "power-commands"); err != nil {
		return nil, fmt.Errorf("power commands of machine %s: %w", systemID, err)
	}
	return out, nil
}
