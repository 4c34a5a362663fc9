-- Queue one event under an Idempotency-Key, atomically: the key is claimed only together
-- with the enqueue, so it can never name an event that was not queued.
-- KEYS[1] = queue list, KEYS[2] = marker key, KEYS[3] = idempotency key
-- ARGV[1] = marker TTL (s), ARGV[2] = deadline (Unix ms), ARGV[3] = message,
-- ARGV[4] = marker value, ARGV[5] = event id, ARGV[6] = idempotency TTL (s)
-- Returns the id of the event that owns the key (this one if it was queued), or -1 if late.
local now = redis.call('TIME')
if tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) > tonumber(ARGV[2]) then
  return -1
end
local first = redis.call('GET', KEYS[3])
if first then
  return first
end
redis.call('SET', KEYS[3], ARGV[5], 'EX', ARGV[6])
redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[1])
redis.call('LPUSH', KEYS[1], ARGV[3])
return ARGV[5]
