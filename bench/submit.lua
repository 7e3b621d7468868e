-- wrk script of the versus-seed and backlog scenarios (bench/wrk.go):
-- every request is POST /v1/jobs with one generate job, for the users whose
-- tokens are in the file named by the first script argument, one per line,
-- taken in turn; each thread starts at its own offset. A second argument,
-- when above 0, paces the load: the thread's requests go out at most one
-- per that many milliseconds, on a schedule of the monotonic clock (read
-- through LuaJIT's ffi), so the pace does not depend on the answers'
-- latency while connections are free (bench/wrk.go WrkLoad.Rate).
-- done() prints the summary as one line: WRK_RESULT {json}, latencies in
-- microseconds.
local body = '{"operation":"generate","params":{"prompt":"a gold ring on marble, studio light"}}'
local tokens = {}
local i = 0
local threads = 0

function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

function init(args)
  for line in io.lines(args[1]) do
    if #line > 0 then tokens[#tokens + 1] = line end
  end
  i = ((tid or 0) * 37) % #tokens
  local every = tonumber(args[2] or "0") or 0
  if every > 0 then
    -- wrk checks for delay() after init: unpaced runs pay nothing for it.
    -- Each answered connection takes the thread's next free send time;
    -- a thread behind its schedule sends at once and does not catch up.
    local ffi = require("ffi")
    ffi.cdef[[
      typedef struct { long tv_sec; long tv_nsec; } aq_timespec;
      int clock_gettime(int clk, aq_timespec *tp);
    ]]
    local ts = ffi.new("aq_timespec")
    local function now()
      ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
      return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
    end
    local nextAt = now()
    delay = function()
      local t = now()
      local at = math.max(nextAt, t)
      nextAt = at + every
      return math.floor(at - t + 0.5)
    end
  end
end

function request()
  i = i % #tokens + 1
  return wrk.format("POST", "/v1/jobs", {
    ["Authorization"] = "Bearer " .. tokens[i],
    ["Content-Type"] = "application/json",
  }, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,' ..
    '"status_errors":%d,"timeouts":%d,"mean_us":%.1f,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
