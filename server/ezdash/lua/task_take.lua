-- An agent takes the next task from its queues and starts it, in one step, so
-- no task is ever delivered without being marked running (or skipped as stale).
-- KEYS[1] events stream.  ARGV: base, agent_id, maxlen, queue...
-- Returns {'task', id, type, queue, priority, payload, attempts, max_attempts, entry,
-- now_ms, field1, value1, ...} (the task hash as it now is: the gateway answers from it
-- without reading it again; other callers stop at entry),
-- {'again'} when it skipped its budget of stale entries (call again at once), or
-- {'empty', stream1, last_id1, stream2, last_id2, ...} for a blocking XREAD.
local agent, maxlen = ARGV[2], ARGV[3]
local candidates = {}
for i = 4, #ARGV do
  local queue = ARGV[i]
  for _, lv in ipairs(redis.call('SMEMBERS', k('q', queue, 'levels'))) do
    table.insert(candidates, {tonumber(lv), i, k('q', queue, 'p' .. lv)})
  end
end
table.sort(candidates, function(a, b)
  if a[1] ~= b[1] then return a[1] > b[1] end
  return a[2] < b[2]
end)
local budget = 200  -- stale entries skipped per call, so one call never runs long
for _, c in ipairs(candidates) do
  local stream = c[3]
  while budget > 0 do
    local res = redis.call('XREADGROUP', 'GROUP', GROUP, agent, 'COUNT', 1, 'STREAMS', stream, '>')
    if not res then break end
    local e = res[1][2][1]
    local eid, fields = e[1], e[2]
    local id = fields[2]
    local tkey = k('task', id)
    local f = redis.call('HMGET', tkey, 'status', 'entry')
    if f[1] == 'queued' and f[2] == eid then
      local attempts = redis.call('HINCRBY', tkey, 'attempts', 1)
      set_status(id, tkey, 'queued', 'running')
      redis.call('HSET', tkey, 'agent_id', agent, 'started_at', now, 'finished_at', '')
      local q = redis.call('HGET', tkey, 'queue')
      redis.call('ZREM', k('q', q, 'waiting'), id)
      redis.call('ZADD', k('q', q, 'running'), now, id)
      redis.call('RPUSH', k('task', id, 'hist'), cjson.encode(
        {attempt = attempts, agent_id = agent, started_at = now, status = 'running'}))
      task_event(maxlen, tkey)
      local t = redis.call('HMGET', tkey, 'type', 'queue', 'priority', 'payload', 'attempts', 'max_attempts')
      local out = {'task', id, t[1], t[2], t[3], t[4], t[5], t[6], eid, tostring(now)}
      for _, v in ipairs(redis.call('HGETALL', tkey)) do table.insert(out, v) end
      return out
    end
    forget_entry(stream, eid)
    budget = budget - 1  -- only skipped stale entries use up the budget
  end
end
if budget <= 0 then return {'again'} end
local out = {'empty'}
for i = 4, #ARGV do
  for lv = 0, 9 do
    local stream = k('q', ARGV[i], 'p' .. lv)
    local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
    table.insert(out, stream)
    if last[1] then table.insert(out, last[1][1]) else table.insert(out, '0-0') end
  end
end
return out
