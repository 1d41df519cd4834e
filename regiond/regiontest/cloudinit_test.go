package regiontest_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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
from cloudinit import sources, url_helper
from cloudinit.sources.DataSourceMAAS import read_maas_seed_url
cfg = json.loads(sys.argv[1])
helper = url_helper.OauthUrlHelper(consumer_key=cfg["consumer_key"], token_key=cfg["token_key"],
    token_secret=cfg["token_secret"], consumer_secret="")
ud, md, vd = read_maas_seed_url(cfg["metadata_url"], read_file_or_url=helper.readurl, retries=1, timeout=10)
print(json.dumps({"user-data": (ud or b"").decode(), "meta-data": md, "vendor-data": sources.convert_vendordata(vd)}))
`

// cloudInitWebhookScript posts one finish event with files through
// cloud-init's own webhook reporting handler, as the preseed configures it.
const cloudInitWebhookScript = `
import json, sys
from cloudinit.reporting.events import FinishReportingEvent
from cloudinit.reporting.handlers import WebHookHandler
cfg = json.loads(sys.argv[1])
h = WebHookHandler(cfg["endpoint"], consumer_key=cfg["consumer_key"], token_key=cfg["token_key"],
    token_secret=cfg["token_secret"], consumer_secret="", timeout=10, retries=1)
h.publish_event(FinishReportingEvent("modules-final", "running modules for final", "SUCCESS", post_files=cfg["files"]))
h.flush()
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

// preseedOf fetches a machine's preseed from the region.
func preseedOf(t *testing.T, r *regiontest.Region, systemID string) preseed.Document {
	t.Helper()
	resp, err := http.Get(r.HTTPURL + "/MAAS/metadata/latest/by-id/" + systemID + "/?op=get_preseed")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	doc, err := preseed.Parse(b)
	if err != nil || doc.Datasource == nil || doc.Datasource.MAAS == nil || doc.Reporting == nil || doc.Reporting.MAAS == nil {
		t.Fatalf("preseed: %d %v\n%s", resp.StatusCode, err, b)
	}
	return doc
}

// cloudInitRead is what cloud-init's MAAS datasource read.
type cloudInitRead struct {
	UserData   string            `json:"user-data"`
	MetaData   map[string]string `json:"meta-data"`
	VendorData string            `json:"vendor-data"`
}

