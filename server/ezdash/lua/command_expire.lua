-- Expire pending commands whose acknowledgement deadline has passed.
-- KEYS[1] the pending set.  ARGV: base, limit, maxlen.  Returns how many expired.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local ckey = k('cmd', id)
  local f = redis.call('HMGET', ckey, 'status', 'agent_id', 'action')
  if f[1] == 'pending' then
    redis.call('HSET', ckey, 'status', 'expired', 'completed_at', now,
      'error', 'the agent did not acknowledge before the deadline')
    emit(ARGV[3], 'command.updated', cjson.encode({id = id, agent_id = f[2], action = f[3], status = 'expired', ts = now}))
  end
end
return #ids
