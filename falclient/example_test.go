package falclient_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"strings"

	"github.com/aiqueue/aiqueue/falclient"
	"github.com/aiqueue/aiqueue/falclient/falsim"
)

// Example runs one request through the key pool against the simulator: pick a
// key, submit, poll the status, fetch the result.
func Example() {
	sim := falsim.New(falsim.Options{Fast: true})
	srv := httptest.NewServer(sim)
	defer srv.Close()

	client, err := falclient.New(falclient.Config{
		BaseURL: srv.URL,
		Keys:    []string{"first-secret", "second-secret", "third-secret"},
	})
	if err != nil {
		panic(err)
	}
	ctx := context.Background()

	// Which key a request uses is the caller's (package dispatch gives
	// out each key's slots).
	key := 1
	req, err := client.Submit(ctx, key, "fal-ai/flux/dev", json.RawMessage(`{"prompt":"a gold ring"}`), nil)
	if err != nil {
		panic(err)
	}
	// The Request is what a caller stores (as JSON) before waiting.
	st, err := client.Status(ctx, req.Key, req, false)
	if err != nil {
		panic(err)
	}
	fmt.Println("state", st.State)

	res, err := client.Result(ctx, req.Key, req)
	if err != nil {
		panic(err)
	}
	var result struct {
		Images []struct {
			URL string `json:"url"`
		} `json:"images"`
	}
	if err := json.Unmarshal(res.Output, &result); err != nil {
		panic(err)
	}
	fmt.Println("images", len(result.Images), strings.HasPrefix(result.Images[0].URL, "https://fal.media/files/sim/"))
	fmt.Println("billable units", *res.BillableUnits)
	// Output:
	// state COMPLETED
	// images 1 true
	// billable units 1
}
