package power

import (
	"crypto/tls"
	"net/http"
	"sync"
)

// bmcClients holds the two HTTP clients an HTTP-speaking driver needs: one
// that verifies the BMC's certificate and one for power_verify_tls=false.
type bmcClients struct {
	once               sync.Once
	verified, insecure *http.Client
}

// get returns the client for verify; transport, when set, replaces both
// (tests).
func (c *bmcClients) get(transport http.RoundTripper, verify bool) *http.Client {
	c.once.Do(func() {
		if transport != nil {
			c.verified = &http.Client{Transport: transport}
			c.insecure = c.verified
			return
		}
		base := http.DefaultTransport.(*http.Transport)
		i := base.Clone()
		i.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // the operator said power_verify_tls=false
		c.verified = &http.Client{Transport: base.Clone()}
		c.insecure = &http.Client{Transport: i}
	})
	if verify {
		return c.verified
	}
	return c.insecure
}
