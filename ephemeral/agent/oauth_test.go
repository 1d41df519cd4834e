package main

import "testing"

func TestOAuthHeader(t *testing.T) {
	tests := []struct {
		name      string
		creds     credentials
		nonce     string
		timestamp int64
		want      string
	}{
		{
			name:      "maas-style keys",
			creds:     credentials{ConsumerKey: "CK", TokenKey: "TK", TokenSecret: "TS"},
			nonce:     "N",
			timestamp: 1700000000,
			want: `OAuth oauth_version="1.0", oauth_signature_method="PLAINTEXT", oauth_consumer_key="CK", ` +
				`oauth_token="TK", oauth_signature="&TS", oauth_nonce="N", oauth_timestamp="1700000000"`,
		},
		{
			name:      "reserved characters are percent-encoded",
			creds:     credentials{ConsumerKey: "a b+c", TokenKey: "t/k=1", TokenSecret: "s&e\"c~r.e_t-"},
			nonce:     "n%ü",
			timestamp: 0,
			want: `OAuth oauth_version="1.0", oauth_signature_method="PLAINTEXT", oauth_consumer_key="a%20b%2Bc", ` +
				`oauth_token="t%2Fk%3D1", oauth_signature="&s%26e%22c~r.e_t-", oauth_nonce="n%25%C3%BC", oauth_timestamp="0"`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := oauthHeader(tt.creds, tt.nonce, tt.timestamp); got != tt.want {
				t.Errorf("oauthHeader:\n got %s\nwant %s", got, tt.want)
			}
		})
	}
}

func TestAuthorizationFreshNonce(t *testing.T) {
	c := credentials{ConsumerKey: "CK", TokenKey: "TK", TokenSecret: "TS"}
	a, b := parseOAuthHeader(t, c.authorization()), parseOAuthHeader(t, c.authorization())
	if a["oauth_nonce"] == "" || a["oauth_nonce"] == b["oauth_nonce"] {
		t.Errorf("nonces %q and %q: want two different non-empty nonces", a["oauth_nonce"], b["oauth_nonce"])
	}
	if a["oauth_timestamp"] == "" || a["oauth_timestamp"] == "0" {
		t.Errorf("timestamp %q: want the current time", a["oauth_timestamp"])
	}
}
