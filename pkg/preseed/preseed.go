// Package preseed renders and parses the cloud-config a booted machine
// fetches from its cloud-config-url: Ferrite's instructions for the
// ephemeral agent (which job to do, where to enlist, which image to write),
// the machine's metadata credentials (cloud-init's MAAS datasource and
// reporting webhook), the rack's syslog target and what to do with the power
// afterwards.
//
// The document is the line "#cloud-config" followed by one JSON object.
// JSON is YAML, so cloud-init reads the same document: it acts on the keys it
// knows (datasource, reporting, rsyslog, power_state) and ignores "ferrite". Render is used by the
// region; Parse by the agent. Parse(Render(p)) gives back what Render wrote.
package preseed

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Header is the first line of every cloud-config document.
const Header = "#cloud-config"

// Jobs the agent knows.
const (
	JobEnlist     = "enlist"
	JobCommission = "commission"
	JobDeploy     = "deploy"
	JobRescue     = "rescue"
	JobPoweroff   = "poweroff"
	JobErase      = "erase"
)

// Power state modes.
const (
	PowerOff = "poweroff"
	Reboot   = "reboot"
)

// power_state timeouts in seconds (MAAS's compose_preseed): powering off
// waits up to an hour, rebooting and the enlistment's power-off half that.
const (
	PowerOffTimeout       = 3600
	RebootTimeout         = 1800
	EnlistPowerOffTimeout = 1800
)

// PowerStateFor is the power_state mode of a job: commission, enlist, erase
// and poweroff power off, deploy reboots (into the written disk), rescue
// stays up ("").
func PowerStateFor(job string) string {
	switch job {
	case JobEnlist, JobCommission, JobErase, JobPoweroff:
		return PowerOff
	case JobDeploy:
		return Reboot
	}
	return ""
}

// DefaultLogPort is the rack's syslog port, used when LogHost is set and
// LogPort is 0.
const DefaultLogPort = 5247

// Params is what the region knows when a machine asks for its cloud-config.
type Params struct {
	Job         string // enlist, commission, deploy, rescue, poweroff
	SystemID    string
	EnlistURL   string // where the agent POSTs itself (enlist job)
	MetadataURL string // base metadata URL (later issues)
	LogHost     string // rsyslog target; empty for none
	LogPort     int    // 0 means DefaultLogPort when LogHost is set
	PowerState  string // "poweroff", "reboot" or "" (stay up); see PowerStateFor
	// Credentials, when set, are the machine's metadata OAuth credentials:
	// Render then writes datasource.MAAS (with MetadataURL) and
	// reporting.maas (endpoint MetadataURL + "status/" + SystemID). All three
	// or none; they need MetadataURL and SystemID.
	Credentials *Credentials
	// Deploy is the image the deploy job writes; required for it and refused
	// for every other job.
	Deploy *Deploy
	// Erase is how the erase job erases the disks; required for it and
	// refused for every other job.
	Erase *Erase
}

// Credentials are OAuth 1.0 PLAINTEXT credentials with an empty consumer
// secret, as MAAS hands them out.
type Credentials struct {
	ConsumerKey string `json:"consumer_key"`
	TokenKey    string `json:"token_key"`
	TokenSecret string `json:"token_secret"`
}

// Deploy tells the agent which raw disk image to write where.
type Deploy struct {
	ImageURL string `json:"image_url"` // the rack's copy: http://RACK:5248/images/<sha256>/root-dd
	SHA256   string `json:"sha256"`    // lowercase hex of the whole image
	Size     int64  `json:"size"`      // bytes
	Disk     string `json:"disk"`      // "" = the first non-removable disk without partitions in use
}

// Erase modes: every byte of each disk zeroed, or its first and last
// QuickEraseBytes.
const (
	EraseFull       = "full"
	EraseQuick      = "quick"
	QuickEraseBytes = 2 << 20
)

// Erase tells the agent how to erase the machine's disks.
type Erase struct {
	Mode string `json:"mode"` // EraseFull or EraseQuick
}

// Document is a decoded cloud-config as Render writes it. Keys it does not
// name are ignored by Parse.
type Document struct {
	Ferrite    Instructions `json:"ferrite"`
	Datasource *Datasource  `json:"datasource,omitempty"`
	Reporting  *Reporting   `json:"reporting,omitempty"`
	Rsyslog    *Rsyslog     `json:"rsyslog,omitempty"`
	PowerState *PowerState  `json:"power_state,omitempty"`
}

// Datasource is cloud-init's datasource configuration; Ferrite writes only
// its MAAS datasource.
type Datasource struct {
	MAAS *MAASDatasource `json:"MAAS,omitempty"`
}

