package bench

import (
	"bufio"
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// wrkScript is the load of the versus-seed and backlog scenarios: every
// request a POST /v1/jobs of one generate job, the users' tokens taken in
// turn from a file (one per line), each wrk thread starting at its own
// offset; done() prints the summary and latency percentiles as one JSON line.
//
//go:embed submit.lua
var wrkScript []byte

// WrkLoad is what wrk runs: threads, connections, duration and, when Rate
// is set, a pace.
type WrkLoad struct {
	Threads     int           `json:"threads"`
	Connections int           `json:"connections"`
	Duration    time.Duration `json:"duration"`
	// Rate paces the load at about this many requests per second in all
	// (0: as fast as the answers come): each wrk thread sends on a
	// schedule of Threads/Rate apart, whenever one of its connections is
	// free, so both systems get the same load while they answer in time
	// (the run's requests/s says what it was). It asks whether a system
	// keeps up with a given load, where the unpaced run asks how much it
	// takes.
	Rate float64 `json:"rate,omitempty"`
}

func (l WrkLoad) String() string {
	s := fmt.Sprintf("wrk -t%d -c%d -d%s", l.Threads, l.Connections, l.Duration)
	if l.Rate > 0 {
		s += fmt.Sprintf(", paced at %.0f requests/s", l.Rate)
	}
	return s
}

// everyMS is how far apart each wrk thread sends for the load to come at
// Rate, in milliseconds; 0 when unpaced.
func (l WrkLoad) everyMS() float64 {
	if l.Rate <= 0 {
		return 0
	}
	return float64(l.Threads) * 1000 / l.Rate
}

// WrkResult is one wrk run, from its done() summary.
type WrkResult struct {
	Requests int `json:"requests"`
	// Non2xx is wrk's count of responses with a status of 400 or more.
	Non2xx        int     `json:"non_2xx"`
	SocketErrors  int     `json:"socket_errors"`
	Timeouts      int     `json:"timeouts"`
	DurationS     float64 `json:"duration_s"`
	RequestsPerS  float64 `json:"requests_per_s"`
	Accepted      int     `json:"accepted"`
	MeanMS        float64 `json:"mean_ms"`
	P50MS         float64 `json:"p50_ms"`
	P90MS         float64 `json:"p90_ms"`
	P99MS         float64 `json:"p99_ms"`
	MaxMS         float64 `json:"max_ms"`
	ConnectErrors int     `json:"connect_errors"`
	// CPUMS is wrk's own CPU time (user and system) over the run: the
	// load's cost on a machine the system shares with it.
	CPUMS float64 `json:"cpu_ms"`
}

type wrkDone struct {
	Requests   int     `json:"requests"`
	DurationUS int64   `json:"duration_us"`
	Connect    int     `json:"connect_errors"`
	Read       int     `json:"read_errors"`
	Write      int     `json:"write_errors"`
	Status     int     `json:"status_errors"`
	Timeout    int     `json:"timeouts"`
	MeanUS     float64 `json:"mean_us"`
	P50US      float64 `json:"p50_us"`
	P90US      float64 `json:"p90_us"`
	P99US      float64 `json:"p99_us"`
	MaxUS      float64 `json:"max_us"`
}

// writeTokens writes one token per line for the wrk script.
func writeTokens(path string, users []user) error {
	var b strings.Builder
	for _, u := range users {
		b.WriteString(u.Token)
		b.WriteByte('\n')
	}
	return os.WriteFile(path, []byte(b.String()), 0o600)
}

// runWrk runs wrk against base with the submit script and the tokens in
// tokensFile. wrk's timeout is raised to 10 s, so a slow answer counts in
// the latency distribution instead of as a timeout.
func runWrk(ctx context.Context, dir, base, tokensFile string, load WrkLoad) (WrkResult, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return WrkResult{}, err
	}
	script := filepath.Join(dir, "submit.lua")
	if err := os.WriteFile(script, wrkScript, 0o644); err != nil {
		return WrkResult{}, err
	}
	secs := max(int(load.Duration.Round(time.Second)/time.Second), 1)
	args := []string{"-t" + strconv.Itoa(load.Threads), "-c" + strconv.Itoa(load.Connections),
		"-d" + strconv.Itoa(secs) + "s", "--timeout", "10s", "-s", script, base + "/v1/jobs", "--", tokensFile, strconv.FormatFloat(load.everyMS(), 'f', 3, 64)}
	ctx, cancel := context.WithTimeout(ctx, load.Duration+time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "wrk", args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return WrkResult{}, fmt.Errorf("wrk: %w\n%s", err, out.String())
	}
	res, err := parseWrk(out.Bytes())
	if err != nil {
		return WrkResult{}, err
	}
	res.CPUMS = float64(cmd.ProcessState.UserTime()+cmd.ProcessState.SystemTime()) / float64(time.Millisecond)
	return res, nil
}

// parseWrk reads the WRK_RESULT line the script's done() prints.
func parseWrk(out []byte) (WrkResult, error) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "WRK_RESULT ")
		if !ok {
			continue
		}
		var d wrkDone
		if err := json.Unmarshal([]byte(line), &d); err != nil {
			return WrkResult{}, fmt.Errorf("wrk result %q: %w", line, err)
		}
		r := WrkResult{
			Requests: d.Requests, Non2xx: d.Status, SocketErrors: d.Connect + d.Read + d.Write, Timeouts: d.Timeout,
			ConnectErrors: d.Connect, DurationS: float64(d.DurationUS) / 1e6,
			MeanMS: d.MeanUS / 1e3, P50MS: d.P50US / 1e3, P90MS: d.P90US / 1e3, P99MS: d.P99US / 1e3, MaxMS: d.MaxUS / 1e3,
		}
		r.Accepted = r.Requests - r.Non2xx
		if r.DurationS > 0 {
			r.RequestsPerS = float64(r.Requests) / r.DurationS
		}
		return r, nil
	}
	return WrkResult{}, errors.New("wrk printed no WRK_RESULT line:\n" + string(out))
}
