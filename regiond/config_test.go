package regiond

import (
	"flag"
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestConfigFiles(t *testing.T) {
	tests := []struct {
		name     string
		file     string
		want     Config
		loadErr  string
		problems []string // substrings of Validate's error, all required
	}{
		{
			name: "good",
			file: "testdata/good.yaml",
			want: Config{StateDir: "/var/lib/ferrite/region", DatabaseURL: "postgres://ferrite@db.example:5432/ferrite",
				HTTPListen: "10.0.0.1:5240", GRPCListen: ":5250", Name: "region-1"},
		},
		{
			name: "deploy example",
			file: "../deploy/regiond.yaml",
			want: Config{StateDir: "/var/lib/ferrite/region", HTTPListen: ":5240", GRPCListen: ":5250", Name: "region1"},
		},
		{name: "unknown key", file: "testdata/unknown-key.yaml", loadErr: "http_port"},
		{
			name:     "bad values",
			file:     "testdata/bad-values.yaml",
			want:     Config{DatabaseURL: "mysql://x", HTTPListen: "5240", GRPCListen: ":99999", Name: "has space"},
			problems: []string{"state_dir: required", "database_url: scheme", "http_listen", "grpc_listen", "name:"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var cfg Config
			err := LoadConfigFile(tc.file, &cfg)
			if tc.loadErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.loadErr) {
					t.Fatalf("load: %v, want an error mentioning %q", err, tc.loadErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, cfg); diff != "" {
				t.Errorf("config (-want +got):\n%s", diff)
			}
			err = cfg.Validate()
			if len(tc.problems) == 0 {
				if err != nil {
					t.Errorf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Validate accepted a bad config")
			}
			for _, p := range tc.problems {
				if !strings.Contains(err.Error(), p) {
					t.Errorf("Validate error lacks %q:\n%v", p, err)
				}
			}
		})
	}
}

func TestParseFlagsPrecedence(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want Config
	}{
		{
			name: "defaults",
			args: []string{"--state-dir", "/s", "--name", "n"},
			want: Config{StateDir: "/s", HTTPListen: ":5240", GRPCListen: ":5250", Name: "n"},
		},
		{
			name: "file then flags",
			args: []string{"--config", "testdata/good.yaml", "--grpc-listen", "127.0.0.1:7000"},
			want: Config{StateDir: "/var/lib/ferrite/region", DatabaseURL: "postgres://ferrite@db.example:5432/ferrite",
				HTTPListen: "10.0.0.1:5240", GRPCListen: "127.0.0.1:7000", Name: "region-1"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			got, err := ParseFlags(fs, tc.args)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("config (-want +got):\n%s", diff)
			}
		})
	}
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	if _, err := ParseFlags(fs, []string{"--state-dir", "/s", "extra"}); err == nil {
		t.Error("stray argument accepted")
	}
}

func TestDecodeConfigRejectsTwoDocuments(t *testing.T) {
	var cfg Config
	if err := DecodeConfig(strings.NewReader("name: a\n---\nname: b\n"), &cfg); err == nil {
		t.Error("two YAML documents accepted")
	}
}