// MAASDatasource is where cloud-init's MAAS datasource reads meta-data and
// user-data, and how it signs its requests.
type MAASDatasource struct {
	MetadataURL string `json:"metadata_url"`
	Credentials
}

// Reporting is cloud-init's reporting configuration: Ferrite's "maas"
// handler posts cloud-init's events to the metadata status webhook.
type Reporting struct {
	MAAS *Webhook `json:"maas,omitempty"`
}

// Webhook is a cloud-init webhook reporting handler with OAuth credentials.
type Webhook struct {
	Type     string `json:"type"` // "webhook"
	Endpoint string `json:"endpoint"`
	Credentials
}

// Instructions tell the ephemeral agent what to do.
type Instructions struct {
	Job         string  `json:"job"`
	SystemID    string  `json:"system_id,omitempty"`
	EnlistURL   string  `json:"enlist_url,omitempty"`
	MetadataURL string  `json:"metadata_url,omitempty"`
	Deploy      *Deploy `json:"deploy,omitempty"` // deploy job only
	Erase       *Erase  `json:"erase,omitempty"`  // erase job only
}

// Rsyslog is cloud-init's rsyslog module configuration. Remotes maps a name
// to "host:port" ("[v6]:port"), sent over UDP.
type Rsyslog struct {
	Remotes map[string]string `json:"remotes"`
}

// PowerState is cloud-init's power_state module configuration, which the
// agent obeys too. Condition is a shell command; power changes only when it
// succeeds.
type PowerState struct {
	Delay     string `json:"delay"`
	Mode      string `json:"mode"`
	Timeout   int    `json:"timeout"`
	Condition string `json:"condition,omitempty"`
}

// Render validates p and returns its cloud-config document: Header, a
// newline, and the JSON object indented by two spaces with a trailing
// newline.
func Render(p Params) ([]byte, error) {
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("render preseed: %w", err)
	}
	doc := Document{Ferrite: Instructions{
		Job:         p.Job,
		SystemID:    p.SystemID,
		EnlistURL:   p.EnlistURL,
		MetadataURL: p.MetadataURL,
		Deploy:      p.Deploy,
		Erase:       p.Erase,
	}}
	if c := p.Credentials; c != nil {
		doc.Datasource = &Datasource{MAAS: &MAASDatasource{MetadataURL: p.MetadataURL, Credentials: *c}}
		doc.Reporting = &Reporting{MAAS: &Webhook{Type: "webhook", Endpoint: StatusURL(p.MetadataURL, p.SystemID), Credentials: *c}}
	}
	if p.LogHost != "" {
		port := p.LogPort
		if port == 0 {
			port = DefaultLogPort
		}
		doc.Rsyslog = &Rsyslog{Remotes: map[string]string{
			"ferrite": net.JoinHostPort(p.LogHost, strconv.Itoa(port)),
		}}
	}
	if p.PowerState != "" {
		timeout := RebootTimeout
		if p.PowerState == PowerOff {
			timeout = PowerOffTimeout
			if p.Job == JobEnlist {
				timeout = EnlistPowerOffTimeout
			}
		}
		doc.PowerState = &PowerState{
			Delay:     "now",
			Mode:      p.PowerState,
			Timeout:   timeout,
			Condition: "test ! -e /tmp/block-" + p.PowerState,
		}
	}
	return encode(doc)
}

// StatusURL is the cloud-init reporting endpoint of a machine under the
// metadata URL: .../MAAS/metadata/status/<system_id>.
func StatusURL(metadataURL, systemID string) string {
	return strings.TrimSuffix(metadataURL, "/") + "/status/" + systemID
}

func encode(doc Document) ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteString(Header + "\n")
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // keep '&' in URLs readable
	enc.SetIndent("", "  ")
	if err := enc.Encode(doc); err != nil { // Encode ends with a newline
		return nil, fmt.Errorf("encode preseed: %w", err)
	}
	return buf.Bytes(), nil
}

