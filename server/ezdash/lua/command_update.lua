-- Move a command along pending -> acknowledged -> completed|failed, or to expired.
-- An agent acknowledges only a pending command before its deadline; a late
-- acknowledgement expires the command instead, and the agent must not act on it.
-- KEYS[1] command hash.  ARGV: base, id, agent ('' for the server), to, error, maxlen.
-- Returns {'ok', status} or {'refused', current status}.
local ckey = KEYS[1]
local id, agent, to, err, maxlen = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local f = redis.call('HMGET', ckey, 'status', 'agent_id', 'deadline', 'action')
if not f[1] then return {'refused', 'gone'} end
if agent ~= '' and f[2] ~= agent then return {'refused', f[1]} end
local from = f[1]
if to == 'acknowledged' or to == 'expired' then
  if from ~= 'pending' then return {'refused', from} end
  redis.call('ZREM', k('cmds', 'pending'), id)
  if to == 'acknowledged' and now > tonumber(f[3]) then to = 'expired' end
  if to == 'expired' then
    redis.call('HSET', ckey, 'status', 'expired', 'completed_at', now,
      'error', 'the agent did not acknowledge before the deadline')
  else
    redis.call('HSET', ckey, 'status', 'acknowledged', 'acknowledged_at', now)
    redis.call('ZADD', k('cmds', 'acked'), now, id)
  end
elseif to == 'completed' or to == 'failed' then
  if from ~= 'acknowledged' then return {'refused', from} end
  redis.call('HSET', ckey, 'status', to, 'completed_at', now, 'error', err)
  redis.call('ZREM', k('cmds', 'acked'), id)
else
  return redis.error_reply('unknown command status ' .. to)
end
emit(maxlen, 'command.updated', cjson.encode({id = id, agent_id = f[2], action = f[4], status = to, ts = now}))
if to == 'expired' and agent ~= '' then return {'refused', 'expired'} end
return {'ok', to}
