package rackd

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestConfigFiles(t *testing.T) {
	tests := []struct {
		file      string
		want      *Config
		loadErr   string
		validErrs []string
	}{
		{
			file: "testdata/good.yaml",
			want: &Config{
				StateDir: "/var/lib/ferrite-rack", Interfaces: []string{"eth1", "eth2"}, HTTPListen: ":5248",
				TFTPListen: "10.0.0.2:69", DHCPPort: 67,
				TFTPMaxBlksize: 1468,
			},
		},
		{
			file: "../deploy/rackd.yaml",
			want: &Config{
				StateDir: "/var/lib/ferrite/rack", Interfaces: []string{"eth0"}, HTTPListen: ":5248",
				TFTPListen: ":69", DHCPPort: 67, TFTPMaxBlksize: 8192,
			},
		},
		{file: "testdata/bad-unknown-key.yaml", loadErr: "field tftp_port not found"},
		{file: "testdata/bad-values.yaml", validErrs: []string{
			"state_dir (--state-dir) is required",
			"http_listen (--http-listen)",
			"tftp_listen (--tftp-listen)",
			"dhcp_port (--dhcp-port) 0",
			`"eth1" listed twice`,
			"interfaces (--interface): empty name",
			"tftp_max_blksize (--tftp-max-blksize) 512: want 513..65464",
		}},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			cfg := DefaultConfig()
			err := LoadConfigFile(tc.file, &cfg)
			if tc.loadErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.loadErr) {
					t.Fatalf("LoadConfigFile error = %v, want %q", err, tc.loadErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			verr := cfg.Validate()
			if len(tc.validErrs) == 0 {
				if verr != nil {
					t.Fatalf("Validate: %v", verr)
				}
				if diff := cmp.Diff(*tc.want, cfg); diff != "" {
					t.Errorf("config (-want +got):\n%s", diff)
				}
				return
			}
			if verr == nil {
				t.Fatal("Validate accepted a bad config")
			}
			for _, want := range tc.validErrs {
				if !strings.Contains(verr.Error(), want) {
					t.Errorf("Validate error lacks %q:\n%v", want, verr)
				}
			}
		})
	}
}