// Validate returns every problem with p at once.
func (p Params) Validate() error {
	var errs []error
	for _, f := range []struct{ name, value string }{
		{"Job", p.Job}, {"SystemID", p.SystemID}, {"EnlistURL", p.EnlistURL},
		{"MetadataURL", p.MetadataURL}, {"LogHost", p.LogHost}, {"PowerState", p.PowerState},
	} {
		if err := checkText(f.name, f.value); err != nil {
			errs = append(errs, err)
		}
	}
	if c := p.Credentials; c != nil {
		for _, f := range []struct{ name, value string }{
			{"Credentials.ConsumerKey", c.ConsumerKey}, {"Credentials.TokenKey", c.TokenKey},
			{"Credentials.TokenSecret", c.TokenSecret},
		} {
			if err := checkText(f.name, f.value); err != nil {
				errs = append(errs, err)
			} else if f.value == "" {
				errs = append(errs, fieldErr(f.name, "", "required with Credentials"))
			}
		}
	}
	if d := p.Deploy; d != nil {
		for _, f := range []struct{ name, value string }{
			{"Deploy.ImageURL", d.ImageURL}, {"Deploy.SHA256", d.SHA256}, {"Deploy.Disk", d.Disk},
		} {
			if err := checkText(f.name, f.value); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	switch p.Job {
	case JobEnlist, JobCommission, JobDeploy, JobRescue, JobErase, JobPoweroff:
	default:
		errs = append(errs, fieldErr("Job", p.Job, "unknown job (want enlist, commission, deploy, rescue, erase or poweroff)"))
	}
	switch {
	case p.Job == JobErase && p.Erase == nil:
		errs = append(errs, fieldErr("Erase", "", "required for job erase"))
	case p.Job != JobErase && p.Erase != nil:
		errs = append(errs, fieldErr("Erase", p.Erase.Mode, "only for job erase"))
	case p.Erase != nil && p.Erase.Mode != EraseFull && p.Erase.Mode != EraseQuick:
		errs = append(errs, fieldErr("Erase.Mode", p.Erase.Mode, "want full or quick"))
	}
	if p.Job == JobEnlist && p.EnlistURL == "" {
		errs = append(errs, fieldErr("EnlistURL", "", "required for job enlist"))
	}
	if p.EnlistURL != "" {
		if err := checkURL(p.EnlistURL); err != nil {
			errs = append(errs, fieldErr("EnlistURL", p.EnlistURL, err.Error()))
		}
	}
	if p.MetadataURL != "" {
		if err := checkURL(p.MetadataURL); err != nil {
			errs = append(errs, fieldErr("MetadataURL", p.MetadataURL, err.Error()))
		}
	}
	if p.Credentials != nil {
		if p.MetadataURL == "" {
			errs = append(errs, fieldErr("MetadataURL", "", "required with Credentials"))
		}
		if p.SystemID == "" {
			errs = append(errs, fieldErr("SystemID", "", "required with Credentials"))
		} else if strings.ContainsAny(p.SystemID, "/?#%") || strings.ContainsFunc(p.SystemID, func(r rune) bool { return r <= ' ' }) {
			errs = append(errs, fieldErr("SystemID", p.SystemID, "must not contain '/', '?', '#', '%' or spaces (it ends a URL)"))
		}
	}
	switch {
	case p.Job == JobDeploy && p.Deploy == nil:
		errs = append(errs, fieldErr("Deploy", "", "required for job deploy"))
	case p.Job != JobDeploy && p.Deploy != nil:
		errs = append(errs, fieldErr("Deploy", p.Deploy.ImageURL, "only for job deploy"))
	case p.Deploy != nil:
		d := p.Deploy
		if err := checkURL(d.ImageURL); err != nil {
			errs = append(errs, fieldErr("Deploy.ImageURL", d.ImageURL, err.Error()))
		}
		if len(d.SHA256) != 64 || strings.ContainsFunc(d.SHA256, func(r rune) bool { return !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f') }) {
			errs = append(errs, fieldErr("Deploy.SHA256", d.SHA256, "want 64 lowercase hex digits"))
		}
		if d.Size <= 0 {
			errs = append(errs, fieldErr("Deploy.Size", strconv.FormatInt(d.Size, 10), "must be positive"))
		}
		if d.Disk != "" && (!strings.HasPrefix(d.Disk, "/dev/") || strings.ContainsAny(d.Disk, " \t")) {
			errs = append(errs, fieldErr("Deploy.Disk", d.Disk, "want a /dev/ path or empty"))
		}
	}
	if p.LogHost != "" {
		if err := checkHost(p.LogHost); err != nil {
			errs = append(errs, fieldErr("LogHost", p.LogHost, err.Error()))
		}
	}
	if p.LogPort < 0 || p.LogPort > 65535 {
		errs = append(errs, fieldErr("LogPort", strconv.Itoa(p.LogPort), "must be 0..65535"))
	}
	switch p.PowerState {
	case "", PowerOff, Reboot:
	default:
		errs = append(errs, fieldErr("PowerState", p.PowerState, "want poweroff, reboot or empty"))
	}
	return errors.Join(errs...)
}

// fieldErr names the Params field at fault.
func fieldErr(field, value, reason string) error {
	if len(value) > 80 {
		value = value[:80] + "..."
	}
	return fmt.Errorf("%s %q: %s", field, value, reason)
}

// checkText rejects what JSON would carry but no field should hold: control
// characters (line breaks included), and invalid UTF-8, which encoding/json
// would silently replace.
func checkText(field, v string) error {
	if !utf8.ValidString(v) {
		return fieldErr(field, v, "not valid UTF-8")
	}
	for i, r := range v {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == '\u2028' || r == '\u2029' {
			return fieldErr(field, v, fmt.Sprintf("control character %U at byte %d", r, i))
		}
	}
	return nil
}

func checkURL(v string) error {
	u, err := url.Parse(v)
	if err != nil {
		return errors.Unwrap(err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Opaque != "" {
		return errors.New("must be an absolute http or https URL")
	}
	if strings.ContainsAny(v, " \t") {
		return errors.New("must not contain spaces")
	}
	return nil
}

func checkHost(v string) error {
	if addr, err := netip.ParseAddr(v); err == nil {
		if addr.Zone() != "" {
			return errors.New("IPv6 zones are not supported")
		}
		return nil
	}
	if len(v) > 253 {
		return errors.New("DNS name longer than 253 bytes")
	}
	for _, label := range strings.Split(v, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return errors.New("not an IP address or DNS name")
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return errors.New("not an IP address or DNS name")
			}
		}
	}
	return nil
}

// Parse decodes a cloud-config document as Render writes it: the Header line
// (a trailing "\r" tolerated), then one JSON object and nothing else but
// whitespace. Keys other than those of Document are ignored. The ferrite
// key must be present with a job; Parse does not judge the job, so an agent
// can report one it does not know.
func Parse(b []byte) (Document, error) {
	var doc Document
	if err := decode(b, &doc); err != nil {
		return Document{}, fmt.Errorf("parse preseed: %w", err)
	}
	if doc.Ferrite.Job == "" {
		return Document{}, errors.New("parse preseed: no ferrite.job")
	}
	return doc, nil
}

// InstalledPath is where, relative to the root of an installed system, the
// deploy job leaves the machine's datasource: a cloud-init drop-in, as
// curtin does for MAAS, so that the installed system's cloud-init reads
// meta-data and user-data with the machine's own credentials. Reading
// user-data from the installed system is what makes a Deploying machine
// Deployed.
const InstalledPath = "etc/cloud/cloud.cfg.d/90_ferrite_datasource.cfg"

// Installed is the drop-in at InstalledPath.
type Installed struct {
	DatasourceList []string   `json:"datasource_list"`
	Datasource     Datasource `json:"datasource"`
	Reporting      *Reporting `json:"reporting,omitempty"`
}

// RenderInstalled renders the drop-in from a job's document: its MAAS
// datasource (required) and reporting webhook.
func RenderInstalled(doc Document) ([]byte, error) {
	if doc.Datasource == nil || doc.Datasource.MAAS == nil {
		return nil, errors.New("render installed datasource: the document has no MAAS datasource")
	}
	ds := doc.Datasource.MAAS
	if err := checkURL(ds.MetadataURL); err != nil {
		return nil, fmt.Errorf("render installed datasource: metadata_url: %w", err)
	}
	if ds.ConsumerKey == "" || ds.TokenKey == "" || ds.TokenSecret == "" {
		return nil, errors.New("render installed datasource: the MAAS datasource has no credentials")
	}
	b, err := json.MarshalIndent(Installed{
		DatasourceList: []string{"MAAS"},
		Datasource:     Datasource{MAAS: ds},
		Reporting:      doc.Reporting,
	}, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("render installed datasource: %w", err)
	}
	return append([]byte(Header+"\n"), append(b, '\n')...), nil
}

// ParseInstalled decodes a drop-in RenderInstalled wrote; it must name a
// MAAS datasource with a metadata URL.
func ParseInstalled(b []byte) (Installed, error) {
	var in Installed
	if err := decode(b, &in); err != nil {
		return Installed{}, fmt.Errorf("parse installed datasource: %w", err)
	}
	if in.Datasource.MAAS == nil || in.Datasource.MAAS.MetadataURL == "" {
		return Installed{}, errors.New("parse installed datasource: no datasource.MAAS.metadata_url")
	}
	return in, nil
}

// decode reads the Header line (a trailing "\r" tolerated), then one JSON
// object into v and nothing else but whitespace.
func decode(b []byte, v any) error {
	first, rest, _ := bytes.Cut(b, []byte("\n"))
	if string(bytes.TrimSuffix(first, []byte("\r"))) != Header {
		return fmt.Errorf("first line is not %q", Header)
	}
	dec := json.NewDecoder(bytes.NewReader(rest))
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("data after the JSON object")
	}
	return nil
}
