package falsim_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/aiqueue/aiqueue/falclient/falsim"
)

// BenchmarkSubmitPoll is one submit and one status poll (which completes
// the request, Fast mode) with a history of completed requests and others
// still open: neither should change what a call costs.
func BenchmarkSubmitPoll(b *testing.B) {
	for _, history := range []int{0, 20000} {
		for _, open := range []int{0, 2000} {
			b.Run(fmt.Sprintf("history=%d/open=%d", history, open), func(b *testing.B) {
				sim := falsim.New(falsim.Options{Keys: []string{keyA}, Fast: true})
				for range history {
					poll(b, sim, submitDirect(b, sim))
				}
				for range open {
					submitDirect(b, sim)
				}
				b.ResetTimer()
				for range b.N {
					poll(b, sim, submitDirect(b, sim))
				}
			})
		}
	}
}

// submitDirect submits an image request straight to the handler and
// returns its status URL's path.
func submitDirect(b *testing.B, sim *falsim.Server) string {
	req := httptest.NewRequest(http.MethodPost, "/"+imageModel, strings.NewReader(`{"prompt":"a ring"}`))
	req.Header.Set("Authorization", "Key "+keyA)
	w := httptest.NewRecorder()
	sim.ServeHTTP(w, req)
	var out struct {
		StatusURL string `json:"status_url"`
	}
	if w.Code != http.StatusOK || json.Unmarshal(w.Body.Bytes(), &out) != nil {
		b.Fatalf("submit: %d %s", w.Code, w.Body)
	}
	return strings.TrimPrefix(out.StatusURL, "http://example.com")
}

func poll(b *testing.B, sim *falsim.Server, path string) {
	req := httptest.NewRequest(http.MethodGet, path, nil)
	req.Header.Set("Authorization", "Key "+keyA)
	w := httptest.NewRecorder()
	sim.ServeHTTP(w, req)
	if w.Code != http.StatusOK {
		b.Fatalf("status: %d %s", w.Code, w.Body)
	}
}
