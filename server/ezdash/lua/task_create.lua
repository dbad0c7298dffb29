-- KEYS[1] task hash.  ARGV: base, id, type, queue, priority, max_attempts, payload,
-- maxlen, idem_key ('' for none), idem_ttl_ms, fingerprint.
-- Returns {'ok', id, created_ms} or {'duplicate', stored} when the idempotency key was seen.
local tkey = KEYS[1]
local id, ttype, queue, prio, maxatt, payload = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local maxlen, idem, idem_ttl, fp = ARGV[8], ARGV[9], ARGV[10], ARGV[11]
if idem ~= '' then
  local seen = redis.call('GET', idem)
  if seen then return {'duplicate', seen} end
end
redis.call('HSET', tkey, 'id', id, 'type', ttype, 'queue', queue, 'priority', prio,
  'payload', payload, 'attempts', 0, 'max_attempts', maxatt, 'limit', maxatt,
  'created_at', now, 'started_at', '', 'finished_at', '', 'error', '', 'result', '',
  'agent_id', '', 'status', 'queued')
redis.call('ZADD', k('tasks'), now, id)
redis.call('ZADD', k('tasks', 's', 'queued'), now, id)
redis.call('ZADD', k('tasks', 'q', queue), now, id)
enqueue(id, tkey)
bump(k('q', queue, 'in', math.floor(now / 60000)), 900)
task_event(maxlen, tkey)
if idem ~= '' then redis.call('SET', idem, fp .. '|' .. id, 'PX', idem_ttl) end
return {'ok', id, now}
