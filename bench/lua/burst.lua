-- End to end: BENCH_TOTAL page views split over the threads, each with its own visitorId,
-- optionally paced to BENCH_RATE req/s in all (0 = as fast as the server answers).
-- wrk only knows durations, so a thread that got all its answers stops itself and says so
-- on stderr; the bench then ends wrk with SIGINT instead of waiting for -d.
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_usec; } bench_timeval;
int gettimeofday(bench_timeval *tv, void *tz);
]]
local tv = ffi.new("bench_timeval")
local function now_ms()
  ffi.C.gettimeofday(tv, nil)
  return tonumber(tv.tv_sec) * 1000 + tonumber(tv.tv_usec) / 1000
end

local total = tonumber(os.getenv("BENCH_TOTAL") or "0")
local rate = tonumber(os.getenv("BENCH_RATE") or "0")
local nthreads = tonumber(os.getenv("BENCH_THREADS") or "1")
local source = os.getenv("BENCH_SOURCE") or "bench-burst"
local run = os.getenv("BENCH_RUN") or "r"
local token = os.getenv("BENCH_TOKEN")

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  quota = math.floor(total / nthreads)
  if tid < total % nthreads then quota = quota + 1 end
  claimed, sent, seq, answered, accepted = 0, 0, 0, 0, 0
  first_ms, last_ms = 0, 0
  interval = 0
  if rate > 0 then interval = nthreads * 1000 / rate end
  next_at = now_ms()
  headers = { ["Content-Type"] = "application/json" }
  if token and token ~= "" then headers["Authorization"] = "Bearer " .. token end
  prefix = '{"type":"page_view","source":"' .. source .. '","visitorId":"v-' .. run .. '-'
    .. tid .. '-'
end

-- wrk calls delay() before every request, so the quota is claimed here: exactly `quota`
-- requests leave this thread, and the pacing is a fixed schedule (open loop). Not in
-- request(): wrk also calls that once at start-up to check the script.
function delay()
  claimed = claimed + 1
  if claimed > quota then return 3600000 end
  sent = claimed
  if first_ms == 0 then first_ms = now_ms() end
  if interval == 0 then return 0 end
  local slot = next_at
  next_at = next_at + interval
  local wait = slot - now_ms()
  if wait < 0 then return 0 end
  return math.floor(wait)
end

function request()
  seq = seq + 1
  local body = prefix .. seq .. '","pageUrl":"https://example.com/listing/' .. (seq % 5000)
    .. '","pageTitle":"Listing ' .. (seq % 5000) .. '"}'
  return wrk.format("POST", "/api/partner/events", headers, body)
end

function response(status, headers, body)
  answered = answered + 1
  if status == 202 then accepted = accepted + 1 end
  if answered >= quota then
    last_ms = now_ms()
    io.stderr:write("BENCH_THREAD_DONE\n")
    io.stderr:flush()
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local sum_sent, sum_answered, sum_accepted = 0, 0, 0
  local first, last = math.huge, 0
  for _, t in ipairs(threads) do
    sum_sent = sum_sent + t:get("sent")
    sum_answered = sum_answered + t:get("answered")
    sum_accepted = sum_accepted + t:get("accepted")
    local f, l = t:get("first_ms"), t:get("last_ms")
    if f > 0 and f < first then first = f end
    if l > last then last = l end
  end
  if first == math.huge then first = 0 end
  io.write(string.format(
    'BENCH_JSON {"sent":%d,"answered":%d,"accepted":%d,"first_ms":%.3f,"last_ms":%.3f,'
    .. '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d,'
    .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    sum_sent, sum_answered, sum_accepted, first, last,
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
