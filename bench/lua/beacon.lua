-- Reference (b4): the beacon, as sendBeacon sends it (text/plain, from an allowed origin), with
-- the same event as post.lua's.
local key = os.getenv("BENCH_SITE_KEY")

wrk.method = "POST"
wrk.path = "/beacon?k=" .. key
wrk.body = '{"type":"page_view","visitorId":"v-ref-1","source":"bench-ref",'
  .. '"pageUrl":"https://example.com/listing/1","pageTitle":"3 bed, 2 bath in Springfield"}'
wrk.headers["Content-Type"] = "text/plain;charset=UTF-8"
wrk.headers["Origin"] = "https://bench.example"
wrk.headers["User-Agent"] = "Mozilla/5.0 (bench)"

function done(summary, latency, requests)
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"status_errors":%d,"connect_errors":%d,'
    .. '"read_errors":%d,"write_errors":%d,"timeouts":%d,'
    .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
