package power

import (
	"context"
	"fmt"
)

// Manual is the power type of a machine nobody can switch from here: every
// action succeeds at once with state "unknown", and the result's note says
// that an operator must act.
type Manual struct{}

// Run does nothing.
func (Manual) Run(_ context.Context, action string, _ map[string]string) (string, error) {
	if !validAction(action) {
		return "", fmt.Errorf("%q: %w", action, ErrUnsupportedAction)
	}
	return StateUnknown, nil
}

// Note says what the operator must do.
func (Manual) Note(action string) string {
	switch action {
	case ActionOn:
		return "manual power: an operator must power the machine on"
	case ActionOff:
		return "manual power: an operator must power the machine off"
	case ActionCycle:
		return "manual power: an operator must power-cycle the machine"
	case ActionSetBootPXE:
		return "manual power: an operator must make the machine boot from the network"
	}
	return ""
}
