-- References (a) and (b): one fixed page view per request, the same bytes for both servers.
-- The token comes from BENCH_TOKEN; the bare app ignores it, so both parse the same request.
local token = os.getenv("BENCH_TOKEN")

-- With BENCH_BATCH=n (reference b2), each request is a batch of n copies of that page view.
local batch = tonumber(os.getenv("BENCH_BATCH") or "0")
local event = '{"type":"page_view","visitorId":"v-ref-1","source":"bench-ref",'
  .. '"pageUrl":"https://example.com/listing/1","pageTitle":"3 bed, 2 bath in Springfield"}'

wrk.method = "POST"
if batch > 0 then
  local events = {}
  for i = 1, batch do events[i] = event end
  wrk.path = "/api/partner/events/batch"
  wrk.body = '{"events":[' .. table.concat(events, ",") .. ']}'
else
  wrk.path = "/api/partner/events"
  wrk.body = event
end
wrk.headers["Content-Type"] = "application/json"
if token and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end

-- No request()/response(): wrk then sends a prebuilt request and stays out of Lua per request.
function done(summary, latency, requests)
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"status_errors":%d,"connect_errors":%d,'
    .. '"read_errors":%d,"write_errors":%d,"timeouts":%d,'
    .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
