-- The alert-storm case: the same Alertmanager notification, over and over.
--
--   wrk -s bench/duplicate.lua URL -- TOKEN [DELAY_MS]
--
-- TOKEN is the bearer token ("-" for none). With DELAY_MS above zero each
-- connection waits a random 0..2*DELAY_MS (mean DELAY_MS) between requests,
-- which spreads the arrivals instead of sending them in lock-step; the
-- harness picks DELAY_MS to offer a chosen rate. Without it the body is
-- fixed, so wrk builds the request once and sends it as fast as it is
-- answered.

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[
{"version":"4","status":"firing","receiver":"bench",
"groupKey":"{}:{alertname=\"BenchStorm\"}","truncatedAlerts":0,
"groupLabels":{"alertname":"BenchStorm"},
"commonLabels":{"alertname":"BenchStorm","severity":"warning","job":"bench"},
"commonAnnotations":{"summary":"Benchmark alert storm"},
"externalURL":"http://alertmanager.bench.invalid:9093",
"alerts":[{"status":"firing",
"labels":{"alertname":"BenchStorm","severity":"warning","job":"bench",
"instance":"bench-0:9100"},
"annotations":{"summary":"Benchmark alert storm",
"description":"The same group, sent again and again, as during a storm."},
"startsAt":"2024-05-01T12:00:00Z","endsAt":"0001-01-01T00:00:00Z",
"generatorURL":"http://prometheus.bench.invalid:9090/graph?g0.expr=up+%3D%3D+0",
"fingerprint":"b3a5c0ffee000001"}]}
]]

local mean_delay = 0

function init(args)
   local token = args[1]
   if token and token ~= "-" and token ~= "" then
      wrk.headers["Authorization"] = "Bearer " .. token
   end
   mean_delay = tonumber(args[2] or "0") or 0
   math.randomseed(os.time())
   if mean_delay > 0 then
      -- only defined when pacing: wrk takes the hook's mere presence as a
      -- request to pace
      function delay()
         return math.random(0, 2 * mean_delay)
      end
   end
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
