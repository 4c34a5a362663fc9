-- Take one message for a consumer and record it as unacked in the same atomic call, as kombu's
-- QoS.append would a round trip later: in `unacked` (tag -> [message, exchange, routing key])
-- and `unacked_index` (tag -> time taken), where kombu's ack, restore and visibility timeout
-- find it. The message itself is stored as it was queued, never re-encoded.
-- KEYS[1 .. n] = the queue lists in the order to take from (as kombu's BRPOP lists them);
-- KEYS[n+1] = unacked; KEYS[n+2] = unacked_index. ARGV[1] = now (Unix seconds, the client's
-- clock, as kombu's restore compares it with the client's).
-- Returns nil if every list is empty, else {list, message, 1 if recorded else 0}: a message
-- without a delivery tag cannot be recorded, and kombu records it after delivery as before.
local n = #KEYS - 2
local unacked, index = KEYS[n + 1], KEYS[n + 2]
for i = 1, n do
  local item = redis.call('RPOP', KEYS[i])
  if item then
    -- A script does not roll back: nothing after the RPOP may raise, or the message is lost.
    local ok, message = pcall(cjson.decode, item)
    local properties = ok and type(message) == 'table' and message.properties
    local tag = type(properties) == 'table' and properties.delivery_tag
    if type(tag) ~= 'string' then
      return {KEYS[i], item, 0}
    end
    local info = type(properties.delivery_info) == 'table' and properties.delivery_info or {}
    local exchange = type(info.exchange) == 'string' and info.exchange or ''
    local routing_key = type(info.routing_key) == 'string' and info.routing_key or ''
    redis.call('HSET', unacked, tag,
      '[' .. item .. ',' .. cjson.encode(exchange) .. ',' .. cjson.encode(routing_key) .. ']')
    redis.call('ZADD', index, ARGV[1], tag)
    return {KEYS[i], item, 1}
  end
end
return nil
