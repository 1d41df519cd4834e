package main

import (
	"bytes"
	"context"
	"fmt"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"net/url"
	"slices"
	"strings"

	"go.uber.org/zap"
)

// Signal statuses of the metadata API.
const (
	statusWorking = "WORKING"
	statusOK      = "OK"
	statusFailed  = "FAILED"
)

// metadataClient talks to the region's MAAS-compatible metadata API (through the rack) with
// the machine's OAuth credentials. Requests are retried like every other agent request.
type metadataClient struct {
	a     *Agent
	base  string // metadata_url, ending in "/": http://rack:5248/MAAS/metadata/
	creds credentials
}

func newMetadataClient(a *Agent, metadataURL string, creds credentials) (*metadataClient, error) {
	u, err := url.Parse(metadataURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("metadata_url %q: want an http:// URL", metadataURL)
	}
	if creds.ConsumerKey == "" || creds.TokenKey == "" || creds.TokenSecret == "" {
		return nil, fmt.Errorf("no OAuth credentials for metadata_url %s (datasource.MAAS consumer_key, token_key, token_secret)", metadataURL)
	}
	if !strings.HasSuffix(metadataURL, "/") {
		metadataURL += "/"
	}
	return &metadataClient{a: a, base: metadataURL, creds: creds}, nil
}

// apiURL is the versioned API root that signals and netboot_off are POSTed to.
func (m *metadataClient) apiURL() string { return m.base + "2012-03-01/" }

// instanceID GETs meta-data/instance-id, the system_id the credentials belong to: a cheap
// check, at the start of a job, that the credentials work.
func (m *metadataClient) instanceID(ctx context.Context) (string, error) {
	b, err := m.get(ctx, "meta-data/instance-id")
	if err != nil {
		return "", fmt.Errorf("check metadata credentials: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// signal reports status (WORKING, OK, FAILED) with a description in error and result files,
// as a multipart POST op=signal, the way cloud-init's MAAS reporter does.
func (m *metadataClient) signal(ctx context.Context, status, errText string, files map[string][]byte) error {
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	fields := [][2]string{{"op", "signal"}, {"status", status}}
	if errText != "" {
		fields = append(fields, [2]string{"error", errText})
	}
	for _, f := range fields {
		if err := mw.WriteField(f[0], f[1]); err != nil {
			return fmt.Errorf("signal %s: %w", status, err)
		}
	}
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		h := textproto.MIMEHeader{}
		h.Set("Content-Disposition", fmt.Sprintf(`form-data; name=%q; filename=%q`, name, name))
		h.Set("Content-Type", "application/octet-stream")
		w, err := mw.CreatePart(h)
		if err == nil {
			_, err = w.Write(files[name])
		}
		if err != nil {
			return fmt.Errorf("signal %s: %w", status, err)
		}
	}
	if err := mw.Close(); err != nil {
		return fmt.Errorf("signal %s: %w", status, err)
	}
	return m.post(ctx, "signal "+status, body.Bytes(), mw.FormDataContentType())
}

// netbootOff tells the region that the machine must boot from its disk from now on.
func (m *metadataClient) netbootOff(ctx context.Context) error {
	return m.post(ctx, "netboot_off", []byte("op=netboot_off"), "application/x-www-form-urlencoded")
}

func (m *metadataClient) post(ctx context.Context, what string, body []byte, contentType string) error {
	u := m.apiURL()
	err := m.a.retry(ctx, "POST "+u+" ("+what+")", func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
		if err != nil {
			return permanent(err)
		}
		req.Header.Set("Content-Type", contentType)
		_, err = m.send(req)
		return err
	})
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	m.a.log.Info("metadata: "+what, zap.Int("bytes", len(body)))
	return nil
}

// send signs req (a fresh nonce for every attempt) and returns the answer of a 200.
func (m *metadataClient) send(req *http.Request) ([]byte, error) {
	req.Header.Set("Authorization", m.creds.authorization())
	b, status, err := m.a.do(req)
	if err != nil {
		return nil, err
	}
	if status != http.StatusOK {
		return nil, statusError(status, b)
	}
	return b, nil
}
