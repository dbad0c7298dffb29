-- Cancel a queued or running task.  A running task's delivery stays with its agent,
-- which notices at its next lease renewal (or when it reports) and lets it go.
-- KEYS[1] task hash.  ARGV: base, id, maxlen.
-- Returns {'ok', 'cancelled'}, {'conflict', status} or {'gone'}.
local tkey = KEYS[1]
local id, maxlen = ARGV[2], ARGV[3]
local f = redis.call('HMGET', tkey, 'status', 'queue')
if not f[1] then return {'gone'} end
if f[1] ~= 'queued' and f[1] ~= 'running' then return {'conflict', f[1]} end
local queue = f[2]
redis.call('ZREM', k('q', queue, 'waiting'), id)
redis.call('ZREM', k('q', queue, 'running'), id)
redis.call('ZREM', k('tasks', 'delayed'), id)
local err = {type = 'Cancelled', message = 'cancelled through the API'}
if f[1] == 'running' then close_attempt(id, 'cancelled', err) end
redis.call('HSET', tkey, 'error', cjson.encode(err))
set_status(id, tkey, f[1], 'cancelled')
task_event(maxlen, tkey)
return {'ok', 'cancelled'}
