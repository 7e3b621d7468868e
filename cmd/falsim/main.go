// Command falsim serves the fal queue API simulator (package
// falclient/falsim) over HTTP, for demos and for pointing FAL_QUEUE_URL at.
//
// Usage:
//
//	falsim [-addr 127.0.0.1:8090] [-fast] [-keys k1,k2] [-latency-scale 1.0]
//	       [-concurrency 0] [-retention 1h] [-complete-cancelled-runs]
//	       [-webhook-attempts 10] [-webhook-backoff 1s] [-webhook-user-id falsim]
//
// With -keys only those keys are accepted (named key-1, key-2 ... in logs);
// without it any non-empty key is. -fast completes every request at its first
// status poll; otherwise image models take 2s and video models 30s, times
// -latency-scale. -concurrency N lets at most N requests of the account run
// at once, the others wait in fal's queue (0: no limit). -retention is how
// long results are kept after COMPLETED (at most 6 minutes for 10 KB or
// more). -complete-cancelled-runs lets a cancelled running request finish
// and be billed, as fal may. Webhooks (?fal_webhook=URL) are signed with a
// key generated at start, published at /.well-known/jwks.json, and retried
// -webhook-attempts times with a doubling back-off from -webhook-backoff.
// It stops on SIGINT or SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/aiqueue/aiqueue/falclient/falsim"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "falsim:", err)
		os.Exit(1)
	}
}

// run parses args, serves until ctx is done, then shuts down gracefully.
func run(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("falsim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:8090", "listen address")
	fast := fs.Bool("fast", false, "complete every request at its first status poll (no latency)")
	keys := fs.String("keys", "", "comma-separated keys to accept (default: any non-empty key)")
	scale := fs.Float64("latency-scale", 1.0, "multiplier for the simulated model latencies (> 0)")
	concurrency := fs.Int("concurrency", 0, "requests of the account running at once, the others wait in the queue (0: no limit)")
	retention := fs.Duration("retention", falsim.DefaultRetention, "how long a result is kept after COMPLETED (at most 6m for 10 KB or more)")
	completeCancelled := fs.Bool("complete-cancelled-runs", false, "a cancelled running request still completes and is billed")
	hookAttempts := fs.Int("webhook-attempts", falsim.DefaultWebhookAttempts, "webhook deliveries tried before giving up")
	hookBackoff := fs.Duration("webhook-backoff", falsim.DefaultWebhookBackoff, "wait after the first failed webhook delivery, doubled each time up to 1m")
	hookUser := fs.String("webhook-user-id", "falsim", "X-Fal-Webhook-User-Id of the webhooks")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	switch {
	case *scale <= 0:
		return fmt.Errorf("-latency-scale must be > 0, got %v", *scale)
	case *concurrency < 0:
		return fmt.Errorf("-concurrency must be >= 0, got %d", *concurrency)
	case *retention <= 0:
		return fmt.Errorf("-retention must be > 0, got %s", *retention)
	case *hookAttempts < 1:
		return fmt.Errorf("-webhook-attempts must be >= 1, got %d", *hookAttempts)
	case *hookBackoff <= 0:
		return fmt.Errorf("-webhook-backoff must be > 0, got %s", *hookBackoff)
	}
	var keyList []string
	for k := range strings.SplitSeq(*keys, ",") {
		if k = strings.TrimSpace(k); k != "" {
			keyList = append(keyList, k)
		}
	}

	log := slog.New(slog.NewJSONHandler(stderr, nil))
	sim := falsim.New(falsim.Options{
		Keys:                  keyList,
		Fast:                  *fast,
		LatencyScale:          *scale,
		Concurrency:           *concurrency,
		Retention:             *retention,
		CompleteCancelledRuns: *completeCancelled,
		WebhookAttempts:       *hookAttempts,
		WebhookBackoff:        *hookBackoff,
		WebhookUserID:         *hookUser,
		Logger:                log,
	})
	defer sim.Close()

	ln, err := new(net.ListenConfig).Listen(ctx, "tcp", *addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: sim, ReadHeaderTimeout: 10 * time.Second}
	log.Info("falsim listening", "url", "http://"+ln.Addr().String(), "fast", *fast, "keys", len(keyList), "latency_scale", *scale,
		"concurrency", *concurrency, "retention", retention.String(), "complete_cancelled_runs", *completeCancelled)

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	// End open status streams first: Shutdown waits for every handler.
	sim.Close()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return err
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
