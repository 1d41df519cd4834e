package bootmethod_test

import (
	"testing"

	"github.com/ferrite-metal/ferrite/pkg/bootmethod"
)

func TestCheck(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"ipxe", true}, {"pxe", true}, {"uefi_amd64_tftp", true}, {"uefi_amd64_http", true},
		{"uefi_arm64_tftp", true}, {"uefi_arm64_http", true},
		{"", false}, {"PXE", false}, {"uefi_ebc_tftp", false}, {"onie", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := bootmethod.Check(tc.name); (err == nil) != tc.ok {
				t.Errorf("Check(%q) = %v, want ok=%v", tc.name, err, tc.ok)
			}
		})
	}
}
