package main

import (
	"fmt"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// kernelPower powers the machine off or reboots it with reboot(2), after syncing disks.
type kernelPower struct{ log *zap.Logger }

func (p kernelPower) Set(mode string) error {
	var cmd int
	switch mode {
	case "poweroff":
		cmd = unix.LINUX_REBOOT_CMD_POWER_OFF
	case "reboot":
		cmd = unix.LINUX_REBOOT_CMD_RESTART
	case "halt":
		cmd = unix.LINUX_REBOOT_CMD_HALT
	default:
		return fmt.Errorf("unknown power mode %q", mode)
	}
	p.log.Info("sync and " + mode)
	unix.Sync()
	if err := unix.Reboot(cmd); err != nil {
		return fmt.Errorf("reboot(2) %s: %w", mode, err)
	}
	return nil
}

// dryRunPower only says what it would do: the agent is not PID 1, so it is probably running on
// somebody's workstation, not in the ephemeral image.
type dryRunPower struct{ log *zap.Logger }

func (p dryRunPower) Set(mode string) error {
	p.log.Warn("not PID 1 and no --allow-power: not doing " + mode)
	return nil
}
