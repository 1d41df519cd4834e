package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"time"

	"go.uber.org/zap"

	"github.com/ferrite-metal/ferrite/pkg/preseed"
)

// Config of one agent run.
type Config struct {
	Root           string        // filesystem root holding proc/ and sys/, "/" on a machine
	CloudConfigURL string        // overrides cloud-config-url= from the kernel command line
	RetryFor       time.Duration // how long to keep retrying a request (about 60 s)
	RetryDelay     time.Duration // first pause between attempts, doubled up to maxRetryDelay; 0 means 1 s
	RescueShell    string        // command run (and rerun) on the console in rescue mode; "" to just wait
}

const (
	maxRetryDelay   = 10 * time.Second
	requestTimeout  = 15 * time.Second
	maxResponseSize = 1 << 20
)

// Power powers the machine off or reboots it. Mode is "poweroff", "reboot" or "halt".
type Power interface {
	Set(mode string) error
}

// Agent fetches the machine's instructions and carries them out.
type Agent struct {
	cfg    Config
	log    *zap.Logger
	power  Power
	client *http.Client
	// downloader fetches images: no overall timeout, since an image takes minutes.
	downloader *http.Client
	goarch     string
	now        func() time.Time
	// condition runs a power_state condition; an error means "not met".
	condition func(ctx context.Context, shellCommand string) error
}

// New returns an agent; power is what "poweroff" and "reboot" do.
func New(cfg Config, log *zap.Logger, power Power) *Agent {
	if cfg.Root == "" {
		cfg.Root = "/"
	}
	if cfg.RetryDelay <= 0 {
		cfg.RetryDelay = time.Second
	}
	return &Agent{
		cfg:    cfg,
		log:    log,
		power:  power,
		client: &http.Client{Timeout: requestTimeout},
		downloader: &http.Client{Transport: &http.Transport{
			Proxy:                 nil, // the rack's cache is on the machine's own network
			ResponseHeaderTimeout: requestTimeout,
			IdleConnTimeout:       90 * time.Second,
		}},
		goarch: runtime.GOARCH,
		now:    time.Now,
		condition: func(ctx context.Context, shellCommand string) error {
			ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			return exec.CommandContext(ctx, "/bin/sh", "-c", shellCommand).Run()
		},
	}
}

// Run does the job. On failure it prints why and powers the machine off, so that a machine
// (or a VM) does not sit forever in the ephemeral environment; it then returns the error.
// It returns nil when the job is done and the power state asks to stay up and ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	err := a.run(ctx)
	if err == nil || ctx.Err() != nil {
		return err
	}
	a.log.Error("FAILED: " + err.Error())
	a.log.Info("powering off after the failure")
	if perr := a.power.Set("poweroff"); perr != nil {
		a.log.Error("power off failed", zap.Error(perr))
	}
	return err
}

func (a *Agent) run(ctx context.Context) error {
	cmdline, err := os.ReadFile(filepath.Join(a.cfg.Root, "proc/cmdline"))
	if err != nil {
		return fmt.Errorf("read kernel command line: %w", err)
	}
	configURL := a.cfg.CloudConfigURL
	if configURL == "" {
		var ok bool
		if configURL, ok = cmdlineValue(string(cmdline), "cloud-config-url"); !ok || configURL == "" {
			if root, ok := cmdlineValue(string(cmdline), "root"); ok && root != "" {
				a.log.Info("no cloud-config-url but root=" + root + ": booting the installed system")
				return a.runInstalled(ctx, root)
			}
			return errors.New("no cloud-config-url= or root= on the kernel command line: nothing to do")
		}
	}
	bootMAC := ""
	if v, ok := cmdlineValue(string(cmdline), "BOOTIF"); ok {
		if bootMAC, err = parseBOOTIF(v); err != nil {
			a.log.Warn("ignoring BOOTIF", zap.Error(err))
		}
	}

	body, err := a.fetch(ctx, configURL)
	if err != nil {
		return err
	}
	doc, err := preseed.Parse(body)
	if err != nil {
		return fmt.Errorf("parse cloud-config from %s: %w", configURL, err)
	}
	mode := ""
	if doc.PowerState != nil {
		mode = doc.PowerState.Mode
	}
	a.log.Info("instructions", zap.String("job", doc.Ferrite.Job), zap.String("system_id", doc.Ferrite.SystemID),
		zap.String("power_state", mode))

	switch doc.Ferrite.Job {
	case "enlist":
		if doc.Ferrite.EnlistURL == "" {
			return errors.New("job enlist without an enlist_url")
		}
		if err := a.enlist(ctx, doc.Ferrite.EnlistURL, bootMAC); err != nil {
			return err
		}
		return a.obeyPowerState(ctx, doc.PowerState)
	case preseed.JobCommission, preseed.JobDeploy, preseed.JobRescue, preseed.JobErase:
		return a.runMetadataJob(ctx, doc)
	case "poweroff":
		a.log.Info("job poweroff: powering off")
		return a.setPower("poweroff")
	case "":
		return fmt.Errorf("the cloud-config from %s names no ferrite job", configURL)
	default:
		return fmt.Errorf("unknown job %q in the cloud-config from %s (this agent knows enlist, commission, deploy, rescue, erase and poweroff)", doc.Ferrite.Job, configURL)
	}
}

