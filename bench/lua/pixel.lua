-- Reference (b3): the pixel, one page view per GET, the same event as post.lua's.
local key = os.getenv("BENCH_SITE_KEY")

wrk.method = "GET"
wrk.path = "/pixel.gif?k=" .. key .. "&v=v-ref-1&src=bench-ref"
  .. "&u=https%3A%2F%2Fexample.com%2Flisting%2F1&ti=3%20bed%2C%202%20bath%20in%20Springfield"
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
