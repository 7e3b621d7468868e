package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

// composeFile is the part of compose.yaml the test reads.
type composeFile struct {
	Name     string                    `yaml:"name"`
	Services map[string]composeService `yaml:"services"`
	Volumes  map[string]any            `yaml:"volumes"`
}

type composeService struct {
	Image           string                       `yaml:"image"`
	Build           string                       `yaml:"build"`
	Command         []string                     `yaml:"command"`
	Entrypoint      []string                     `yaml:"entrypoint"`
	Environment     map[string]string            `yaml:"environment"`
	Ports           []string                     `yaml:"ports"`
	Profiles        []string                     `yaml:"profiles"`
	Restart         string                       `yaml:"restart"`
	StopGracePeriod string                       `yaml:"stop_grace_period"`
	DependsOn       map[string]map[string]string `yaml:"depends_on"`
	Healthcheck     struct {
		Test []string `yaml:"test"`
	} `yaml:"healthcheck"`
}

// interpolate expands ${NAME}, ${NAME:-default}, ${NAME-default},
// ${NAME:?message} and ${NAME?message} as Compose does, from env; a
// required variable that is missing is an error naming it, with its message.
func interpolate(s string, env map[string]string) (string, error) {
	re := regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}`)
	var errs []error
	out := re.ReplaceAllStringFunc(s, func(m string) string {
		p := re.FindStringSubmatch(m)
		v, set := env[p[1]]
		switch {
		case p[2] == ":-" && v == "":
			return p[3]
		case p[2] == "-" && !set:
			return p[3]
		case (p[2] == ":?" && v == "") || (p[2] == "?" && !set):
			errs = append(errs, fmt.Errorf("required variable %s is missing a value: %s", p[1], p[3]))
		}
		return v
	})
	return out, errors.Join(errs...)
}

// envFile reads KEY=VALUE lines (comments and blank lines skipped).
func envFile(t *testing.T, path string) map[string]string {
	t.Helper()
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	env := map[string]string{}
	for line := range strings.SplitSeq(string(raw), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		require.True(t, ok, "%s: %q is not KEY=VALUE", path, line)
		env[k] = v
	}
	return env
}

func TestCompose(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("../../compose.yaml")
	require.NoError(t, err)
	var f composeFile
	require.NoError(t, yaml.Unmarshal(raw, &f))

	// The services docker compose up starts, and the optional simulator.
	var started []string
	for name, s := range f.Services {
		if len(s.Profiles) == 0 {
			started = append(started, name)
		}
	}
	require.ElementsMatch(t, []string{"postgres", "migrate", "server"}, started)

	pg := f.Services["postgres"]
	require.True(t, strings.HasPrefix(pg.Image, "postgres:"), pg.Image)
	require.Contains(t, strings.Join(pg.Healthcheck.Test, " "), "pg_isready")
	require.Contains(t, f.Volumes, "pgdata")

	mig := f.Services["migrate"]
	require.Equal(t, ".", mig.Build)
	require.Equal(t, []string{"migrate", "up"}, mig.Command)
	require.Equal(t, "service_healthy", mig.DependsOn["postgres"]["condition"])
	require.Contains(t, mig.Environment["DATABASE_URL"], "@postgres:5432/")

	srv := f.Services["server"]
	require.Equal(t, ".", srv.Build)
	require.Equal(t, []string{"serve"}, srv.Command)
	require.Equal(t, "service_completed_successfully", srv.DependsOn["migrate"]["condition"])
	require.Equal(t, mig.Environment["DATABASE_URL"], srv.Environment["DATABASE_URL"])
	for _, p := range append(slices.Clone(srv.Ports), pg.Ports...) {
		require.True(t, strings.HasPrefix(p, "127.0.0.1:"), "port %q is published beyond this machine", p)
	}

	sim := f.Services["falsim"]
	require.Equal(t, ".", sim.Build)
	require.Equal(t, []string{"/usr/local/bin/falsim"}, sim.Entrypoint)

	// Every variable given to the server is one it reads (SPEC section 4
	// names), and the ones SPEC makes essential are there.
	read := map[string]bool{}
	_, _ = ConfigFromEnv(func(k string) string { read[k] = true; return "" })
	for name := range srv.Environment {
		require.True(t, read[name], "compose sets %s, which the server does not read", name)
	}
	for _, name := range []string{"DATABASE_URL", "LISTEN_ADDR", "ROLE", "AUTH_JWT_SECRET", "FAL_KEYS", "FAL_SIMULATE", "FAL_QUEUE_URL",
		"RIVER_BASIC_AUTH_USER", "RIVER_BASIC_AUTH_PASS", "LOG_LEVEL", "SHUTDOWN_TIMEOUT"} {
		require.Contains(t, srv.Environment, name)
	}

	require.Equal(t, "unless-stopped", srv.Restart)
	require.Equal(t, "unless-stopped", pg.Restart)

	// What docker compose up would give the server with hostEnv (the
	// shell and .env), or the error compose would stop with.
	composeEnv := func(hostEnv map[string]string) (map[string]string, error) {
		env := map[string]string{}
		var errs []error
		for k, v := range srv.Environment {
			var err error
			env[k], err = interpolate(v, hostEnv)
			errs = append(errs, err)
		}
		return env, errors.Join(errs...)
	}
	// Secrets of the kind a real .env holds.
	secrets := map[string]string{"AUTH_JWT_SECRET": strings.Repeat("7f", 32), "RIVER_BASIC_AUTH_PASS": strings.Repeat("a9", 32)}
	configFor := func(hostEnv map[string]string) Config {
		env, err := composeEnv(withEnv(secrets, hostEnv))
		require.NoError(t, err)
		cfg, err := ConfigFromEnv(func(k string) string { return env[k] })
		require.NoError(t, err)
		require.NoError(t, cfg.Validate())
		return cfg
	}

	t.Run("AsksForSecrets", func(t *testing.T) {
		t.Parallel()
		_, err := composeEnv(nil)
		require.ErrorContains(t, err, "AUTH_JWT_SECRET")
		require.ErrorContains(t, err, "RIVER_BASIC_AUTH_PASS")
		require.ErrorContains(t, err, ".env.example")
	})

	t.Run("EnvExample", func(t *testing.T) {
		t.Parallel()
		example := envFile(t, "../../.env.example")
		env, err := composeEnv(example)
		require.NoError(t, err, "the example has every variable compose asks for")
		cfg, err := ConfigFromEnv(func(k string) string { return env[k] })
		require.NoError(t, err)
		require.NoError(t, cfg.Validate(), "the simulator runs with the example as it is")

		// With real keys its placeholders are refused.
		env, err = composeEnv(withEnv(example, map[string]string{"FAL_KEYS": "k1,k2"}))
		require.NoError(t, err)
		cfg, err = ConfigFromEnv(func(k string) string { return env[k] })
		require.NoError(t, err)
		err = cfg.Validate()
		require.ErrorContains(t, err, "AUTH_JWT_SECRET is a published default")
		require.ErrorContains(t, err, "RIVER_BASIC_AUTH_PASS is a published default")

		if exec.Command("git", "rev-parse", "--git-dir").Run() != nil {
			t.Log("not in a git checkout: .gitignore not checked")
			return
		}
		for _, name := range []string{".env", ".env.local", ".env.production"} {
			require.NoError(t, exec.Command("git", "check-ignore", "-q", "../../"+name).Run(), "%s is not ignored by git", name)
		}
		require.Error(t, exec.Command("git", "check-ignore", "-q", "../../.env.example").Run(), ".env.example is ignored by git")
	})

	t.Run("NoKeyRunsTheSimulator", func(t *testing.T) {
		t.Parallel()
		cfg := configFor(nil)
		require.True(t, cfg.FalSimulate)
		require.Empty(t, cfg.FalQueueURL, "the built-in simulator")
		require.Equal(t, RoleAll, cfg.Role)
		require.False(t, cfg.AutoMigrate, "the migrate service migrates")
		require.NotEmpty(t, cfg.RiverUser)

		grace, err := time.ParseDuration(srv.StopGracePeriod)
		require.NoError(t, err)
		require.Greater(t, grace, cfg.ShutdownTimeout, "Docker would SIGKILL running jobs")
	})

	t.Run("KeysCallFal", func(t *testing.T) {
		t.Parallel()
		cfg := configFor(map[string]string{"FAL_KEYS": "k1,k2"})
		require.False(t, cfg.FalSimulate)
		require.Equal(t, "https://queue.fal.run", cfg.FalQueueURL)
		require.Equal(t, []string{"k1", "k2"}, cfg.FalKeys)
	})

	t.Run("StandaloneSimulator", func(t *testing.T) {
		t.Parallel()
		cfg := configFor(map[string]string{"FAL_QUEUE_URL": "http://falsim:8090", "FAL_SIMULATE": "true"})
		require.True(t, cfg.FalSimulate)
		require.Equal(t, "http://falsim:8090", cfg.FalQueueURL)
	})
}
