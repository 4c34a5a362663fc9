-- Publish a batch's outcomes in one call, once they are committed. Per outcome: drop the
-- "queued" marker (or replace it by a short-lived copy of the outcome when one is kept), append
-- a notice of ids and statuses to the stream, and publish the same notice when a caller may
-- wait for it. The outcome itself stays in PostgreSQL: Redis holds in-flight state only.
-- KEYS[1] = the outcome stream; KEYS[2..] = one event key per outcome.
-- ARGV[1] = stream MAXLEN (approximate); ARGV[2] = the channel; then seven per outcome:
-- event id, tenant id, status, HTTP status, TTL of a copy (0: keep none), the copy's JSON
-- (empty when none is kept), 1 if a caller may wait for it (else 0).
local maxlen, channel = ARGV[1], ARGV[2]
for i = 2, #KEYS do
  local a = 7 * i - 11
  local id, tenant, status, http, ttl = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  if ttl == '0' then
    redis.call('DEL', KEYS[i])
  else
    redis.call('SET', KEYS[i], ARGV[a + 5], 'EX', ttl)
  end
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*',
    'id', id, 'tenantId', tenant, 'status', status, 'httpStatus', http)
  if ARGV[a + 6] == '1' then
    redis.call('PUBLISH', channel, '{"id":"' .. id .. '","tenantId":"' .. tenant ..
      '","status":"' .. status .. '","httpStatus":' .. http .. '}')
  end
end
return #KEYS - 1
