package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ServerSpec says how to start one server process: the binary, a name (for
// its log file) and its environment. The process gets only this
// environment plus PATH, HOME and TMPDIR, so nothing leaks in from the
// caller's shell. LISTEN_ADDR is picked once (a free loopback port) and kept
// across restarts, so clients keep their URL; PPROF_ADDR and METRICS_ADDR
// "auto" pick a free loopback port too.
type ServerSpec struct {
	Bin    string
	Name   string
	LogDir string
	Env    map[string]string
}

// Server is a running server process.
type Server struct {
	Spec     ServerSpec
	URL      string
	PprofURL string
	// MetricsURL is where /metrics is served when the server honours
	// METRICS_ADDR; Metrics falls back to the API listener.
	MetricsURL string

	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	mu      sync.Mutex
	exitErr error
}

// StartServer starts the process and waits until /healthz answers (the
// server listens only once it is fully started).
func StartServer(ctx context.Context, spec *ServerSpec) (*Server, error) {
	if spec.Env == nil {
		spec.Env = map[string]string{}
	}
	if spec.Env["LISTEN_ADDR"] == "" {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		spec.Env["LISTEN_ADDR"] = "127.0.0.1:" + strconv.Itoa(port)
	}
	for _, k := range []string{"PPROF_ADDR", "METRICS_ADDR"} {
		if spec.Env[k] == "auto" {
			port, err := freePort()
			if err != nil {
				return nil, err
			}
			spec.Env[k] = "127.0.0.1:" + strconv.Itoa(port)
		}
	}
	if err := os.MkdirAll(spec.LogDir, 0o750); err != nil {
		return nil, err
	}
	logPath := filepath.Join(spec.LogDir, spec.Name+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(logFile, "=== %s start %s\n", time.Now().Format(time.RFC3339Nano), spec.Name)

	// Not CommandContext: the process lives until Stop or Kill, not until
	// the start context ends.
	cmd := exec.Command(spec.Bin, "serve") //nolint:noctx // see above
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "TMPDIR=" + os.TempDir()}
	for k, v := range spec.Env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		_ = logFile.Close()
		return nil, fmt.Errorf("start %s: %w", spec.Name, err)
	}
	s := &Server{Spec: *spec, URL: "http://" + spec.Env["LISTEN_ADDR"], cmd: cmd, logPath: logPath, done: make(chan struct{})}
	if a := spec.Env["PPROF_ADDR"]; a != "" {
		s.PprofURL = "http://" + a
	}
	if a := spec.Env["METRICS_ADDR"]; a != "" {
		s.MetricsURL = "http://" + a
	}
	go func() {
		err := cmd.Wait()
		_ = logFile.Close()
		s.mu.Lock()
		s.exitErr = err
		s.mu.Unlock()
		close(s.done)
	}()
	if err := s.waitReady(ctx, 90*time.Second); err != nil {
		_ = s.Kill()
		return nil, err
	}
	return s, nil
}

func (s *Server) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	hc := &http.Client{Timeout: time.Second}
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL+"/healthz", nil)
		if err != nil {
			return err
		}
		if resp, err := hc.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-s.done:
			return fmt.Errorf("%s exited before it was ready (%w):\n%s", s.Spec.Name, s.ExitErr(), s.LogTail(20))
		case <-ctx.Done():
			return fmt.Errorf("%s not ready after %s:\n%s", s.Spec.Name, timeout, s.LogTail(20))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// PID is the process id.
func (s *Server) PID() int { return s.cmd.Process.Pid }

// Exited reports whether the process has ended.
func (s *Server) Exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// ExitErr is the process's exit error once it ended (nil for exit code 0).
func (s *Server) ExitErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.exitErr
}

// Kill sends SIGKILL and waits for the process to be gone.
func (s *Server) Kill() error {
	if s.Exited() {
		return nil
	}
	if err := s.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	<-s.done
	return nil
}

// Stop sends SIGTERM and waits up to timeout for a clean exit, then kills
// the process. It returns how long the shutdown took and an error when the
// process did not exit cleanly in time.
func (s *Server) Stop(timeout time.Duration) (time.Duration, error) {
	if s.Exited() {
		return 0, nil
	}
	begin := time.Now()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return 0, err
	}
	select {
	case <-s.done:
		took := time.Since(begin)
		if err := s.ExitErr(); err != nil {
			return took, fmt.Errorf("%s exited with %w after SIGTERM:\n%s", s.Spec.Name, err, s.LogTail(10))
		}
		return took, nil
	case <-time.After(timeout):
		_ = s.Kill()
		return time.Since(begin), fmt.Errorf("%s did not exit within %s of SIGTERM; killed", s.Spec.Name, timeout)
	}
}

// Memory returns the process's resident set size now (VmRSS) and its peak
// (VmHWM), in bytes, from /proc.
func (s *Server) Memory() (rss, hwm int64, err error) {
	return procMemory(s.PID())
}

func procMemory(pid int) (rss, hwm int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			continue
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "VmRSS":
			rss = n * 1024
		case "VmHWM":
			hwm = n * 1024
		}
	}
	if rss == 0 && hwm == 0 {
		return 0, 0, fmt.Errorf("no VmRSS/VmHWM in /proc/%d/status", pid)
	}
	return rss, hwm, nil
}

// LogTail returns the last n lines of the process's log.
func (s *Server) LogTail(n int) string { return logTail(s.logPath, n) }

// LogPath is the process's log file (appended across restarts).
func (s *Server) LogPath() string { return s.logPath }

func freePort() (int, error) {
	ln, err := new(net.ListenConfig).Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
