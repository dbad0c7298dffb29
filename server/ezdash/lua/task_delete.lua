-- Retention: delete finished tasks that finished before a cutoff.
-- KEYS[1] the finished set.  ARGV: base, cutoff_ms, limit.  Returns how many went.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  local tkey = k('task', id)
  local f = redis.call('HMGET', tkey, 'status', 'queue')
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', k('tasks'), id)
  if f[1] then redis.call('ZREM', k('tasks', 's', f[1]), id) end
  if f[2] then redis.call('ZREM', k('tasks', 'q', f[2]), id) end
  redis.call('DEL', tkey, k('task', id, 'hist'))
end
return #ids
