package api

import (
	"bytes"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

func TestParseOAuthHeader(t *testing.T) {
	tests := []struct {
		name, in string
		want     oauthParams
		wantErr  bool
	}{
		{name: "oauthlib", in: `OAuth oauth_nonce="1", oauth_timestamp="2", oauth_version="1.0", oauth_signature_method="PLAINTEXT", oauth_consumer_key="ck", oauth_token="tk", oauth_signature="%26ts"`,
			want: oauthParams{"oauth_nonce": "1", "oauth_timestamp": "2", "oauth_version": "1.0", "oauth_signature_method": "PLAINTEXT",
				"oauth_consumer_key": "ck", "oauth_token": "tk", "oauth_signature": "&ts"}},
		{name: "realm, no spaces, lowercase scheme", in: `oauth realm="",oauth_token="a%20b"`, want: oauthParams{"realm": "", "oauth_token": "a b"}},
		{name: "unquoted and comma inside quotes", in: `OAuth a=1 , b="x,y"`, want: oauthParams{"a": "1", "b": "x,y"}},
		{name: "scheme only", in: `OAuth`, want: oauthParams{}},
		{name: "bearer", in: `Bearer x`, wantErr: true},
		{name: "duplicate", in: `OAuth a="1", a="2"`, wantErr: true},
		{name: "unterminated", in: `OAuth a="1`, wantErr: true},
		{name: "bad escape", in: `OAuth a="%zz"`, wantErr: true},
		{name: "no separator", in: `OAuth a="1" b="2"`, wantErr: true},
		{name: "no value", in: `OAuth a`, wantErr: true},
		{name: "too long", in: "OAuth a=\"" + strings.Repeat("x", maxOAuthHeader) + "\"", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseOAuthHeader(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("parsed %q as %v", tt.in, got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestCheckPlaintext(t *testing.T) {
	c := store.OAuthCredentials{ConsumerKey: "ck", TokenKey: "tk", TokenSecret: "s3"}
	base := func(sig string) oauthParams {
		return oauthParams{"oauth_signature_method": "PLAINTEXT", "oauth_consumer_key": "ck", "oauth_token": "tk", "oauth_signature": sig}
	}
	if !checkPlaintext(base("&s3"), c) {
		t.Error("valid signature refused")
	}
	for name, p := range map[string]oauthParams{
		"wrong secret":          base("&s4"),
		"consumer secret given": base("x&s3"),
		"no ampersand":          base("s3"),
		"wrong consumer":        {"oauth_signature_method": "PLAINTEXT", "oauth_consumer_key": "other", "oauth_signature": "&s3"},
		"HMAC":                  {"oauth_signature_method": "HMAC-SHA1", "oauth_consumer_key": "ck", "oauth_signature": "&s3"},
	} {
		if checkPlaintext(p, c) {
			t.Errorf("%s: accepted", name)
		}
	}
}

// FuzzOAuthHeader: the parser never panics, and what it accepts has no
// empty or duplicate names and survives re-encoding.
func FuzzOAuthHeader(f *testing.F) {
	f.Add(`OAuth oauth_nonce="1", oauth_timestamp="2", oauth_version="1.0", oauth_signature_method="PLAINTEXT", oauth_consumer_key="ck", oauth_token="tk", oauth_signature="%26ts"`)
	f.Add(`OAuth realm="",a=b`)
	f.Add(`OAuth a="%"`)
	f.Add(`oauth  ,`)
	f.Fuzz(func(t *testing.T, h string) {
		p, err := parseOAuthHeader(h)
		if err != nil {
			return
		}
		for k := range p {
			if k == "" {
				t.Fatalf("empty parameter name from %q", h)
			}
		}
		checkPlaintext(p, store.OAuthCredentials{ConsumerKey: "ck", TokenKey: "tk", TokenSecret: "ts"})
	})
}

// FuzzSignalBody: the signal form parser never panics and keeps its
// limits on whatever it accepts.
func FuzzSignalBody(f *testing.F) {
	ct, body := signalMultipart(f, map[string]string{"op": "signal", "status": "OK"}, map[string]string{"inventory.json": testInventory})
	b := new(bytes.Buffer)
	b.ReadFrom(body)
	f.Add(ct, b.String())
	f.Add("application/x-www-form-urlencoded", "op=signal&status=WORKING&error=50%25")
	f.Add("multipart/form-data; boundary=x", "--x\r\nContent-Disposition: form-data; name=\"a/b\"; filename=\"a\"\r\n\r\nz\r\n--x--\r\n")
	f.Add("", "")
	f.Add("text/plain", "x")
	f.Fuzz(func(t *testing.T, ct, body string) {
		form, err := parseSignalBody(ct, strings.NewReader(body))
		if err != nil {
			return
		}
		for k, v := range form.Fields {
			if len(v) > maxSignalField {
				t.Fatalf("field %q of %d bytes", k, len(v))
			}
		}
		if len(form.Files) > maxSignalParts {
			t.Fatalf("%d files", len(form.Files))
		}
		for _, file := range form.Files {
			if err := checkResultName(file.Name); err != nil {
				t.Fatalf("accepted file name: %v", err)
			}
			if file.Name == inventoryFile {
				_, _ = summarizeInventory(file.Data)
			}
		}
	})
}