// obeyPowerState powers off or reboots as cloud-init's power_state module would: only when
// its condition (a shell command) succeeds. Otherwise, and without a power_state, the agent
// stays up until ctx ends. The delay is not honoured: the agent acts at once.
func (a *Agent) obeyPowerState(ctx context.Context, ps *preseed.PowerState) error {
	if ps == nil || ps.Mode == "" {
		a.log.Info("no power_state: staying up")
		<-ctx.Done()
		return nil
	}
	switch ps.Mode {
	case "poweroff", "reboot", "halt":
	default:
		return fmt.Errorf("unknown power_state mode %q", ps.Mode)
	}
	if ps.Condition != "" {
		if err := a.condition(ctx, ps.Condition); err != nil {
			a.log.Info("power_state condition not met: staying up",
				zap.String("condition", ps.Condition), zap.String("mode", ps.Mode), zap.Error(err))
			<-ctx.Done()
			return nil
		}
	}
	a.log.Info("power_state: " + ps.Mode)
	return a.setPower(ps.Mode)
}

func (a *Agent) setPower(mode string) error {
	if err := a.power.Set(mode); err != nil {
		return fmt.Errorf("%s: %w", mode, err)
	}
	return nil
}

// fetch GETs the cloud-config, retrying network errors and 5xx answers.
func (a *Agent) fetch(ctx context.Context, configURL string) ([]byte, error) {
	var body []byte
	err := a.retry(ctx, "GET "+configURL, func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, configURL, nil)
		if err != nil {
			return permanent(fmt.Errorf("cloud-config-url %q: %w", configURL, err))
		}
		b, status, err := a.do(req)
		if err != nil {
			return err
		}
		if status != http.StatusOK {
			return statusError(status, b)
		}
		body = b
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("fetch cloud-config: %w", err)
	}
	a.log.Info("got cloud-config", zap.Int("bytes", len(body)))
	return body, nil
}

// enlist gathers the inventory and POSTs it to enlistURL, retrying network errors and 5xx answers.
func (a *Agent) enlist(ctx context.Context, enlistURL, bootMAC string) error {
	inv, err := gatherInventory(a.cfg.Root, bootMAC, a.goarch)
	if err != nil {
		return fmt.Errorf("gather inventory: %w", err)
	}
	payload, err := json.Marshal(inv)
	if err != nil {
		return fmt.Errorf("encode enlist request: %w", err)
	}
	a.log.Info("enlisting", zap.ByteString("request", payload))
	err = a.retry(ctx, "POST "+enlistURL, func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, enlistURL, bytes.NewReader(payload))
		if err != nil {
			return permanent(fmt.Errorf("enlist_url %q: %w", enlistURL, err))
		}
		req.Header.Set("Content-Type", "application/json")
		b, status, err := a.do(req)
		if err != nil {
			return err
		}
		if status != http.StatusOK && status != http.StatusCreated {
			return statusError(status, b)
		}
		a.log.Info("enlisted", zap.Int("status", status), zap.ByteString("answer", bytes.TrimSpace(b)))
		return nil
	})
	if err != nil {
		return fmt.Errorf("enlist: %w", err)
	}
	return nil
}

func (a *Agent) do(req *http.Request) ([]byte, int, error) {
	resp, err := a.client.Do(req)
	if err != nil {
		// The caller's log line already names the method and URL.
		if ue := (*url.Error)(nil); errors.As(err, &ue) {
			return nil, 0, ue.Err
		}
		return nil, 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseSize+1))
	if err != nil {
		return nil, 0, fmt.Errorf("read answer: %w", err)
	}
	if len(b) > maxResponseSize {
		return nil, 0, permanent(fmt.Errorf("answer larger than %d bytes", maxResponseSize))
	}
	return b, resp.StatusCode, nil
}

// statusError is retryable for 5xx, 408 and 429 and permanent otherwise.
func statusError(status int, body []byte) error {
	msg := bytes.TrimSpace(body)
	if len(msg) > 200 {
		msg = msg[:200]
	}
	err := fmt.Errorf("HTTP %d %s: %s", status, http.StatusText(status), msg)
	if status >= 500 || status == http.StatusRequestTimeout || status == http.StatusTooManyRequests {
		return err
	}
	return permanent(err)
}

type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

func permanent(err error) error { return permanentError{err} }

// retry calls fn until it succeeds, fails permanently, or cfg.RetryFor has passed. Every
// attempt is logged, since the console is all an operator sees of a booting machine.
func (a *Agent) retry(ctx context.Context, what string, fn func(context.Context) error) error {
	deadline := time.Now().Add(a.cfg.RetryFor)
	delay := a.cfg.RetryDelay
	for attempt := 1; ; attempt++ {
		a.log.Info(what, zap.Int("attempt", attempt))
		err := fn(ctx)
		if err == nil {
			return nil
		}
		if pe := (permanentError{}); errors.As(err, &pe) {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().Add(delay).After(deadline) {
			return fmt.Errorf("gave up after %d attempts: %w", attempt, err)
		}
		a.log.Warn(what+" failed, retrying", zap.Int("attempt", attempt), zap.Duration("in", delay), zap.Error(err))
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		delay = min(2*delay, maxRetryDelay)
	}
}
