-- Put a failed, dead or cancelled task back on its queue with a fresh budget of
-- max_attempts further attempts (history and the attempt count are kept).
-- KEYS[1] task hash.  ARGV: base, id, maxlen.
-- Returns {'ok', 'queued'}, {'conflict', status} or {'gone'}.
local tkey = KEYS[1]
local id, maxlen = ARGV[2], ARGV[3]
local f = redis.call('HMGET', tkey, 'status', 'attempts', 'max_attempts', 'entry')
if not f[1] then return {'gone'} end
if f[1] ~= 'failed' and f[1] ~= 'dead' and f[1] ~= 'cancelled' then return {'conflict', f[1]} end
local stream = stream_of(tkey)
forget_entry(stream, f[4])
redis.call('HSET', tkey, 'limit', tonumber(f[2]) + tonumber(f[3]), 'error', '', 'result', '',
  'finished_at', '', 'started_at', '')
set_status(id, tkey, f[1], 'queued')
enqueue(id, tkey)
task_event(maxlen, tkey)
return {'ok', 'queued'}
