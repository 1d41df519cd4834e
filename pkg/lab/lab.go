// Package lab runs Ferrite on one host as ../shared/LAB.md describes: a
// namespace holding a bridge with one tap per virtual machine, a namespace
// holding the server side (regiond, rackd) on an ordinary eth0, and QEMU
// machines that PXE-boot through it. Nothing is connected to the host's
// namespace. The end-to-end tests and `make demo` both drive it.
package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Lab is one run's pair of namespaces and the processes started in them.
type Lab struct {
	Name       string
	NetNS      string       // bridge br0 and the VMs' taps
	SrvNS      string       // eth0 with ServerAddr; rackd and regiond run here
	ServerAddr netip.Prefix // e.g. 10.99.0.1/24
	Dir        string       // logs and state of everything started

	logf func(format string, args ...any)

	mu    sync.Mutex
	procs []*Proc
	bmcs  []*WebhookBMC
	vms   int
}

// requiredCommands maps the commands a lab runs to their Debian packages.
var requiredCommands = map[string]string{
	"ip":                 "iproute2",
	"qemu-system-x86_64": "qemu-system-x86",
}

// Check returns an error naming everything the host lacks to run a lab.
func Check() error {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (network namespaces and taps)")
	}
	for cmd, pkg := range requiredCommands {
		if _, err := exec.LookPath(cmd); err != nil {
			missing = append(missing, fmt.Sprintf("%s (apt-get install %s)", cmd, pkg))
		}
	}
	if _, err := os.Stat("/usr/lib/ipxe/qemu/efi-virtio.rom"); err != nil {
		missing = append(missing, "QEMU's iPXE ROM (apt-get install ipxe-qemu)")
	}
	if len(missing) > 0 {
		return fmt.Errorf("lab needs: %s", strings.Join(missing, ", "))
	}
	return nil
}

// New creates the namespaces: NAME-net with a bridge and NAME-srv with
// eth0 = server. Close undoes everything, also after a partial New.
func New(ctx context.Context, dir string, server netip.Prefix, logf func(string, ...any)) (*Lab, error) {
	if err := Check(); err != nil {
		return nil, err
	}
	suffix := make([]byte, 3)
	if _, err := rand.Read(suffix); err != nil {
		return nil, err
	}
	name := "fe" + hex.EncodeToString(suffix)
	l := &Lab{
		Name: name, NetNS: name + "-net", SrvNS: name + "-srv",
		ServerAddr: server, Dir: dir, logf: logf,
	}
	steps := [][]string{
		{"netns", "add", l.NetNS},
		{"netns", "add", l.SrvNS},
		{"-n", l.NetNS, "link", "set", "lo", "up"},
		{"-n", l.SrvNS, "link", "set", "lo", "up"},
		{"-n", l.NetNS, "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0"},
		{"-n", l.NetNS, "link", "add", "vsrv", "type", "veth", "peer", "name", "eth0"},
		{"-n", l.NetNS, "link", "set", "eth0", "netns", l.SrvNS},
		{"-n", l.NetNS, "link", "set", "vsrv", "master", "br0"},
		{"-n", l.NetNS, "link", "set", "vsrv", "up"},
		{"-n", l.NetNS, "link", "set", "br0", "up"},
		{"-n", l.SrvNS, "addr", "add", server.String(), "dev", "eth0"},
		{"-n", l.SrvNS, "link", "set", "eth0", "up"},
	}
	for _, args := range steps {
		if err := run(ctx, "ip", args...); err != nil {
			l.Close()
			return nil, err
		}
	}
	return l, nil
}

// Proc is a process the lab started; Close stops it by PID.
type Proc struct {
	Name string
	Log  string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is the process's exit error, valid after Done.
func (p *Proc) Err() error { return p.err }

// PID of the process.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Stop ends the process: SIGTERM, then SIGKILL after grace.
func (p *Proc) Stop(grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// Start runs argv inside namespace ns (ip netns exec replaces itself with
// the program, so the PID is the program's) with output to Dir/name.log.
func (l *Lab) Start(ns, name string, env []string, argv ...string) (*Proc, error) {
	logPath := filepath.Join(l.Dir, name+".log")
	out, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Env = append(os.Environ(), env...)
	// Own process group: a terminal's Ctrl-C reaches us, and we stop the children in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		out.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, Log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		out.Close()
		close(p.done)
	}()
	l.mu.Lock()
	l.procs = append(l.procs, p)
	l.mu.Unlock()
	l.logf("started %s (pid %d), log %s", name, p.PID(), logPath)
	return p, nil
}

// Exec runs argv in namespace ns to completion and returns its stdout;
// the error carries stderr.
func (l *Lab) Exec(ctx context.Context, ns string, env []string, argv ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, argv...)...)
	cmd.Env = append(os.Environ(), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// Close stops every process the lab started (newest first, by PID) and
// deletes both namespaces, which removes the bridge, veth and taps.
func (l *Lab) Close() error {
	l.mu.Lock()
	procs, bmcs := l.procs, l.bmcs
	l.procs, l.bmcs = nil, nil
	l.mu.Unlock()
	for _, b := range bmcs { // first, so that no power-on starts a machine while we stop them
		b.close()
	}
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].Stop(10 * time.Second)
	}
	var errs []error
	for _, ns := range []string{l.NetNS, l.SrvNS} {
		if err := run(context.Background(), "ip", "netns", "del", ns); err != nil && !strings.Contains(err.Error(), "No such file") {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func run(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
