-- Retention: delete finished commands created before a cutoff.
-- KEYS[1] the commands index.  ARGV: base, cutoff_ms, limit.  Returns how many went.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local gone = 0
for _, id in ipairs(ids) do
  local ckey = k('cmd', id)
  local f = redis.call('HMGET', ckey, 'status', 'agent_id')
  if f[1] ~= 'pending' and f[1] ~= 'acknowledged' then
    redis.call('ZREM', KEYS[1], id)
    if f[2] then redis.call('ZREM', k('cmds', 'a', f[2]), id) end
    redis.call('DEL', ckey)
    gone = gone + 1
  end
end
return gone
