-- Queue events atomically: each event's "queued" marker, then the Celery messages.
-- KEYS[1] = the queue's list (kombu's Redis transport, priority 0); KEYS[2..] = marker keys
-- ARGV[1] = marker TTL (s); ARGV[2] = number of messages m; ARGV[3 .. 2+m] = messages;
-- ARGV[3+m ..] = marker values, one per marker key.
local ttl = ARGV[1]
local m = tonumber(ARGV[2])
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], ARGV[2 + m + i - 1], 'EX', ttl)
end
for j = 1, m do
  redis.call('LPUSH', KEYS[1], ARGV[2 + j])
end
return m
