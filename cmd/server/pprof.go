package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime"
	"time"
)

// mutexProfileFraction is the runtime's mutex sampling rate while pprof is
// served: one contention event in this many is recorded.
const mutexProfileFraction = 5

// validPprofAddr accepts only a loopback address: the profiles show
// internals and must never be reachable from the network.
func validPprofAddr(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("PPROF_ADDR=%q is not host:port", addr)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("PPROF_ADDR=%q must be a loopback address (127.0.0.1:PORT)", addr)
	}
	return nil
}

// startPprof serves net/http/pprof on its own loopback listener (never on
// the API's), and turns on mutex profiling, when PPROF_ADDR is set. The
// benchmarks (cmd/loadgen -profile) read CPU and mutex profiles from it.
func (m *Main) startPprof(ctx context.Context) error {
	ln, err := new(net.ListenConfig).Listen(ctx, "tcp", m.Config.PprofAddr)
	if err != nil {
		return fmt.Errorf("PPROF_ADDR: %w", err)
	}
	runtime.SetMutexProfileFraction(mutexProfileFraction)
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	m.pprof = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	m.pprofURL = "http://" + ln.Addr().String()
	go func() { _ = m.pprof.Serve(ln) }()
	m.Logger.Info("pprof enabled", slog.String("addr", ln.Addr().String()))
	return nil
}

// PprofURL is the base URL of the pprof listener, or "" when PPROF_ADDR is
// not set.
func (m *Main) PprofURL() string { return m.pprofURL }
