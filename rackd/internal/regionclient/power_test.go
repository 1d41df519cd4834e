package regionclient_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	rackv1 "github.com/ferrite-metal/ferrite/proto/ferrite/rack/v1"
	"github.com/ferrite-metal/ferrite/rackd/internal/power"
	"github.com/ferrite-metal/ferrite/rackd/internal/regionclient"
	"github.com/ferrite-metal/ferrite/regiond"
	"github.com/ferrite-metal/ferrite/regiond/regiontest"
)

// powerRegion serves the two power RPCs (WatchPowerCommands,
// ReportPowerResult) over the region's mTLS. The real region does not
// implement them yet (the region side of power comes next and replaces this
// stand-in in these tests); the rack's credentials still come from a real
// region: the rack registers with it, and this server's certificate is
// signed by that region's CA, so the TLS on both sides is the real thing.
type powerRegion struct {
	rackv1.UnimplementedRackServiceServer
	rackID string

	commands chan *rackv1.PowerCommand
	mu       sync.Mutex
	opens    int
	results  []*rackv1.ReportPowerResultRequest
	calls    map[int64]int
	failNext int        // ReportPowerResult calls to answer Unavailable first
	refuse   codes.Code // when set, every ReportPowerResult gets it
	breakAt  int        // end the stream after sending this many commands on it (0: never)
	got      chan *rackv1.ReportPowerResultRequest
	peerCNs  []string
}

func (p *powerRegion) checkPeer(ctx context.Context) error {
	pr, ok := peer.FromContext(ctx)
	if !ok {
		return status.Error(codes.Unauthenticated, "no peer")
	}
	ti, ok := pr.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 {
		return status.Error(codes.Unauthenticated, "no verified client certificate")
	}
	cn := ti.State.VerifiedChains[0][0].Subject.CommonName
	p.mu.Lock()
	p.peerCNs = append(p.peerCNs, cn)
	p.mu.Unlock()
	return nil
}

func (p *powerRegion) WatchPowerCommands(_ *rackv1.WatchPowerCommandsRequest, stream grpc.ServerStreamingServer[rackv1.WatchPowerCommandsResponse]) error {
	if err := p.checkPeer(stream.Context()); err != nil {
		return err
	}
	p.mu.Lock()
	p.opens++
	breakAt := p.breakAt
	p.mu.Unlock()
	sent := 0
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case c := <-p.commands:
			if err := stream.Send(&rackv1.WatchPowerCommandsResponse{Command: c}); err != nil {
				return err
			}
			sent++
			if breakAt > 0 && sent >= breakAt {
				return status.Error(codes.Unavailable, "region going away")
			}
		}
	}
}

func (p *powerRegion) ReportPowerResult(ctx context.Context, req *rackv1.ReportPowerResultRequest) (*rackv1.ReportPowerResultResponse, error) {
	if err := p.checkPeer(ctx); err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls[req.GetId()]++
	if p.refuse != codes.OK {
		return nil, status.Error(p.refuse, "no such power command")
	}
	if p.failNext > 0 {
		p.failNext--
		return nil, status.Error(codes.Unavailable, "database restarting")
	}
	p.results = append(p.results, req)
	if p.got != nil {
		p.got <- req
	}
	return &rackv1.ReportPowerResultResponse{}, nil
}

// startPowerRegion registers a rack with a real region and serves the power
// RPCs with a certificate from that region's CA; the returned identity
// points at the power server.
func startPowerRegion(t *testing.T) (*powerRegion, *regionclient.Identity, string) {
	t.Helper()
	r := regiontest.Start(t)
	dir := t.TempDir()
	id, err := register(t, r.HTTPURL, r.SecretHex, dir)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := r.Store.Secret(context.Background(), regiond.SecretCAKey)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		t.Fatal("region CA key is not PEM")
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	caKey := k.(*ecdsa.PrivateKey)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: regionclient.RegionServerName},
		DNSNames:  []string{regionclient.RegionServerName},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
	}, id.CA, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	clientCAs := x509.NewCertPool()
	clientCAs.AddCert(id.CA)
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    clientCAs,
	})))
	p := &powerRegion{rackID: id.State.RackID, commands: make(chan *rackv1.PowerCommand, 16), calls: map[int64]int{}}
	rackv1.RegisterRackServiceServer(gs, p)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = gs.Serve(ln) }()
	t.Cleanup(func() { gs.Stop(); <-done })
	id.State.GRPCEndpoints = []string{ln.Addr().String()}
	return p, id, dir
}

