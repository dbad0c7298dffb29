-- Queue a control command for an agent.  KEYS[1] command hash.
-- ARGV: base, id, agent, action (restart|stop), force (1|0), requested_by, ttl_ms,
-- maxlen, idem_key ('' for none), idem_ttl_ms, fingerprint, then the fields to answer with.
-- Returns {'ok', id, field values...}, {'duplicate', stored}, {'noagent'} or
-- {'conflict', status}.
local ckey = KEYS[1]
local id, agent, action, force, by, ttl = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7])
local maxlen, idem, idem_ttl, fp = ARGV[8], ARGV[9], ARGV[10], ARGV[11]
if idem ~= '' then
  local seen = redis.call('GET', idem)
  if seen then return {'duplicate', seen} end
end
local doc = redis.call('HGET', k('agents'), agent)
if not doc then return {'noagent'} end
local status = cjson.decode(doc).status
if status == 'stopped' then return {'conflict', status} end
redis.call('HSET', ckey, 'id', id, 'agent_id', agent, 'action', action, 'force', force,
  'status', 'pending', 'created_at', now, 'deadline', now + ttl, 'requested_by', by,
  'acknowledged_at', '', 'completed_at', '', 'error', '')
redis.call('ZADD', k('cmds'), now, id)
redis.call('ZADD', k('cmds', 'a', agent), now, id)
redis.call('ZADD', k('cmds', 'pending'), now + ttl, id)
redis.call('XADD', k('agent', agent, 'cmd'), 'MAXLEN', '~', 1000, '*', 'command', id,
  'action', action, 'force', force)
emit(maxlen, 'command.updated', cjson.encode({id = id, agent_id = agent, action = action, status = 'pending', ts = now}))
if idem ~= '' then redis.call('SET', idem, fp .. '|' .. id, 'PX', idem_ttl) end
-- the command as created, read in the same step (its agent may take it up at once)
local created = redis.call('HMGET', ckey, unpack(ARGV, 12))
table.insert(created, 1, id)
table.insert(created, 1, 'ok')
return created
