-- Publish a batch's outcomes in one call: per outcome the same SET, XADD and PUBLISH the
-- worker would otherwise send as 2-3 commands each.
-- KEYS[1] = the outcome stream; KEYS[2..] = one event key per outcome.
-- ARGV[1] = outcome TTL (s); ARGV[2] = stream MAXLEN (approximate); ARGV[3] = the channel;
-- then four per outcome: event id, tenant id, outcome JSON, 1 if a caller waits (else 0).
local ttl, maxlen, channel = ARGV[1], ARGV[2], ARGV[3]
for i = 2, #KEYS do
  local a = 4 * i - 4
  local id, data = ARGV[a], ARGV[a + 2]
  redis.call('SET', KEYS[i], data, 'EX', ttl)
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*',
    'id', id, 'tenantId', ARGV[a + 1], 'outcome', data)
  if ARGV[a + 3] == '1' then
    redis.call('PUBLISH', channel, '{"id":"' .. id .. '","outcome":' .. data .. '}')
  end
end
return #KEYS - 1
