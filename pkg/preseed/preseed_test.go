package preseed

import (
	"flag"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite testdata/golden files")

// exampleParams are what the region renders for each job.
var exampleParams = []Params{
	{Job: JobEnlist, EnlistURL: "http://10.99.0.1:5248/MAAS/metadata/enlist", LogHost: "10.99.0.1", LogPort: 5247, PowerState: PowerOff},
	{Job: JobCommission, SystemID: "abc123", MetadataURL: "http://10.99.0.1:5248/MAAS/metadata/", LogHost: "10.99.0.1", LogPort: 5247,
		PowerState: PowerStateFor(JobCommission), Credentials: &exampleCreds},
	{Job: JobDeploy, SystemID: "abc123", MetadataURL: "http://10.99.0.1:5248/MAAS/metadata/", LogHost: "10.99.0.1",
		PowerState: PowerStateFor(JobDeploy), Credentials: &exampleCreds, Deploy: &exampleDeploy},
	{Job: JobRescue, SystemID: "abc123", MetadataURL: "http://10.99.0.1:5248/MAAS/metadata/", LogHost: "fd00::1", LogPort: 514,
		PowerState: PowerStateFor(JobRescue), Credentials: &exampleCreds},
	{Job: JobPoweroff, SystemID: "abc123", MetadataURL: "http://10.99.0.1:5248/MAAS/metadata/",
		PowerState: PowerStateFor(JobPoweroff), Credentials: &exampleCreds},
	{Job: JobErase, SystemID: "abc123", MetadataURL: "http://10.99.0.1:5248/MAAS/metadata/", LogHost: "10.99.0.1",
		PowerState: PowerStateFor(JobErase), Credentials: &exampleCreds, Erase: &Erase{Mode: EraseQuick}},
}

var (
	exampleCreds  = Credentials{ConsumerKey: "ck4abcdefghijklmno", TokenKey: "tk4abcdefghijklmno", TokenSecret: "ts4abcdefghijklmnopqrstuvwxyz012"}
	exampleDeploy = Deploy{
		ImageURL: "http://10.99.0.1:5248/images/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08/root-dd",
		SHA256:   "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
		Size:     2147483648,
	}
)

func TestGolden(t *testing.T) {
	for _, p := range exampleParams {
		t.Run(p.Job, func(t *testing.T) {
			got, err := Render(p)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", "golden", p.Job+".golden")
			if *update {
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if diff := cmp.Diff(string(want), string(got)); diff != "" {
				t.Errorf("%s mismatch (-golden +got):\n%s", path, diff)
			}
		})
	}
}

func TestRenderContractExample(t *testing.T) {
	got, err := Render(Params{Job: JobEnlist, EnlistURL: "http://10.99.0.1:5248/MAAS/metadata/enlist", PowerState: PowerOff})
	if err != nil {
		t.Fatal(err)
	}
	want := `#cloud-config
{
  "ferrite": {
    "job": "enlist",
    "enlist_url": "http://10.99.0.1:5248/MAAS/metadata/enlist"
  },
  "power_state": {
    "delay": "now",
    "mode": "poweroff",
    "timeout": 1800,
    "condition": "test ! -e /tmp/block-poweroff"
  }
}
`
	if diff := cmp.Diff(want, string(got)); diff != "" {
		t.Errorf("Render mismatch (-want +got):\n%s", diff)
	}
}

func TestRenderDocument(t *testing.T) {
	tests := []struct {
		name string
		p    Params
		want Document
	}{
		{
			name: "enlist",
			p:    Params{Job: JobEnlist, EnlistURL: "https://r/MAAS/metadata/enlist?a=1&b=2", PowerState: PowerOff},
			want: Document{
				Ferrite:    Instructions{Job: JobEnlist, EnlistURL: "https://r/MAAS/metadata/enlist?a=1&b=2"},
				PowerState: &PowerState{Delay: "now", Mode: PowerOff, Timeout: 1800, Condition: "test ! -e /tmp/block-poweroff"},
			},
		},
		{
			name: "commission powers off with a longer timeout",
			p:    Params{Job: JobCommission, SystemID: "abc123", PowerState: PowerOff},
			want: Document{
				Ferrite:    Instructions{Job: JobCommission, SystemID: "abc123"},
				PowerState: &PowerState{Delay: "now", Mode: PowerOff, Timeout: 3600, Condition: "test ! -e /tmp/block-poweroff"},
			},
		},
		{
			name: "commission reboot keeps the default timeout",
			p:    Params{Job: JobCommission, SystemID: "abc123", PowerState: Reboot},
			want: Document{
				Ferrite:    Instructions{Job: JobCommission, SystemID: "abc123"},
				PowerState: &PowerState{Delay: "now", Mode: Reboot, Timeout: 1800, Condition: "test ! -e /tmp/block-reboot"},
			},
		},
		{
			name: "log port defaults to 5247",
			p:    Params{Job: JobRescue, SystemID: "abc123", LogHost: "rack1.maas"},
			want: Document{
				Ferrite: Instructions{Job: JobRescue, SystemID: "abc123"},
				Rsyslog: &Rsyslog{Remotes: map[string]string{"ferrite": "rack1.maas:5247"}},
			},
		},
		{
			name: "IPv6 log host is bracketed",
			p: Params{Job: JobDeploy, SystemID: "abc123", LogHost: "fd00::1", LogPort: 514, MetadataURL: "http://[fd00::1]:5248/MAAS/metadata/",
				Deploy: &Deploy{ImageURL: "http://[fd00::1]:5248/images/x/root-dd", SHA256: strings.Repeat("a", 64), Size: 1, Disk: "/dev/vdb"}},
			want: Document{
				Ferrite: Instructions{Job: JobDeploy, SystemID: "abc123", MetadataURL: "http://[fd00::1]:5248/MAAS/metadata/",
					Deploy: &Deploy{ImageURL: "http://[fd00::1]:5248/images/x/root-dd", SHA256: strings.Repeat("a", 64), Size: 1, Disk: "/dev/vdb"}},
				Rsyslog: &Rsyslog{Remotes: map[string]string{"ferrite": "[fd00::1]:514"}},
			},
		},
		{
			name: "stay up",
			p:    Params{Job: JobPoweroff, SystemID: "abc123"},
			want: Document{Ferrite: Instructions{Job: JobPoweroff, SystemID: "abc123"}},
		},
		{
			name: "poweroff job waits an hour",
			p:    Params{Job: JobPoweroff, SystemID: "abc123", PowerState: PowerStateFor(JobPoweroff)},
			want: Document{
				Ferrite:    Instructions{Job: JobPoweroff, SystemID: "abc123"},
				PowerState: &PowerState{Delay: "now", Mode: PowerOff, Timeout: 3600, Condition: "test ! -e /tmp/block-poweroff"},
			},
		},
		{
			name: "credentials: datasource and reporting webhook",
			p:    Params{Job: JobRescue, SystemID: "s1", MetadataURL: "http://r:5248/MAAS/metadata/", Credentials: &Credentials{"c", "t", "s"}},
			want: Document{
				Ferrite:    Instructions{Job: JobRescue, SystemID: "s1", MetadataURL: "http://r:5248/MAAS/metadata/"},
				Datasource: &Datasource{MAAS: &MAASDatasource{MetadataURL: "http://r:5248/MAAS/metadata/", Credentials: Credentials{"c", "t", "s"}}},
				Reporting: &Reporting{MAAS: &Webhook{Type: "webhook", Endpoint: "http://r:5248/MAAS/metadata/status/s1",
					Credentials: Credentials{"c", "t", "s"}}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := Render(tt.p)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Parse(b)
			if err != nil {
				t.Fatalf("Parse(Render(p)): %v\n%s", err, b)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Parse(Render(p)) mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// paramsOf inverts Render for a Document Render produced.
func paramsOf(t testing.TB, d Document) Params {
	t.Helper()
	p := Params{
		Job:         d.Ferrite.Job,
		SystemID:    d.Ferrite.SystemID,
		EnlistURL:   d.Ferrite.EnlistURL,
		MetadataURL: d.Ferrite.MetadataURL,
		Deploy:      d.Ferrite.Deploy,
		Erase:       d.Ferrite.Erase,
	}
	if d.Rsyslog != nil {
		host, port, err := net.SplitHostPort(d.Rsyslog.Remotes["ferrite"])
		if err != nil {
			t.Fatal(err)
		}
		p.LogHost = host
		if p.LogPort, err = strconv.Atoi(port); err != nil {
			t.Fatal(err)
		}
	}
	if d.PowerState != nil {
		p.PowerState = d.PowerState.Mode
	}
	if d.Datasource != nil && d.Datasource.MAAS != nil {
		c := d.Datasource.MAAS.Credentials
		p.Credentials = &c
		if d.Reporting == nil || d.Reporting.MAAS == nil || d.Reporting.MAAS.Credentials != c ||
			d.Reporting.MAAS.Endpoint != StatusURL(p.MetadataURL, p.SystemID) || d.Datasource.MAAS.MetadataURL != p.MetadataURL {
			t.Errorf("reporting and datasource disagree: %+v %+v", d.Datasource.MAAS, d.Reporting)
		}
	}
	p.Deploy = d.Ferrite.Deploy
	return p
}

func TestRoundTrip(t *testing.T) {
	for _, p := range exampleParams {
		t.Run(p.Job, func(t *testing.T) {
			b, err := Render(p)
			if err != nil {
				t.Fatal(err)
			}
			doc, err := Parse(b)
			if err != nil {
				t.Fatal(err)
			}
			want := p
			if want.LogHost != "" && want.LogPort == 0 {
				want.LogPort = DefaultLogPort
			}
			if diff := cmp.Diff(want, paramsOf(t, doc)); diff != "" {
				t.Errorf("Params after round trip (-want +got):\n%s", diff)
			}
			again, err := Render(paramsOf(t, doc))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(string(b), string(again)); diff != "" {
				t.Errorf("re-rendered document differs (-first +second):\n%s", diff)
			}
		})
	}
}

func TestRenderErrors(t *testing.T) {
	tests := []struct {
		name      string
		p         Params
		wantField []string
	}{
		{"unknown job", Params{Job: "install"}, []string{"Job"}},
		{"empty job", Params{}, []string{"Job"}},
		{"enlist without URL", Params{Job: JobEnlist}, []string{"EnlistURL"}},
		{"enlist with relative URL", Params{Job: JobEnlist, EnlistURL: "/MAAS/metadata/enlist"}, []string{"EnlistURL"}},
		{"enlist with ftp URL", Params{Job: JobEnlist, EnlistURL: "ftp://r/x"}, []string{"EnlistURL"}},
		{"bad metadata URL", Params{Job: JobDeploy, MetadataURL: "http://r/a b"}, []string{"MetadataURL"}},
		{"newline in system id", Params{Job: JobPoweroff, SystemID: "abc\n123"}, []string{"SystemID"}},
		{"NUL in job", Params{Job: "enlist\x00"}, []string{"Job"}},
		{"C1 control in URL", Params{Job: JobEnlist, EnlistURL: "http://r/\u0085"}, []string{"EnlistURL"}},
		{"line separator in system id", Params{Job: JobPoweroff, SystemID: "a\u2028b"}, []string{"SystemID"}},
		{"invalid UTF-8", Params{Job: JobPoweroff, SystemID: "a\xffb"}, []string{"SystemID"}},
		{"bad log host", Params{Job: JobPoweroff, LogHost: "a b"}, []string{"LogHost"}},
		{"log port out of range", Params{Job: JobPoweroff, LogHost: "r", LogPort: 65536}, []string{"LogPort"}},
		{"unknown power state", Params{Job: JobPoweroff, PowerState: "halt"}, []string{"PowerState"}},
		{"several problems", Params{Job: "x", LogPort: -1, PowerState: "halt"}, []string{"Job", "LogPort", "PowerState"}},
		{"deploy without image", Params{Job: JobDeploy, SystemID: "a"}, []string{"Deploy"}},
		{"image for commission", Params{Job: JobCommission, Deploy: &exampleDeploy}, []string{"Deploy"}},
		{"erase without mode", Params{Job: JobErase}, []string{"Erase"}},
		{"erase for deploy", Params{Job: JobDeploy, Deploy: &exampleDeploy, Erase: &Erase{Mode: EraseFull}}, []string{"Erase"}},
		{"unknown erase mode", Params{Job: JobErase, Erase: &Erase{Mode: "secure"}}, []string{"Erase.Mode"}},
		{"bad image", Params{Job: JobDeploy, Deploy: &Deploy{ImageURL: "file:///x", SHA256: "ABC", Size: 0, Disk: "sda"}},
			[]string{"Deploy.ImageURL", "Deploy.SHA256", "Deploy.Size", "Deploy.Disk"}},
		{"credentials without metadata URL and system ID", Params{Job: JobCommission, Credentials: &exampleCreds},
			[]string{"MetadataURL", "SystemID"}},
		{"empty token secret", Params{Job: JobCommission, SystemID: "a", MetadataURL: "http://r/", Credentials: &Credentials{"c", "t", ""}},
			[]string{"Credentials.TokenSecret"}},
		{"system ID that would change the status URL", Params{Job: JobCommission, SystemID: "a/../b", MetadataURL: "http://r/", Credentials: &exampleCreds},
			[]string{"SystemID"}},
		{"newline in token", Params{Job: JobCommission, SystemID: "a", MetadataURL: "http://r/", Credentials: &Credentials{"c", "t\n", "s"}},
			[]string{"Credentials.TokenKey"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Render(tt.p)
			if err == nil {
				t.Fatal("Render succeeded, want an error")
			}
			for _, f := range tt.wantField {
				if !strings.Contains(err.Error(), f+" ") {
					t.Errorf("error %q does not name %s", err, f)
				}
			}
		})
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    Document
		wantErr bool
	}{
		{
			name: "other cloud-config keys are ignored",
			in: "#cloud-config\n{\"ferrite\":{\"job\":\"enlist\",\"enlist_url\":\"http://r/e\",\"future\":1}," +
				"\"datasource\":{\"MAAS\":{}},\"power_state\":{\"delay\":\"now\",\"mode\":\"reboot\",\"timeout\":5}}\n",
			want: Document{
				Ferrite:    Instructions{Job: "enlist", EnlistURL: "http://r/e"},
				Datasource: &Datasource{MAAS: &MAASDatasource{}},
				PowerState: &PowerState{Delay: "now", Mode: "reboot", Timeout: 5},
			},
		},
		{
			name: "CRLF header and trailing whitespace",
			in:   "#cloud-config\r\n{\"ferrite\":{\"job\":\"poweroff\"}}\r\n\n",
			want: Document{Ferrite: Instructions{Job: "poweroff"}},
		},
		{name: "no header", in: "{\"ferrite\":{\"job\":\"poweroff\"}}", wantErr: true},
		{name: "header not first", in: "\n#cloud-config\n{\"ferrite\":{\"job\":\"poweroff\"}}", wantErr: true},
		{name: "empty", in: "", wantErr: true},
		{name: "header only", in: "#cloud-config\n", wantErr: true},
		{name: "YAML, not JSON", in: "#cloud-config\nferrite:\n  job: poweroff\n", wantErr: true},
		{name: "no ferrite key", in: "#cloud-config\n{\"power_state\":{\"mode\":\"reboot\"}}", wantErr: true},
		{name: "null", in: "#cloud-config\nnull", wantErr: true},
		{name: "two objects", in: "#cloud-config\n{\"ferrite\":{\"job\":\"a\"}}{\"ferrite\":{\"job\":\"b\"}}", wantErr: true},
		{name: "trailing garbage", in: "#cloud-config\n{\"ferrite\":{\"job\":\"a\"}} x", wantErr: true},
		{name: "wrong type", in: "#cloud-config\n{\"ferrite\":{\"job\":1}}", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse([]byte(tt.in))
			if tt.wantErr {
				if err == nil {
					t.Fatalf("Parse succeeded: %+v", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Parse mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// FuzzParse checks that Parse never panics, and that whatever it accepts
// survives encoding and parsing again unchanged.
func FuzzParse(f *testing.F) {
	for _, p := range exampleParams {
		b, err := Render(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("#cloud-config\n{\"ferrite\":{\"job\":\"x\"},\"rsyslog\":{\"remotes\":null}}"))
	f.Add([]byte("#cloud-config\r\n{\"ferrite\":{\"job\":\"\\u0000\"}}"))
	f.Add([]byte("#cloud-config\n{\"ferrite\":{\"job\":\"a\"}}{"))
	f.Fuzz(func(t *testing.T, b []byte) {
		doc, err := Parse(b)
		if err != nil {
			return
		}
		again, err := encode(doc)
		if err != nil {
			t.Fatalf("encode(%+v): %v", doc, err)
		}
		doc2, err := Parse(again)
		if err != nil {
			t.Fatalf("Parse(encode(doc)): %v\n%s", err, again)
		}
		if diff := cmp.Diff(doc, doc2); diff != "" {
			t.Errorf("document changed after encode and Parse (-first +second):\n%s", diff)
		}
	})
}

func TestInstalledRoundTrip(t *testing.T) {
	creds := Credentials{ConsumerKey: "ck", TokenKey: "tk", TokenSecret: "ts"}
	doc := Document{
		Ferrite:    Instructions{Job: JobDeploy},
		Datasource: &Datasource{MAAS: &MAASDatasource{MetadataURL: "http://10.0.0.1:5248/MAAS/metadata/", Credentials: creds}},
		Reporting:  &Reporting{MAAS: &Webhook{Type: "webhook", Endpoint: "http://10.0.0.1:5248/MAAS/metadata/status/abc", Credentials: creds}},
	}
	b, err := RenderInstalled(doc)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseInstalled(b)
	if err != nil {
		t.Fatalf("ParseInstalled(RenderInstalled(doc)): %v\n%s", err, b)
	}
	want := Installed{DatasourceList: []string{"MAAS"}, Datasource: *doc.Datasource, Reporting: doc.Reporting}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("round trip mismatch (-want +got):\n%s", diff)
	}
}

func TestInstalledErrors(t *testing.T) {
	noCreds := Document{Datasource: &Datasource{MAAS: &MAASDatasource{MetadataURL: "http://r/MAAS/metadata/"}}}
	badURL := Document{Datasource: &Datasource{MAAS: &MAASDatasource{MetadataURL: "file:///x",
		Credentials: Credentials{ConsumerKey: "a", TokenKey: "b", TokenSecret: "c"}}}}
	for name, doc := range map[string]Document{"no datasource": {}, "no credentials": noCreds, "not http": badURL} {
		if b, err := RenderInstalled(doc); err == nil {
			t.Errorf("%s: RenderInstalled succeeded:\n%s", name, b)
		}
	}
	for name, in := range map[string]string{
		"no header":        `{"datasource":{"MAAS":{"metadata_url":"http://r/"}}}`,
		"no datasource":    "#cloud-config\n{\"datasource_list\":[\"MAAS\"]}",
		"trailing garbage": "#cloud-config\n{\"datasource\":{\"MAAS\":{\"metadata_url\":\"http://r/\"}}} x",
	} {
		if got, err := ParseInstalled([]byte(in)); err == nil {
			t.Errorf("%s: ParseInstalled succeeded: %+v", name, got)
		}
	}
}
