// Command server is aiqueue's one binary: the HTTP API, the River workers,
// River UI and metrics, plus the migrate, token and openapi subcommands.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "server:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	cmd := "serve"
	if len(args) > 0 && args[0] != "" && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		return serve(args)
	case "migrate":
		return migrateCmd(args)
	case "token":
		return tokenCmd(args)
	case "openapi":
		return openapiCmd(args)
	default:
		return fmt.Errorf("unknown command %q (serve, migrate, token, openapi)", cmd)
	}
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	demo := fs.Bool("demo", false, "grant the demo user credits and print a token (make run)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := ConfigFromEnv(os.Getenv)
	if err != nil {
		return err
	}
	cfg.Demo = *demo

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	m := NewMain(cfg)
	if err := m.Run(ctx); err != nil {
		_ = m.Close()
		return err
	}
	if cfg.Demo {
		printDemo(os.Stdout, m)
	}
	<-ctx.Done()
	stop() // a second signal kills the process at once
	m.Logger.Info("shutting down: no new requests or jobs; running jobs may finish",
		slog.Duration("shutdown_timeout", cfg.ShutdownTimeout))
	if err := m.Close(); err != nil { // Close drops context.Canceled itself
		return err
	}
	m.Logger.Info("shut down")
	return nil
}

// printDemo prints what a developer needs after make run.
func printDemo(w io.Writer, m *Main) {
	u := m.URL()
	ui := "off (set RIVER_BASIC_AUTH_USER and RIVER_BASIC_AUTH_PASS)"
	if m.Config.RiverUser != "" {
		ui = u + "/riverui/"
		if m.riverUIPasswordFile != "" {
			ui += fmt.Sprintf("  (user %s, password in %s)", m.Config.RiverUser, m.riverUIPasswordFile)
		}
	}
	fmt.Fprintf(w, `
aiqueue is running (Ctrl-C stops it; the data stays in %s)

  API docs   %s/docs
  Playground %s/playground  (offers the demo token to browsers on this machine)
  OpenAPI    %s/openapi.yaml
  River UI   %s
  Metrics    %s
  Database   %s

Demo user %s has credits. Bearer token (24h, admin):

  export TOKEN=%s

  curl -s -X POST %s/v1/jobs -H "Authorization: Bearer $TOKEN" \
       -H 'Content-Type: application/json' \
       -d '{"operation":"generate","params":{"prompt":"a gold ring on marble"}}'

`, m.Config.DataDir, u, u, u, ui, m.MetricsURL(), redactDSN(m.Config.DatabaseURL), DemoUserID, m.DemoToken, u)
}
