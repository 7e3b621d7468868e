-- wrk script of the versus-seed and backlog scenarios (bench/wrk.go):
-- every request is POST /v1/jobs with one generate job, for the users whose
-- tokens are in the file named by the first script argument, one per line,
-- taken in turn; each thread starts at its own offset. done() prints the
-- summary as one line: WRK_RESULT {json}, latencies in microseconds.
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
