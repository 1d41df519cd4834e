package regiontest_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ferrite-metal/ferrite/pkg/preseed"
	"github.com/ferrite-metal/ferrite/pkg/testutil/testenv"
	"github.com/ferrite-metal/ferrite/regiond/internal/store"
	"github.com/ferrite-metal/ferrite/regiond/regiontest"
)

// cloudInitScript runs Debian cloud-init's own MAAS datasource code: it
// reads meta-data and user-data from the metadata URL, signing with the
// credentials (oauthlib PLAINTEXT), and prints what it read as JSON.
const cloudInitScript = `
import json, sys
from functools import partial
from cloudinit import url_helper
from cloudinit.sources.DataSourceMAAS import read_maas_seed_url
cfg = json.loads(sys.argv[1])
helper = url_helper.OauthUrlHelper(consumer_key=cfg["consumer_key"], token_key=cfg["token_key"],
    token_secret=cfg["token_secret"], consumer_secret="")
ud, md, vd = read_maas_seed_url(cfg["metadata_url"], read_file_or_url=helper.readurl, retries=1, timeout=10)
print(json.dumps({"user-data": (ud or b"").decode(), "meta-data": md}))
`

// debianPython is the interpreter with Debian's python3 packages (a
// python3 earlier in PATH may be another installation without them).
func debianPython(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"/usr/bin/python3", "python3"} {
		path, err := exec.LookPath(p)
		if err != nil {
			continue
		}
		if exec.Command(path, "-c", "import cloudinit.sources.DataSourceMAAS, oauthlib").Run() == nil {
			return path
		}
	}
	testenv.Missing(t, "cloud-init's python module (Debian package cloud-init) is not installed")
	return ""
}

// TestCloudInitMAASDatasource: cloud-init's MAAS datasource reads a
// commissioning machine's meta-data and user-data from a real region with
// the credentials the machine's preseed hands out.
func TestCloudInitMAASDatasource(t *testing.T) {
	py := debianPython(t)
	r := regiontest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m, _, err := r.Store.EnlistMachine(ctx, store.Machine{Arch: "amd64/generic", MACs: []string{"52:54:00:aa:00:01"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Store.Transition(ctx, m.SystemID, store.StatusNew, store.StatusCommissioning, "test"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(r.HTTPURL + "/MAAS/metadata/latest/by-id/" + m.SystemID + "/?op=get_preseed")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	doc, err := preseed.Parse(b)
	if err != nil || doc.Datasource == nil || doc.Datasource.MAAS == nil {
		t.Fatalf("preseed: %d %v\n%s", resp.StatusCode, err, b)
	}
	ds := doc.Datasource.MAAS
	if !strings.HasPrefix(ds.MetadataURL, r.HTTPURL+"/") {
		t.Fatalf("metadata_url %q is not on the region %s", ds.MetadataURL, r.HTTPURL)
	}
	cfg, _ := json.Marshal(map[string]string{"metadata_url": ds.MetadataURL, "consumer_key": ds.ConsumerKey,
		"token_key": ds.TokenKey, "token_secret": ds.TokenSecret})
	run := func(cfg []byte) ([]byte, error) {
		cmd := exec.CommandContext(ctx, py, "-c", cloudInitScript, string(cfg))
		cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1")
		return cmd.CombinedOutput()
	}
	out, err := run(cfg)
	if err != nil {
		t.Fatalf("cloud-init's read_maas_seed_url: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	var got struct {
		UserData string            `json:"user-data"`
		MetaData map[string]string `json:"meta-data"`
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &got); err != nil {
		t.Fatalf("cloud-init output: %v\n%s", err, out)
	}
	if got.MetaData["instance-id"] != m.SystemID || got.MetaData["local-hostname"] != m.Hostname {
		t.Errorf("cloud-init read meta-data %v, want instance-id %s and local-hostname %s", got.MetaData, m.SystemID, m.Hostname)
	}
	ud, err := preseed.Parse([]byte(got.UserData))
	if err != nil || ud.Ferrite.Job != preseed.JobCommission || ud.Ferrite.SystemID != m.SystemID {
		t.Errorf("cloud-init read user-data %q (%v), want the commission cloud-config", got.UserData, err)
	}
	t.Logf("cloud-init read instance-id %s, local-hostname %s, %d bytes of user-data",
		got.MetaData["instance-id"], got.MetaData["local-hostname"], len(got.UserData))

	// A wrong secret: cloud-init gets 401 and fails.
	bad, _ := json.Marshal(map[string]string{"metadata_url": ds.MetadataURL, "consumer_key": ds.ConsumerKey,
		"token_key": ds.TokenKey, "token_secret": "wrong"})
	if out, err := run(bad); err == nil || !strings.Contains(string(out), "401") {
		t.Errorf("cloud-init with a wrong secret: %v\n%s", err, out)
	}
}