// TestCloudInitMAASDatasource: cloud-init's MAAS datasource reads a
// commissioning machine's meta-data, user-data and vendor-data from a real
// region with the credentials the machine's preseed hands out, and a
// deployed system's user-data is the operator's.
func TestCloudInitMAASDatasource(t *testing.T) {
	py := debianPython(t)
	r := regiontest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	read := func(ds *preseed.MAASDatasource) (cloudInitRead, []byte, error) {
		cfg, _ := json.Marshal(map[string]string{"metadata_url": ds.MetadataURL, "consumer_key": ds.ConsumerKey,
			"token_key": ds.TokenKey, "token_secret": ds.TokenSecret})
		cmd := exec.CommandContext(ctx, py, "-c", cloudInitScript, string(cfg))
		cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1")
		out, err := cmd.CombinedOutput()
		var got cloudInitRead
		if err == nil {
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			err = json.Unmarshal([]byte(lines[len(lines)-1]), &got)
		}
		return got, out, err
	}

	m, _, err := r.Store.EnlistMachine(ctx, store.Machine{Arch: "amd64/generic", MACs: []string{"52:54:00:aa:00:01"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Store.Transition(ctx, m.SystemID, store.StatusNew, store.StatusCommissioning, "test"); err != nil {
		t.Fatal(err)
	}
	ds := preseedOf(t, r, m.SystemID).Datasource.MAAS
	if !strings.HasPrefix(ds.MetadataURL, r.HTTPURL+"/") {
		t.Fatalf("metadata_url %q is not on the region %s", ds.MetadataURL, r.HTTPURL)
	}
	got, out, err := read(ds)
	if err != nil {
		t.Fatalf("cloud-init's read_maas_seed_url: %v\n%s", err, out)
	}
	if got.MetaData["instance-id"] != m.SystemID || got.MetaData["local-hostname"] != m.Hostname {
		t.Errorf("cloud-init read meta-data %v, want instance-id %s and local-hostname %s", got.MetaData, m.SystemID, m.Hostname)
	}
	ud, err := preseed.Parse([]byte(got.UserData))
	if err != nil || ud.Ferrite.Job != preseed.JobCommission || ud.Ferrite.SystemID != m.SystemID {
		t.Errorf("cloud-init read user-data %q (%v), want the commission cloud-config", got.UserData, err)
	}
	var vendor struct {
		Rsyslog struct{ Remotes map[string]string } `json:"rsyslog"`
	}
	if cc, ok := strings.CutPrefix(got.VendorData, "#cloud-config\n"); !ok || json.Unmarshal([]byte(cc), &vendor) != nil ||
		len(vendor.Rsyslog.Remotes) != 1 {
		t.Errorf("cloud-init read vendor-data %q, want a cloud-config with rsyslog remotes", got.VendorData)
	}
	t.Logf("cloud-init read instance-id %s, local-hostname %s, %d bytes of user-data, vendor-data %q",
		got.MetaData["instance-id"], got.MetaData["local-hostname"], len(got.UserData), got.VendorData)

	// A wrong secret: cloud-init gets 401 and fails.
	bad := *ds
	bad.TokenSecret = "wrong"
	if _, out, err := read(&bad); err == nil || !strings.Contains(string(out), "401") {
		t.Errorf("cloud-init with a wrong secret: %v\n%s", err, out)
	}

	// The installed system of a deployment (netboot off) reads the
	// operator's user-data, and its machine is Deployed.
	sum, size, err := r.Store.PutBlob(ctx, strings.NewReader("raw disk"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Store.SaveBootResource(ctx, store.BootResource{Name: "custom/disk", Arch: "amd64/generic", Kind: store.KindRootDD,
		Files: []store.BootFile{{Filename: store.FileRootDD, SHA256: sum, Size: size}}}); err != nil {
		t.Fatal(err)
	}
	const userData = "#cloud-config\nruncmd:\n  - [touch, /root/deployed]\n"
	dep, _, err := r.Store.EnlistMachine(ctx, store.Machine{Arch: "amd64/generic", MACs: []string{"52:54:00:aa:00:03"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, to := range []string{store.StatusCommissioning, store.StatusReady} {
		if dep, err = r.Store.Transition(ctx, dep.SystemID, dep.Status, to, "test"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.Store.ApplyAction(ctx, dep.SystemID, store.ActionRequest{Action: store.ActionDeploy, Image: "custom/disk",
		UserData: []byte(userData)}); err != nil {
		t.Fatal(err)
	}
	depDS := preseedOf(t, r, dep.SystemID).Datasource.MAAS
	if err := r.Store.SetNetboot(ctx, dep.SystemID, false, store.NetbootRequest{}); err != nil {
		t.Fatal(err)
	}
	got, out, err = read(depDS)
	if err != nil || got.UserData != userData {
		t.Errorf("cloud-init on the deployed system read user-data %q (%v), want %q\n%s", got.UserData, err, userData, out)
	}
	if m, _ := r.Store.Machine(ctx, dep.SystemID); m.Status != store.StatusDeployed {
		t.Errorf("after the installed system's read: %s, want Deployed", m.Status)
	}
}

// TestCloudInitWebhookFiles: cloud-init's own webhook reporting handler
// posts a finish event with a file to the endpoint and credentials of the
// preseed; the file becomes one of the machine's results.
func TestCloudInitWebhookFiles(t *testing.T) {
	py := debianPython(t)
	r := regiontest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m, _, err := r.Store.EnlistMachine(ctx, store.Machine{Arch: "amd64/generic", MACs: []string{"52:54:00:aa:00:02"}})
	if err != nil {
		t.Fatal(err)
	}
	wh := preseedOf(t, r, m.SystemID).Reporting.MAAS
	log := filepath.Join(t.TempDir(), "cloud-init-output.log")
	content := "Cloud-init finished\n\x00binary tail\xff"
	if err := os.WriteFile(log, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, _ := json.Marshal(map[string]any{"endpoint": wh.Endpoint, "consumer_key": wh.ConsumerKey, "token_key": wh.TokenKey,
		"token_secret": wh.TokenSecret, "files": []string{log}})
	cmd := exec.CommandContext(ctx, py, "-c", cloudInitWebhookScript, string(cfg))
	cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1")
	if out, err := cmd.CombinedOutput(); err != nil || strings.Contains(string(out), "Failed posting event") {
		t.Fatalf("cloud-init's WebHookHandler: %v\n%s", err, out)
	}
	results, err := r.Store.CommissioningResults(ctx, m.SystemID)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, res := range results {
		got = append(got, res.Name+"="+string(res.Data))
	}
	if want := []string{"cloudinit:cloud-init-output.log=" + content}; !slices.Equal(got, want) {
		t.Errorf("results %q, want %q", got, want)
	}
}
