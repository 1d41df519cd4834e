package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestCARoundTripAndIssue(t *testing.T) {
	now := time.Now()
	ca, err := NewCA(now)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.PEM()
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := LoadCA(certPEM, keyPEM)
	if err != nil {
		t.Fatalf("LoadCA: %v", err)
	}
	if !loaded.Cert.Equal(ca.Cert) {
		t.Error("loaded certificate differs")
	}
	if got := ca.Cert.NotAfter.Sub(now); got < CAValidity-time.Minute {
		t.Errorf("CA valid for %v, want about %v", got, CAValidity)
	}

	other, _ := NewCA(now)
	_, otherKey, _ := other.PEM()
	if _, err := LoadCA(certPEM, otherKey); err == nil {
		t.Error("LoadCA accepted a key of another CA")
	}
	if _, err := LoadCA([]byte("junk"), keyPEM); err == nil {
		t.Error("LoadCA accepted junk")
	}

	srv, err := loaded.ServerCertificate(now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Leaf.Verify(x509.VerifyOptions{DNSName: ServerName, Roots: ca.Pool()}); err != nil {
		t.Errorf("server certificate does not verify for %s: %v", ServerName, err)
	}

	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csrDER, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "ignored"}, DNSNames: []string{"evil.example"}}, key)
	csr, err := ParseCSR(csrDER)
	if err != nil {
		t.Fatal(err)
	}
	der, err := loaded.SignRack(csr, "rack-abc123", now)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	got := struct {
		CN   string
		DNS  []string
		EKU  []x509.ExtKeyUsage
		IsCA bool
	}{leaf.Subject.CommonName, leaf.DNSNames, leaf.ExtKeyUsage, leaf.IsCA}
	want := struct {
		CN   string
		DNS  []string
		EKU  []x509.ExtKeyUsage
		IsCA bool
	}{"rack-abc123", nil, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, false}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("rack certificate (-want +got):\n%s", diff)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("rack certificate does not verify: %v", err)
	}
	if _, err := ParseCSR(append([]byte(nil), csrDER[:len(csrDER)-3]...)); err == nil {
		t.Error("truncated CSR accepted")
	}
}