func TestPowerCommandsAndResults(t *testing.T) {
	p, id, dir := startPowerRegion(t)
	p.breakAt = 1 // the stream breaks after each command: the rack must re-open it
	p.failNext = 2
	p.got = make(chan *rackv1.ReportPowerResultRequest, 16)

	// A webhook BMC for the executor's driver.
	var mu sync.Mutex
	var hookCalls []string
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hookCalls = append(hookCalls, r.Method+" "+r.URL.Path)
		mu.Unlock()
		if r.URL.Path == "/query" {
			_, _ = w.Write([]byte(`{"state":"on"}`))
		}
	}))
	t.Cleanup(hook.Close)

	c, err := regionclient.New(id, dir, zaptest.NewLogger(t), regionclient.Options{RetryDelay: 50 * time.Millisecond, EndpointRefresh: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ex := power.NewExecutor(power.DefaultDrivers(), func(ctx context.Context, r power.Result) {
		if err := c.ReportPowerResult(ctx, r.Proto()); err != nil {
			t.Errorf("ReportPowerResult %d: %v", r.ID, err)
		}
	}, power.ExecutorOptions{Log: zaptest.NewLogger(t)})

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := ex.Run(ctx); err != nil {
			t.Errorf("executor Run = %v", err)
		}
	}()
	go func() {
		defer wg.Done()
		if err := c.RunPowerCommands(ctx, func(pc *rackv1.PowerCommand) { ex.Submit(power.FromProto(pc)) }); err != nil {
			t.Errorf("RunPowerCommands = %v", err)
		}
	}()

	deadline := time.Now().Add(time.Minute).UnixNano()
	hookParams := map[string]string{"power_on_uri": hook.URL + "/on", "power_off_uri": hook.URL + "/off", "power_query_uri": hook.URL + "/query"}
	p.commands <- &rackv1.PowerCommand{Id: 11, SystemId: "abc123", Action: "on", PowerType: "webhook", Parameters: hookParams, DeadlineUnixNano: deadline}
	p.commands <- &rackv1.PowerCommand{Id: 12, SystemId: "abc123", Action: "query", PowerType: "webhook", Parameters: hookParams, DeadlineUnixNano: deadline}
	p.commands <- &rackv1.PowerCommand{Id: 13, SystemId: "def456", Action: "on", PowerType: "ipmi", Parameters: map[string]string{}, DeadlineUnixNano: deadline}
	p.commands <- &rackv1.PowerCommand{Id: 14, SystemId: "ghi789", Action: "off", PowerType: "manual", DeadlineUnixNano: deadline}

	got := map[int64]*rackv1.ReportPowerResultRequest{}
	for len(got) < 4 {
		select {
		case r := <-p.got:
			got[r.GetId()] = r
		case <-time.After(30 * time.Second):
			t.Fatalf("results so far: %v", got)
		}
	}
	cancel()
	wg.Wait()

	check := func(id int64, ok bool, state, errPart string) {
		t.Helper()
		r := got[id]
		if r.GetOk() != ok || r.GetState() != state || !strings.Contains(r.GetError(), errPart) {
			t.Errorf("result %d = %v; want ok=%v state=%q error containing %q", id, r, ok, state, errPart)
		}
		if ok && r.GetDurationNano() <= 0 {
			t.Errorf("result %d has no duration", id)
		}
	}
	check(11, true, "on", "")
	check(12, true, "on", "")
	check(13, false, "", "power_address is not set")
	check(14, true, "unknown", "")

	p.mu.Lock()
	defer p.mu.Unlock()
	if p.opens < 4 {
		t.Errorf("stream opened %d times; it broke after every command, want at least 4", p.opens)
	}
	total := 0
	for _, n := range p.calls {
		total += n
	}
	if total != 4+2 {
		t.Errorf("ReportPowerResult calls = %d (%v), want 6: two refused as Unavailable and retried", total, p.calls)
	}
	for _, cn := range p.peerCNs {
		if cn != p.rackID {
			t.Errorf("a power RPC came with client certificate CN %q, want the rack id %q", cn, p.rackID)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(hookCalls, ",") != "POST /on,GET /query" {
		t.Errorf("webhook calls = %v", hookCalls)
	}
}

func TestReportPowerResultGivesUp(t *testing.T) {
	p, id, dir := startPowerRegion(t)
	c, err := regionclient.New(id, dir, zaptest.NewLogger(t), regionclient.Options{RetryDelay: 10 * time.Millisecond, PowerReportAttempts: 3})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx := context.Background()

	// A refusal that another try cannot change: one call.
	p.refuse = codes.NotFound
	err = c.ReportPowerResult(ctx, &rackv1.ReportPowerResultRequest{Id: 1, Ok: true, State: "on"})
	if status.Code(err) != codes.NotFound {
		t.Errorf("error = %v, want NotFound", err)
	}
	// The region away: PowerReportAttempts calls, then an error.
	p.mu.Lock()
	p.refuse = codes.OK
	p.failNext = 100
	p.mu.Unlock()
	err = c.ReportPowerResult(ctx, &rackv1.ReportPowerResultRequest{Id: 2, Ok: true, State: "on"})
	if err == nil || !strings.Contains(err.Error(), "gave up after 3 tries") {
		t.Errorf("error = %v, want gave up after 3 tries", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.calls[1] != 1 || p.calls[2] != 3 {
		t.Errorf("calls = %v, want 1 for id 1 and 3 for id 2", p.calls)
	}
}
