package dhcp_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"go.uber.org/zap/zaptest"

	"github.com/ferrite-metal/ferrite/rackd/internal/dhcp"
)

// TestServeConnLoopback runs the socket path (IP_PKTINFO, interface filter,
// worker pool, unicast reply to ciaddr) on loopback: a renewing client at
// 127.0.0.10 asks the server on 127.0.0.1.
func TestServeConnLoopback(t *testing.T) {
	conn, client, port := loopbackPair(t)
	s, err := dhcp.New(zaptest.NewLogger(t), dhcp.Options{Interfaces: []string{"lo"}, Port: port})
	if err != nil {
		t.Fatal(err)
	}
	s.SetConfig(dhcp.Config{Subnets: []dhcp.Subnet{{
		Prefix: netip.MustParsePrefix("127.0.0.0/8"),
		Ranges: []dhcp.Range{{Start: netip.MustParseAddr("127.0.0.10"), End: netip.MustParseAddr("127.0.0.20")}},
	}}})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.ServeConn(ctx, conn) }()

	server := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}
	req, _ := dhcpv4.New(dhcpv4.WithHwAddr(macN(1)), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithClientIP(net.IPv4(127, 0, 0, 10)))
	// Retransmit like a client: packets that arrive before ServeConn enables
	// IP_PKTINFO on this socket carry no interface and are ignored.
	buf := make([]byte, 1500)
	var n int
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, p := range [][]byte{[]byte("not dhcp at all"), req.ToBytes()} {
			if _, err := client.WriteTo(p, server); err != nil {
				t.Fatal(err)
			}
		}
		_ = client.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, _, err = client.ReadFrom(buf)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no reply: %v (stats %+v)", err, s.Stats())
		}
	}
	ack, err := dhcpv4.FromBytes(buf[:n])
	if err != nil {
		t.Fatal(err)
	}
	if ack.MessageType() != dhcpv4.MessageTypeAck || !ack.YourIPAddr.Equal(net.IPv4(127, 0, 0, 10)) || ack.TransactionID != req.TransactionID {
		t.Fatalf("reply %s yiaddr %s xid %s, want ACK 127.0.0.10 xid %s", ack.MessageType(), ack.YourIPAddr, ack.TransactionID, req.TransactionID)
	}
	if mac, ok := s.LeaseMAC(netip.MustParseAddr("127.0.0.10")); !ok || mac.String() != macN(1).String() {
		t.Errorf("LeaseMAC = %s %v", mac, ok)
	}
	// Now that the server is up, garbage is counted as malformed.
	if _, err := client.WriteTo([]byte("not dhcp at all"), server); err != nil {
		t.Fatal(err)
	}
	for s.Stats().Malformed == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("ServeConn returned %v after cancel, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ServeConn did not return after cancel")
	}
	st := s.Stats()
	if st.Malformed < 1 || st.Replies < 1 || st.Panics != 0 || st.Received < st.Malformed+st.Replies {
		t.Errorf("stats %+v, want a malformed packet, a reply and no panic", st)
	}
}

// loopbackPair binds the server to 127.0.0.1:P and the client to 127.0.0.10:P+1.
func loopbackPair(t *testing.T) (server, client net.PacketConn, port int) {
	t.Helper()
	for range 20 {
		srv, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port = srv.LocalAddr().(*net.UDPAddr).Port
		cl, err := net.ListenPacket("udp4", net.JoinHostPort("127.0.0.10", strconv.Itoa(port+1)))
		if err != nil {
			srv.Close()
			if errors.Is(err, net.ErrClosed) {
				t.Fatal(err)
			}
			continue // P+1 is taken: try another P
		}
		t.Cleanup(func() { srv.Close(); cl.Close() })
		return srv, cl, port
	}
	t.Fatal("no free pair of adjacent UDP ports on loopback")
	return nil, nil, 0
}
