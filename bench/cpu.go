package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// clockTick is Linux's USER_HZ, the unit of /proc/<pid>/stat times.
const clockTick = 10 * time.Millisecond

// cpuTimes is CPU time used so far by the parties of a run. CPU time per
// job is much less sensitive than wall time to what else runs on a shared
// machine, so it says where the work goes even when latencies are noisy.
type cpuTimes struct {
	Server   time.Duration
	Postgres time.Duration
	Loadgen  time.Duration
}

// CPUPerJob is CPU time per job, in milliseconds, by party.
type CPUPerJob struct {
	ServerMS   float64 `json:"server_ms"`
	PostgresMS float64 `json:"postgres_ms"`
	LoadgenMS  float64 `json:"loadgen_ms"`
}

// Total is the server's and Postgres's share: the system's own cost.
func (c CPUPerJob) Total() float64 { return c.ServerMS + c.PostgresMS }

// scale multiplies every figure by f.
func (c CPUPerJob) scale(f float64) CPUPerJob {
	return CPUPerJob{ServerMS: c.ServerMS * f, PostgresMS: c.PostgresMS * f, LoadgenMS: c.LoadgenMS * f}
}

func (c CPUPerJob) String() string {
	if c.ServerMS == 0 {
		return fmt.Sprintf("Postgres %.2f ms (+ client %.2f ms)", c.PostgresMS, c.LoadgenMS)
	}
	return fmt.Sprintf("server %.2f + Postgres %.2f ms (+ client %.2f ms)", c.ServerMS, c.PostgresMS, c.LoadgenMS)
}

// cpuNow reads the CPU time of the server process (0 when srv is nil), of
// every process of the Postgres cluster (the postmaster, its children, and
// its children that already exited), and of this process.
func (e *env) cpuNow(srv *Server) cpuTimes {
	var t cpuTimes
	if srv != nil {
		t.Server, _ = procCPU(srv.PID(), false)
	}
	t.Postgres = clusterCPU(e.pg.Cluster.Dir())
	t.Loadgen, _ = procCPU(os.Getpid(), false)
	return t
}

// per returns the CPU per job used between a and b.
func (b cpuTimes) per(a cpuTimes, jobs int) CPUPerJob {
	if jobs <= 0 {
		return CPUPerJob{}
	}
	f := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) / float64(jobs) }
	return CPUPerJob{ServerMS: f(b.Server - a.Server), PostgresMS: f(b.Postgres - a.Postgres), LoadgenMS: f(b.Loadgen - a.Loadgen)}
}

// procStat returns the fields of /proc/pid/stat after the command name
// (field 3 onwards).
func procStat(pid int) ([]string, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return nil, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	return strings.Fields(s[i+1:]), nil
}

// procCPU is a process's user + system time, plus that of its exited
// children when children is set.
func procCPU(pid int, children bool) (time.Duration, error) {
	f, err := procStat(pid)
	if err != nil {
		return 0, err
	}
	// f[0] is field 3 (state): utime is field 14, stime 15, cutime 16, cstime 17.
	idx := []int{14, 15}
	if children {
		idx = append(idx, 16, 17)
	}
	var ticks int64
	for _, n := range idx {
		if len(f) <= n-3 {
			return 0, fmt.Errorf("/proc/%d/stat: short", pid)
		}
		v, err := strconv.ParseInt(f[n-3], 10, 64)
		if err != nil {
			return 0, err
		}
		ticks += v
	}
	return time.Duration(ticks) * clockTick, nil
}

// clusterCPU sums the CPU time of the postmaster of the cluster in dataDir,
// its exited children and its live children.
func clusterCPU(dataDir string) time.Duration {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return 0
	}
	pm, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil {
		return 0
	}
	total, _ := procCPU(pm, true)
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f, err := procStat(pid)
		if err != nil || len(f) < 2 || f[1] != strconv.Itoa(pm) {
			continue
		}
		if d, err := procCPU(pid, false); err == nil {
			total += d
		}
	}
	return total
}

// FsyncProbe is how long the disk under a directory took to make a 4 KiB
// write durable (write + fsync), sampled while a run went on: every durable
// commit waits for one such flush, Postgres's and Redis's with appendfsync
// always alike, so a slow or stalling disk shows here.
type FsyncProbe struct {
	N     int     `json:"n"`
	P50MS float64 `json:"p50_ms"`
	P99MS float64 `json:"p99_ms"`
	MaxMS float64 `json:"max_ms"`
}

// fsyncProber writes and fsyncs a 4 KiB block in a file under dir every
// interval until stopped.
type fsyncProber struct {
	stop chan struct{}
	done chan struct{}
	rec  Recorder
	err  error
}

func probeFsync(dir string, every time.Duration) *fsyncProber {
	p := &fsyncProber{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		f, err := os.CreateTemp(dir, "fsync-probe-")
		if err != nil {
			p.err = err
			return
		}
		defer func() {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}()
		buf := make([]byte, 4096)
		for i := 0; ; i++ {
			buf[0] = byte(i)
			t0 := time.Now()
			if _, err := f.WriteAt(buf, 0); err != nil {
				p.err = err
				return
			}
			if err := f.Sync(); err != nil {
				p.err = err
				return
			}
			p.rec.Add(time.Since(t0))
			select {
			case <-p.stop:
				return
			case <-time.After(every):
			}
		}
	}()
	return p
}

func (p *fsyncProber) finish() (FsyncProbe, error) {
	close(p.stop)
	<-p.done
	s := p.rec.Summary()
	return FsyncProbe{N: s.N, P50MS: s.P50, P99MS: s.P99, MaxMS: s.Max}, p.err
}
