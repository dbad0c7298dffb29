-- Retention: forget agents whose last heartbeat is older than a cutoff (stopped or
-- long dead), with their error list, command stream and commands' index.
-- KEYS[1] heartbeat set.  ARGV: base, cutoff_ms, limit.  Returns how many went.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', k('agents', 'ids'), id)
  redis.call('HDEL', k('agents'), id)
  redis.call('DEL', k('agent', id, 'errors'), k('agent', id, 'cmd'), k('cmds', 'a', id))
end
return #ids
