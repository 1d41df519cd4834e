package regiontest

import (
	"net/http"
	"testing"

	"github.com/ferrite-metal/ferrite/pkg/testutil/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func TestStartServesTheAPI(t *testing.T) {
	r := Start(t)
	req, _ := http.NewRequest("GET", r.HTTPURL+"/api/v1/machines", nil)
	req.Header.Set("Authorization", "Bearer "+r.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /api/v1/machines with the admin token = %d, want 200", resp.StatusCode)
	}
}
