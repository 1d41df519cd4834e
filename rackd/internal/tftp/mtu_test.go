package tftp_test

import (
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/ferrite-metal/ferrite/pkg/testutil/testenv"
)

const inNetnsEnv = "FERRITE_TFTP_TEST_IN_NETNS"

// TestMTUClamp runs the server in a network namespace of its own whose
// loopback has MTU 1500, and checks a greedy client gets blksize 1468 (the
// largest DATA that fits 1500 bytes unfragmented), not pin/tftp's 1472.
func TestMTUClamp(t *testing.T) {
	if os.Getenv(inNetnsEnv) == "" {
		unshare, err := exec.LookPath("unshare")
		if err != nil || os.Geteuid() != 0 {
			testenv.Missing(t, "needs root and unshare (util-linux) to make a network namespace")
		}
		cmd := exec.Command(unshare, "-n", os.Args[0], "-test.run=^TestMTUClamp$", "-test.v")
		cmd.Env = append(os.Environ(), inNetnsEnv+"=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("in a network namespace: %v\n%s", err, out)
		}
		t.Logf("%s", out)
		return
	}
	ip, err := exec.LookPath("ip")
	if err != nil {
		t.Fatal("ip (iproute2) is not installed")
	}
	if out, err := exec.Command(ip, "link", "set", "lo", "up", "mtu", "1500").CombinedOutput(); err != nil {
		t.Fatalf("ip link set lo: %v\n%s", err, out)
	}
	e := serve(t, nil)
	for _, asked := range []string{"1468", "8192", "1472", "8192"} {
		c := newClient(t, e.addr)
		c.send(c.srv, request(opRRQ, "lpxelinux.0", "octet", "blksize", asked))
		r, ok := c.recv(2 * time.Second)
		if !ok || r.op != opOACK || r.opts["blksize"] != "1468" {
			t.Errorf("blksize %s on an MTU-1500 link: answer %+v (%v), want OACK blksize 1468", asked, r, ok)
		}
		if ok {
			c.send(r.from, errPacket(0, "done"))
		}
	}
}
