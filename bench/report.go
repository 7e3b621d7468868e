package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"
)

// Row is one figure of the report: a value, the reference it is compared
// with, their ratio and, where issue 8 sets one, the target and whether this
// run met it.
type Row struct {
	Scenario string  `json:"scenario"`
	Figure   string  `json:"figure"`
	Value    float64 `json:"value"`
	Unit     string  `json:"unit"`
	// Display, when set, is how the value is printed (for example
	// "p50/p95/p99" triples); Value is then the figure the ratio uses.
	Display    string   `json:"display,omitempty"`
	Reference  string   `json:"reference,omitempty"`
	RefValue   *float64 `json:"reference_value,omitempty"`
	RefDisplay string   `json:"reference_display,omitempty"`
	// Ratio is Value / RefValue.
	Ratio  *float64 `json:"ratio,omitempty"`
	Target string   `json:"target,omitempty"`
	Pass   *bool    `json:"pass,omitempty"`
	Note   string   `json:"note,omitempty"`
}

// Machine describes where the run happened.
type Machine struct {
	CPUs         int    `json:"cpus"`
	OS           string `json:"os"`
	Kernel       string `json:"kernel,omitempty"`
	CPUModel     string `json:"cpu_model,omitempty"`
	MemTotal     string `json:"mem_total,omitempty"`
	GoVersion    string `json:"go_version"`
	Postgres     string `json:"postgres,omitempty"`
	LoadAvgStart string `json:"loadavg_start,omitempty"`
	LoadAvgEnd   string `json:"loadavg_end,omitempty"`
	Commit       string `json:"commit,omitempty"`
}

// Report is the result of a benchmark run, printed as a table and written
// as JSON.
type Report struct {
	Started      time.Time      `json:"started"`
	Finished     time.Time      `json:"finished"`
	Scale        string         `json:"scale"`
	Machine      Machine        `json:"machine"`
	Config       Config         `json:"config"`
	Capabilities *Capabilities  `json:"capabilities,omitempty"`
	Rows         []Row          `json:"rows"`
	Details      map[string]any `json:"details"`
	Notes        []string       `json:"notes,omitempty"`
	Errors       []string       `json:"errors,omitempty"`
}

func newReport(cfg Config) *Report {
	return &Report{
		Started: time.Now().UTC(),
		Scale:   cfg.Scale,
		Config:  cfg,
		Machine: machineInfo(),
		Details: map[string]any{},
	}
}

// add appends a row, computing its ratio and pass from target when given.
func (r *Report) add(row Row) {
	if row.RefValue != nil && *row.RefValue != 0 && row.Ratio == nil {
		ratio := row.Value / *row.RefValue
		row.Ratio = &ratio
	}
	r.Rows = append(r.Rows, row)
}

func (r *Report) note(format string, args ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

func ptr[T any](v T) *T { return &v }

// Table prints the report as an aligned table followed by its notes.
func (r *Report) Table(w io.Writer) {
	fmt.Fprintf(w, "\naiqueue benchmark, %s scale, %s, %d CPUs, load average %s at start and %s at end\n\n",
		r.Scale, r.Started.Format("2006-01-02 15:04 MST"), r.Machine.CPUs, r.Machine.LoadAvgStart, r.Machine.LoadAvgEnd)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SCENARIO\tFIGURE\tVALUE\tREFERENCE\tREF VALUE\tRATIO\tTARGET\tRESULT")
	for _, row := range r.Rows {
		value := row.Display
		if value == "" {
			value = formatValue(row.Value, row.Unit)
		}
		ref := row.RefDisplay
		if ref == "" && row.RefValue != nil {
			ref = formatValue(*row.RefValue, row.Unit)
		}
		ratio := ""
		if row.Ratio != nil {
			ratio = fmt.Sprintf("%.2fx", *row.Ratio)
		}
		result := ""
		if row.Pass != nil {
			result = "miss"
			if *row.Pass {
				result = "pass"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", row.Scenario, row.Figure, value, row.Reference, ref, ratio, row.Target, result)
	}
	_ = tw.Flush()
	for _, n := range r.Notes {
		fmt.Fprintf(w, "- %s\n", n)
	}
	for _, e := range r.Errors {
		fmt.Fprintf(w, "! %s\n", e)
	}
}

func formatValue(v float64, unit string) string {
	switch unit {
	case "":
		return trimFloat(v)
	case "ms":
		return fmt.Sprintf("%.2f ms", v)
	default:
		return trimFloat(v) + " " + unit
	}
}

func trimFloat(v float64) string {
	if v == float64(int64(v)) || v >= 100 {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

// WriteJSON writes the report to dir/<start time>.json, or
// dir/<scenarios>-<start time>.json when only some scenarios ran, and
// returns the path.
func (r *Report) WriteJSON(dir string) (string, error) {
	name := r.Started.Format("2006-01-02T15-04-05Z") + ".json"
	if len(r.Config.Scenarios) > 0 {
		name = strings.Join(r.Config.Scenarios, "+") + "-" + name
	}
	return writeJSON(dir, name, r)
}

// writeJSON writes v, indented, to dir/name (through a temporary file, so a
// reader never sees half a report) and returns the path.
func writeJSON(dir, name string, v any) (string, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return "", err
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, name)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return "", err
	}
	return path, os.Rename(tmp, path)
}

// machineInfo reads what describes the machine from /proc where it can.
func machineInfo() Machine {
	m := Machine{CPUs: runtime.NumCPU(), OS: runtime.GOOS + "/" + runtime.GOARCH, GoVersion: runtime.Version(), LoadAvgStart: loadAvg()}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				m.MemTotal = strings.TrimSpace(v)
				break
			}
		}
	}
	return m
}

// loadAvg is the 1, 5 and 15 minute load average, or "?".
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
