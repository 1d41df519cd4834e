package main

import (
	"crypto/rand"
	"strconv"
	"strings"
	"time"
)

// credentials are a machine's OAuth 1.0 token for the metadata API (the preseed's
// datasource.MAAS). The consumer secret is empty, as in MAAS.
type credentials struct {
	ConsumerKey, TokenKey, TokenSecret string
}

// oauthHeader is the Authorization header of an OAuth 1.0 PLAINTEXT request, in the order
// and form of the metadata contract:
//
//	OAuth oauth_version="1.0", oauth_signature_method="PLAINTEXT", oauth_consumer_key="CK",
//	oauth_token="TK", oauth_signature="&TS", oauth_nonce="N", oauth_timestamp="T"
//
// Every value is percent-encoded (RFC 5849 §3.6). The PLAINTEXT signature is
// encode(consumer secret) "&" encode(token secret), and the consumer secret is empty; the
// "&" is written as is, as the contract shows (oauthlib, hence cloud-init, writes it as %26:
// a region that percent-decodes the values, as RFC 5849 §3.5.1 asks, accepts both).
func oauthHeader(c credentials, nonce string, timestamp int64) string {
	var b strings.Builder
	b.WriteString("OAuth ")
	for i, p := range [][2]string{
		{"oauth_version", "1.0"},
		{"oauth_signature_method", "PLAINTEXT"},
		{"oauth_consumer_key", percentEncode(c.ConsumerKey)},
		{"oauth_token", percentEncode(c.TokenKey)},
		{"oauth_signature", "&" + percentEncode(c.TokenSecret)},
		{"oauth_nonce", percentEncode(nonce)},
		{"oauth_timestamp", strconv.FormatInt(timestamp, 10)},
	} {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(p[0] + `="` + p[1] + `"`)
	}
	return b.String()
}

// authorization signs a request made now with a fresh nonce.
func (c credentials) authorization() string {
	return oauthHeader(c, rand.Text(), time.Now().Unix())
}

// percentEncode encodes everything but RFC 3986's unreserved characters (A-Z a-z 0-9 - . _ ~)
// as %XX with upper-case hex digits, byte by byte of the UTF-8 form, as RFC 5849 §3.6 says.
func percentEncode(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' ||
			c == '-' || c == '.' || c == '_' || c == '~' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String()
}
