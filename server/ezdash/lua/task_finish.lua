-- The agent reports the outcome of the attempt it holds.  Only the holder of the
-- current attempt can finish it: a late report from an agent whose task was
-- reclaimed is answered 'stale' and changes nothing, so the record is finished once.
-- KEYS[1] task hash.  ARGV: base, id, agent, attempt, outcome (succeeded|failed),
-- result_json, error_type, error_message, retryable (1|0), backoff_ms, maxlen[, with_doc].
-- Returns {'ok', status} (with_doc '1': then now_ms and the task hash as field, value
-- pairs, which the gateway answers with), {'stale', status} or {'gone'}.
local tkey = KEYS[1]
local id, agent, attempt, outcome = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local result, etype, emsg, retryable, backoff, maxlen = ARGV[6], ARGV[7], ARGV[8], ARGV[9], tonumber(ARGV[10]), ARGV[11]
local function finished(status)
  local out = {'ok', status}
  if ARGV[12] == '1' then
    table.insert(out, tostring(now))
    for _, v in ipairs(redis.call('HGETALL', tkey)) do table.insert(out, v) end
  end
  return out
end
local f = redis.call('HMGET', tkey, 'status', 'agent_id', 'attempts', 'entry', 'limit')
if not f[1] then return {'gone'} end
local stream, queue = stream_of(tkey)
if f[1] ~= 'running' or f[2] ~= agent or f[3] ~= attempt then
  if f[1] == 'cancelled' and f[2] == agent and f[3] == attempt then
    forget_entry(stream, f[4])  -- cancelled while running: release the delivery
    redis.call('HSET', tkey, 'entry', '')
  end
  return {'stale', f[1]}
end
forget_entry(stream, f[4])
redis.call('HSET', tkey, 'entry', '')
redis.call('ZREM', k('q', queue, 'running'), id)
local minute = math.floor(now / 60000)
if outcome == 'succeeded' then
  close_attempt(id, 'succeeded', nil)
  redis.call('HSET', tkey, 'result', result, 'error', '')
  set_status(id, tkey, 'running', 'succeeded')
  bump(k('q', queue, 'done', minute), 900)
  bump(k('agent', agent, 'succeeded', minute), 7200)
  task_event(maxlen, tkey)
  return finished('succeeded')
end
local err = {type = etype, message = emsg}
local errjson = cjson.encode(err)
close_attempt(id, 'failed', err)
redis.call('HSET', tkey, 'error', errjson)
bump(k('agent', agent, 'failed', minute), 7200)
local ekey = k('agent', agent, 'errors')
redis.call('LPUSH', ekey, cjson.encode({ts = now, task_id = id, type = etype, message = emsg}))
redis.call('LTRIM', ekey, 0, 9)
local status
if retryable == '1' and tonumber(f[3]) < tonumber(f[5]) then
  status = 'queued'
  set_status(id, tkey, 'running', 'queued')
  if backoff > 0 then
    redis.call('HSET', tkey, 'agent_id', '')
    redis.call('ZADD', k('tasks', 'delayed'), now + backoff, id)
    redis.call('ZADD', k('q', queue, 'waiting'), now, id)
  else
    enqueue(id, tkey)
  end
elseif retryable == '1' then
  status = 'dead'
  set_status(id, tkey, 'running', 'dead')
  bump(k('q', queue, 'done', minute), 900)
else
  status = 'failed'
  set_status(id, tkey, 'running', 'failed')
  bump(k('q', queue, 'done', minute), 900)
end
task_event(maxlen, tkey)
return finished(status)
