package lab

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// EnlistUnknownMachine boots a machine with a MAC the region has never
// seen and waits until it has enlisted and powered itself off, having
// fetched loaders on the way. It returns the machine as the region lists
// it; an error names the first boot step that did not happen.
func (s *Site) EnlistUnknownMachine(ctx context.Context, opts VMOptions, loaders []string, timeout time.Duration) (*VM, Machine, error) {
	vm, err := s.Lab.StartVM(opts)
	if err != nil {
		return nil, Machine{}, err
	}
	s.Lab.logf("booting %s (MAC %s); serial console in %s", vm.Name, vm.MAC, vm.Serial)
	m, err := s.WaitForEnlistment(ctx, vm, loaders, timeout)
	return vm, m, err
}

// WaitForEnlistment waits until vm, booting with a MAC the region has never seen, has
// enlisted and powered itself off, as EnlistUnknownMachine describes.
func (s *Site) WaitForEnlistment(ctx context.Context, vm *VM, loaders []string, timeout time.Duration) (Machine, error) {
	mac := vm.MAC.String()
	waitCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	powerErr := vm.Wait(waitCtx)
	if powerErr != nil {
		vm.Stop()
	}
	stepErr := s.WaitForSteps(ctx, EnlistmentSteps(mac, loaders...), "--mac", mac)
	if powerErr != nil || stepErr != nil {
		return Machine{}, fmt.Errorf("%s did not enlist: %w\nlast serial console lines:\n%s",
			vm.Name, errors.Join(stepErr, powerErr), vm.SerialTail(25))
	}
	var machines []Machine
	if err := s.CLIJSON(ctx, &machines, "machines", "list"); err != nil {
		return Machine{}, err
	}
	for _, m := range machines {
		for _, a := range m.MACAddresses {
			if strings.EqualFold(a, mac) {
				return m, nil
			}
		}
	}
	return Machine{}, fmt.Errorf("machine with MAC %s is not in `ferrite machines list`", mac)
}
