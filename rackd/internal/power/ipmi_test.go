package power

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrite-metal/ferrite/pkg/testutil/testenv"
)

const (
	simUser = "ferrite"
	simPass = "ferr1teSimPass"
	simPort = "9623"
)

// ipmiSim is OpenIPMI's BMC simulator serving IPMI over LAN on
// 127.0.0.1:9623 inside a network namespace of its own. Its chassis
// control program is a shell script that keeps the power state and boot
// device in files, so power changes stick and the test can read them.
type ipmiSim struct {
	ns  string
	dir string
}

func startIPMISim(t *testing.T) *ipmiSim {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.Missing(t, "the ipmi_sim test needs root to create a network namespace")
	}
	for _, tool := range []string{"ip", "ipmi_sim", "ipmitool"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Missing(t, "needs %s (apt-get install iproute2 openipmi ipmitool): %v", tool, err)
		}
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	s := &ipmiSim{ns: "ferrite-ipmi-" + hex.EncodeToString(b), dir: t.TempDir()}
	if out, err := exec.Command("ip", "netns", "add", s.ns).CombinedOutput(); err != nil {
		testenv.Missing(t, "cannot create a network namespace: ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", s.ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", s.ns, err, out)
		}
	})
	if out, err := exec.Command("ip", "-n", s.ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip -n %s link set lo up: %v: %s", s.ns, err, out)
	}

	// ipmi_sim runs "PROG get power" and expects "power:N" back; it runs
	// "PROG set power N" and "PROG set boot pxe" to change things.
	script := filepath.Join(s.dir, "chassis.sh")
	writeFile(t, script, 0o755, `#!/bin/sh
dir=$(dirname "$0")
echo "$@" >> "$dir/calls.log"
op=$1; shift
case $op in
get)
  for n in "$@"; do
    case $n in
      power) echo "power:$(cat "$dir/power" 2>/dev/null || echo 0)";;
      boot) echo "boot:$(cat "$dir/boot" 2>/dev/null || echo default)";;
    esac
  done;;
set)
  while [ $# -gt 1 ]; do
    case $1 in
      power) echo "$2" > "$dir/power";;
      boot) echo "$2" > "$dir/boot";;
    esac
    shift 2
  done;;
esac
`)
	// lan.conf (ipmi_lan(5)): one LAN channel, an admin user.
	writeFile(t, filepath.Join(s.dir, "lan.conf"), 0o644, fmt.Sprintf(`name "ferrite-test"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 %s
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "%s"
  user 2 true "%s" "%s" admin 10 none md2 md5 straight
`, simPort, script, simUser, simPass))
	// The emulated BMC itself (ipmi_sim_cmd(5)).
	writeFile(t, filepath.Join(s.dir, "sim.emu"), 0o644, `mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr
sel_enable 0x20 1000 0x0a
mc_enable 0x20
`)
	state := filepath.Join(s.dir, "state")
	if err := os.Mkdir(state, 0o755); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(s.dir, "ipmi_sim.log"))
	if err != nil {
		t.Fatal(err)
	}
	// ip netns exec execs ipmi_sim in place: cmd.Process is ipmi_sim.
	cmd := exec.Command("ip", "netns", "exec", s.ns, "ipmi_sim", "-n",
		"-c", filepath.Join(s.dir, "lan.conf"), "-f", filepath.Join(s.dir, "sim.emu"), "-s", state)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start ipmi_sim: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			t.Errorf("ipmi_sim (pid %d) did not exit", cmd.Process.Pid)
		}
		if t.Failed() {
			out, _ := os.ReadFile(filepath.Join(s.dir, "ipmi_sim.log"))
			calls, _ := os.ReadFile(filepath.Join(s.dir, "calls.log"))
			t.Logf("ipmi_sim output:\n%s\nchassis control calls:\n%s", out, calls)
		}
	})
	// Ready when it answers a status request.
	d := s.driver()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := d.Run(ctx, ActionQuery, s.params())
		cancel()
		if err == nil {
			break
		}
		select {
		case <-exited:
			t.Fatalf("ipmi_sim exited: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("ipmi_sim does not answer: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	return s
}

func writeFile(t *testing.T, path string, mode os.FileMode, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

// driver runs the real ipmitool inside the simulator's namespace.
func (s *ipmiSim) driver() *IPMI {
	return &IPMI{Command: []string{"ip", "netns", "exec", s.ns, "ipmitool"}}
}

func (s *ipmiSim) params(kv ...string) map[string]string {
	// ipmi_sim cannot list its cipher suites (ipmitool would wait ~10 s
	// before falling back) and has no suite 17: name suite 3.
	p := map[string]string{"power_address": "127.0.0.1", "power_port": simPort, "power_user": simUser, "power_pass": simPass, "cipher_suite_id": "3"}
	for i := 0; i+1 < len(kv); i += 2 {
		p[kv[i]] = kv[i+1]
	}
	return p
}

// file is what the chassis control script stored ("" when nothing yet).
func (s *ipmiSim) file(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.dir, name))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestIPMIAgainstIPMISim(t *testing.T) {
	s := startIPMISim(t)
	d := s.driver()
	run := func(action string, params map[string]string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return d.Run(ctx, action, params)
	}
	steps := []struct {
		action    string
		params    map[string]string
		want      string
		wantPower string // the simulated machine's power afterwards
	}{
		{ActionQuery, s.params(), StateOff, ""},
		{ActionOn, s.params(), StateOn, "1"},
		{ActionQuery, s.params(), StateOn, "1"},
		{ActionQuery, s.params("power_driver", "lan"), StateOn, "1"}, // IPMI 1.5 too
		{ActionOff, s.params(), StateOff, "0"},
		{ActionSetBootPXE, s.params(), StateOff, "0"},
		// Cycling a machine that is off powers it on.
		{ActionCycle, s.params(), StateOn, "1"},
	}
	for i, st := range steps {
		got, err := run(st.action, st.params)
		if err != nil || got != st.want {
			t.Fatalf("step %d: %s = %q, %v; want %q", i, st.action, got, err, st.want)
		}
		if p := s.file(t, "power"); st.wantPower != "" && p != st.wantPower {
			t.Errorf("step %d: %s: simulated power = %q, want %q", i, st.action, p, st.wantPower)
		}
	}
	if b := s.file(t, "boot"); b != "pxe" {
		t.Errorf("boot device after set_boot_pxe = %q, want pxe", b)
	}

	// A real cycle of a running machine: ipmi_sim powers off, then on a
	// second later.
	if _, err := run(ActionCycle, s.params()); err != nil {
		t.Fatalf("cycle while on: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := run(ActionQuery, s.params())
		if err == nil && st == StateOn && strings.Contains(s.file(t, "calls.log"), "set power 0\n") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after cycle: state %q, %v; calls:\n%s", st, err, s.file(t, "calls.log"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	calls := s.file(t, "calls.log")
	if i := strings.LastIndex(calls, "set power 0"); i < 0 || !strings.Contains(calls[i:], "set power 1") {
		t.Errorf("cycle did not power off then on; chassis calls:\n%s", calls)
	}
	t.Logf("chassis control calls seen by ipmi_sim:\n%s", calls)

	t.Run("wrong password", func(t *testing.T) {
		const wrong = "n0tThePassw0rd"
		_, err := run(ActionOn, s.params("power_pass", wrong))
		if err == nil {
			t.Fatal("power on with a wrong password succeeded")
		}
		for _, secret := range []string{wrong, simPass} {
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error reveals a password: %v", err)
			}
		}
		if !strings.Contains(err.Error(), "ipmitool chassis power on") {
			t.Errorf("error %q does not say what failed", err)
		}
		t.Logf("wrong password: %v", err)
		if p := s.file(t, "power"); p != "1" {
			t.Errorf("power changed to %q by a refused command", p)
		}
	})
}

func TestIPMIPasswordNeverOnTheCommandLine(t *testing.T) {
	dir := t.TempDir()
	fake := filepath.Join(dir, "ipmitool")
	// A stand-in that records its arguments and, like a careless tool,
	// echoes the password from its environment.
	writeFile(t, fake, 0o755, "#!/bin/sh\necho \"$@\" > \""+dir+"/args\"\necho \"Error: bad password $IPMI_PASSWORD for user\" >&2\nexit 1\n")
	d := &IPMI{Command: []string{fake}}
	_, err := d.Run(context.Background(), ActionOn, map[string]string{
		"power_address": "10.0.0.1", "power_user": "admin", "power_pass": "Sup3rSecret", "power_port": "6230",
		"cipher_suite_id": "3", "privilege_level": "operator",
	})
	if err == nil {
		t.Fatal("no error")
	}
	if strings.Contains(err.Error(), "Sup3rSecret") || !strings.Contains(err.Error(), "bad password ******** for user") {
		t.Errorf("error = %q, want the password scrubbed", err)
	}
	args, _ := os.ReadFile(filepath.Join(dir, "args"))
	if want := "-I lanplus -H 10.0.0.1 -p 6230 -C 3 -L OPERATOR -U admin -E chassis power on"; strings.TrimSpace(string(args)) != want {
		t.Errorf("ipmitool args = %q, want %q", args, want)
	}
}

func TestIPMIBadParameters(t *testing.T) {
	tests := []struct {
		name    string
		cmd     []string
		params  map[string]string
		wantErr string
	}{
		{"no ipmitool", []string{"/nonexistent/ipmitool"}, map[string]string{"power_address": "10.0.0.1"}, "apt-get install ipmitool"},
		{"no address", nil, map[string]string{}, "power_address is not set"},
		{"option as address", nil, map[string]string{"power_address": "-o"}, "not a host name"},
		{"bad driver", nil, map[string]string{"power_address": "h", "power_driver": "serial"}, "want lan or lanplus"},
		{"bad port", nil, map[string]string{"power_address": "h", "power_port": "70000"}, "want 1-65535"},
		{"bad cipher suite", nil, map[string]string{"power_address": "h", "cipher_suite_id": "x"}, "cipher_suite_id"},
		{"bad privilege", nil, map[string]string{"power_address": "h", "privilege_level": "root"}, "privilege_level"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := (&IPMI{Command: tc.cmd}).Run(context.Background(), ActionQuery, tc.params)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error = %v, want %q", err, tc.wantErr)
			}
		})
	}
}
