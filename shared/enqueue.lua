-- Queue events atomically: each event's "queued" marker, then the Celery messages.
-- KEYS[1] = the queue's list (kombu's Redis transport, priority 0); KEYS[2..] = marker keys
-- ARGV[1] = marker TTL (s); ARGV[2] = deadline (Unix ms); ARGV[3] = number of messages m;
-- ARGV[4 .. 3+m] = messages; ARGV[4+m ..] = marker values, one per marker key.
-- Past the deadline the API has already answered 503: a late script must change nothing.
local now = redis.call('TIME')
if tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) > tonumber(ARGV[2]) then
  return -1
end
local ttl = ARGV[1]
local m = tonumber(ARGV[3])
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], ARGV[3 + m + i - 1], 'EX', ttl)
end
for j = 1, m do
  redis.call('LPUSH', KEYS[1], ARGV[3 + j])
end
return m
