-- Queue events atomically: each event's "queued" marker, then the Celery messages; an event
-- under an Idempotency-Key only if its key is free, claimed in the same call, so a key can
-- never name an event that was not queued.
-- ARGV[1] = marker TTL (s); ARGV[2] = deadline (Unix ms); ARGV[3] = number of messages m;
-- ARGV[4] = number of unkeyed markers n; ARGV[5] = idempotency TTL (s);
-- ARGV[6 .. 5+m] = messages; ARGV[6+m .. 5+m+n] = marker values;
-- then per keyed event: its message, its marker value, its key's record.
-- KEYS[1 .. m] = each message's queue list (kombu's Redis transport, priority 0);
-- KEYS[m+1 .. m+n] = marker keys; then per keyed event: its queue, marker key, idempotency key.
-- Returns -1 if late, else one answer per keyed event: 0 (queued, key claimed) or the record
-- the key already holds (not queued). Two keyed events of one call may share a key: the
-- first one owns it.
-- Past the deadline the API has already answered 503: a late script must change nothing.
local now = redis.call('TIME')
if tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) > tonumber(ARGV[2]) then
  return -1
end
local ttl, m, n, key_ttl = ARGV[1], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
for i = 1, n do
  redis.call('SET', KEYS[m + i], ARGV[5 + m + i], 'EX', ttl)
end
for j = 1, m do
  redis.call('LPUSH', KEYS[j], ARGV[5 + j])
end
local answers = {}
for i = 0, (#KEYS - m - n) / 3 - 1 do
  local k, a = m + n + 3 * i, 5 + m + n + 3 * i
  local first = redis.call('GET', KEYS[k + 3])
  if first then
    answers[i + 1] = first
  else
    redis.call('SET', KEYS[k + 3], ARGV[a + 3], 'EX', key_ttl)
    redis.call('SET', KEYS[k + 2], ARGV[a + 2], 'EX', ttl)
    redis.call('LPUSH', KEYS[k + 1], ARGV[a + 1])
    answers[i + 1] = 0
  end
end
return answers
