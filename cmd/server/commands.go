package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/danielgtaylor/huma/v2"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/aiqueue/aiqueue/api"
	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/migrations"
)

// migrateCmd is `server migrate up|down|status`.
func migrateCmd(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("usage: server migrate up|down|status")
	}
	url := os.Getenv("DATABASE_URL")
	if url == "" {
		return fmt.Errorf("DATABASE_URL is not set")
	}
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return err
	}
	defer pool.Close()
	switch args[0] {
	case "up":
		return migrations.Up(ctx, pool)
	case "down":
		return migrations.Down(ctx, pool)
	case "status":
		list, err := migrations.List(ctx, pool)
		if err != nil {
			return err
		}
		for _, s := range list {
			state := "pending"
			if s.Applied {
				state = "applied"
			}
			fmt.Printf("%05d  %-8s %s\n", s.Version, state, s.Source)
		}
		return nil
	default:
		return fmt.Errorf("usage: server migrate up|down|status")
	}
}

// tokenCmd is `server token --sub UUID [--admin] [--ttl 1h]`.
func tokenCmd(args []string) error {
	fs := flag.NewFlagSet("token", flag.ContinueOnError)
	sub := fs.String("sub", "", "user id (UUID)")
	admin := fs.Bool("admin", false, "admin role")
	ttl := fs.Duration("ttl", time.Hour, "lifetime")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if _, err := uuid.Parse(*sub); err != nil {
		return fmt.Errorf("--sub must be a UUID")
	}
	cfg, err := ConfigFromEnv(os.Getenv)
	if err != nil {
		return err
	}
	secret := cfg.JWTSecret
	if secret == "" {
		if secret, err = readDevSecret(cfg.DataDir, "dev-jwt-secret"); err != nil {
			return fmt.Errorf("AUTH_JWT_SECRET is not set (and no %s/dev-jwt-secret from make run)", cfg.DataDir)
		}
	}
	tok, err := api.MintToken([]byte(secret), *sub, *admin, *ttl, cfg.JWTAudience)
	if err != nil {
		return err
	}
	fmt.Println(tok)
	return nil
}

// openapiCmd is `server openapi [--json]`: the OpenAPI document, built from
// the same registration code the server runs.
func openapiCmd(args []string) error {
	fs := flag.NewFlagSet("openapi", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "JSON instead of YAML")
	if err := fs.Parse(args); err != nil {
		return err
	}
	doc, err := openAPIDocument()
	if err != nil {
		return err
	}
	var out []byte
	if *asJSON {
		out, err = json.MarshalIndent(doc, "", "  ")
	} else {
		out, err = doc.YAML()
	}
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(out)
	return err
}

func openAPIDocument() (*huma.OpenAPI, error) {
	mux := http.NewServeMux()
	svc := jobs.NewService(jobs.Config{Pool: nil, River: nil, Catalog: jobs.DefaultCatalog()})
	s, err := api.New(mux, nil, svc, api.Config{Auth: api.AuthConfig{HS256Secret: []byte("x")}, Version: Version})
	if err != nil {
		return nil, err
	}
	return s.API().OpenAPI(), nil
}
