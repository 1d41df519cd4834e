package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// WebhookBMC is a lab machine's baseboard management controller as Ferrite's webhook power
// driver sees it: an HTTP server on the server namespace's loopback (where rackd runs) that
// starts the machine's QEMU on POST /on, stops it on POST /off and answers GET /status with
// {"state":"on"} or {"state":"off"}. Each power-on is a new QEMU process with the same MAC,
// UUID and disk, as a real machine keeps its hardware across power cycles.
type WebhookBMC struct {
	URL  string // http://127.0.0.1:PORT
	lab  *Lab
	opts VMOptions
	srv  *http.Server

	mu    sync.Mutex
	boots []*VM // every power-on, the last one current
}

// StartWebhookBMC starts the BMC of a machine with opts (a MAC is chosen when opts has
// none); the lab's Close stops it.
func (l *Lab) StartWebhookBMC(opts VMOptions) (*WebhookBMC, error) {
	if opts.MAC == nil {
		opts.MAC = RandomMAC()
	}
	if opts.UUID == "" {
		opts.UUID = randomUUID()
	}
	ln, err := listenIn(l.SrvNS, "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("BMC listener in %s: %w", l.SrvNS, err)
	}
	b := &WebhookBMC{URL: "http://" + ln.Addr().String(), lab: l, opts: opts}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /on", func(w http.ResponseWriter, r *http.Request) {
		if err := b.PowerOn(); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, `{"state":"on"}`)
	})
	mux.HandleFunc("POST /off", func(w http.ResponseWriter, r *http.Request) {
		b.PowerOff()
		fmt.Fprintln(w, `{"state":"off"}`)
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		state := "off"
		if b.On() {
			state = "on"
		}
		fmt.Fprintf(w, "{\"state\":%q}\n", state)
	})
	b.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = b.srv.Serve(ln) }()
	l.mu.Lock()
	l.bmcs = append(l.bmcs, b)
	l.mu.Unlock()
	l.logf("webhook BMC for MAC %s at %s (in %s)", opts.MAC, b.URL, l.SrvNS)
	return b, nil
}

// MAC is the machine's MAC address.
func (b *WebhookBMC) MAC() net.HardwareAddr { return b.opts.MAC }

// PowerParams are the arguments of `ferrite machines set-power` for this BMC.
func (b *WebhookBMC) PowerParams() []string {
	return []string{"--type", "webhook",
		"--param", "power_on_uri=" + b.URL + "/on",
		"--param", "power_off_uri=" + b.URL + "/off",
		"--param", "power_query_uri=" + b.URL + "/status"}
}

// PowerOn starts the machine unless it is running.
func (b *WebhookBMC) PowerOn() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if n := len(b.boots); n > 0 && b.boots[n-1].Running() {
		return nil
	}
	vm, err := b.lab.StartVM(b.opts)
	if err != nil {
		return err
	}
	b.boots = append(b.boots, vm)
	b.lab.logf("BMC: powered on %s (MAC %s), serial console in %s", vm.Name, vm.MAC, vm.Serial)
	return nil
}

// PowerOff kills the machine's QEMU (pulling the plug, as a BMC's hard power-off does).
func (b *WebhookBMC) PowerOff() {
	if vm := b.Current(); vm != nil {
		vm.Stop()
	}
}

// On reports whether the machine is running.
func (b *WebhookBMC) On() bool {
	vm := b.Current()
	return vm != nil && vm.Running()
}

// Current is the machine's latest boot (nil before the first power-on).
func (b *WebhookBMC) Current() *VM {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.boots) == 0 {
		return nil
	}
	return b.boots[len(b.boots)-1]
}

// Boots is how many times the machine was powered on.
func (b *WebhookBMC) Boots() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.boots)
}

func (b *WebhookBMC) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = b.srv.Shutdown(ctx)
}

// listenIn opens a TCP listener inside network namespace ns (a name under /run/netns). The
// socket stays in ns after the thread that made it returns to its own namespace.
func listenIn(ns, addr string) (net.Listener, error) {
	type result struct {
		ln  net.Listener
		err error
	}
	done := make(chan result, 1)
	go func() {
		// Namespaces belong to threads: keep this goroutine on one, and let the runtime
		// discard the thread (by not unlocking) if it cannot return to its namespace.
		runtime.LockOSThread()
		ln, restored, err := listenOnThread(ns, addr)
		if restored {
			runtime.UnlockOSThread()
		}
		done <- result{ln, err}
	}()
	r := <-done
	return r.ln, r.err
}

func listenOnThread(ns, addr string) (ln net.Listener, restored bool, err error) {
	self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		return nil, true, err
	}
	defer self.Close()
	target, err := os.Open("/run/netns/" + ns)
	if err != nil {
		return nil, true, err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		return nil, true, fmt.Errorf("enter %s: %w", ns, err)
	}
	ln, err = net.Listen("tcp", addr)
	if rerr := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); rerr != nil {
		if ln != nil {
			ln.Close()
		}
		return nil, false, errors.Join(err, fmt.Errorf("return from %s: %w", ns, rerr))
	}
	return ln, true, err
}
