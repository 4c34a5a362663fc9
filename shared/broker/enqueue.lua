-- Queue events atomically: each event's "queued" marker, then the Celery messages.
-- ARGV[1] = marker TTL (s); ARGV[2] = deadline (Unix ms); ARGV[3] = number of messages m;
-- ARGV[4 .. 3+m] = messages; ARGV[4+m ..] = marker values, one per marker key.
-- KEYS[1 .. m] = each message's queue list (kombu's Redis transport, priority 0);
-- KEYS[m+1 ..] = marker keys.
-- Past the deadline the API has already answered 503: a late script must change nothing.
local now = redis.call('TIME')
if tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) > tonumber(ARGV[2]) then
  return -1
end
local ttl = ARGV[1]
local m = tonumber(ARGV[3])
for i = m + 1, #KEYS do
  redis.call('SET', KEYS[i], ARGV[3 + i], 'EX', ttl)
end
for j = 1, m do
  redis.call('LPUSH', KEYS[j], ARGV[3 + j])
end
return m
