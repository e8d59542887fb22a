-- The new-alert path: every request is a group the relay has never seen,
-- so every one is decided "queued" and enqueues a ticket.
--
--   wrk -s bench/new_alert.lua URL -- TOKEN RUN_ID
--
-- TOKEN is the bearer token ("-" for none); RUN_ID keeps the group keys of
-- one run apart from any other run's. Each wrk thread numbers its own
-- requests, so groupKey, alertname and fingerprint are unique per request.

local token = nil
local run_id = "run"
-- set per thread by setup() below, so a global and not a local
thread_id = 0
local counter = 0
local headers = {["Content-Type"] = "application/json"}

local template = [[
{"version":"4","status":"firing","receiver":"bench",
"groupKey":"{}:{alertname=\"%s\"}","truncatedAlerts":0,
"groupLabels":{"alertname":"%s"},
"commonLabels":{"alertname":"%s","severity":"warning","job":"bench"},
"commonAnnotations":{"summary":"Benchmark new alert"},
"externalURL":"http://alertmanager.bench.invalid:9093",
"alerts":[{"status":"firing",
"labels":{"alertname":"%s","severity":"warning","job":"bench",
"instance":"bench-0:9100"},
"annotations":{"summary":"Benchmark new alert",
"description":"A group seen for the first time: it opens a ticket."},
"startsAt":"2024-05-01T12:00:00Z","endsAt":"0001-01-01T00:00:00Z",
"generatorURL":"http://prometheus.bench.invalid:9090/graph?g0.expr=up+%%3D%%3D+0",
"fingerprint":"%08x%08x"}]}
]]

-- setup() runs in the main interpreter once per thread: give each its number
local threads_made = 0
function setup(thread)
   threads_made = threads_made + 1
   thread:set("thread_id", threads_made)
end

function init(args)
   if args[1] and args[1] ~= "-" and args[1] ~= "" then
      headers["Authorization"] = "Bearer " .. args[1]
   end
   run_id = args[2] or run_id
end

function request()
   counter = counter + 1
   local name = string.format("BenchNew-%s-%d-%d", run_id, thread_id, counter)
   local body = string.format(template, name, name, name, name, thread_id, counter)
   return wrk.format("POST", nil, headers, body)
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"connect_errors":%d,"read_errors":%d,"write_errors":%d,' ..
      '"status_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,' ..
      '"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%.1f}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency:percentile(99.9),
      latency.max, latency.mean))
end
