-- Give a task's delivery back to its queue.  Used when an agent is stopped with
-- force ('abandon': does not use up an attempt) and when a delivery held by a dead
-- agent is reclaimed ('lost': counts as an attempt, so a task that kills its agents
-- ends 'dead' instead of looping forever).
-- KEYS[1] task hash.  ARGV: base, id, mode (abandon|lost), agent ('' = any), attempt
-- ('' = any), entry (the delivery being resolved), claimer ('' = no check), maxlen.
-- With a claimer, the delivery must still be owned by that consumer: an agent that
-- extended its lease in the meantime wins and nothing changes.
local tkey = KEYS[1]
local id, mode, agent, attempt, entry, claimer, maxlen = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local f = redis.call('HMGET', tkey, 'status', 'agent_id', 'attempts', 'entry', 'limit', 'queue')
if not f[1] then return {'gone'} end
local stream, queue = stream_of(tkey)
if claimer ~= '' then
  local p = redis.call('XPENDING', stream, GROUP, entry, entry, 1)
  if not p[1] or p[1][2] ~= claimer then return {'moved'} end
end
if f[4] ~= entry then
  forget_entry(stream, entry)  -- an old delivery of a task that has moved on
  return {'stale', f[1]}
end
if f[1] == 'queued' then
  -- a delivery the task_take script skipped without acknowledging (it died
  -- mid-script is impossible, but a client may XREADGROUP by hand): deliver again
  forget_entry(stream, entry)
  enqueue(id, tkey)
  return {'requeued', 'queued'}
end
if f[1] ~= 'running' then
  forget_entry(stream, entry)
  redis.call('HSET', tkey, 'entry', '')
  return {'stale', f[1]}
end
if (agent ~= '' and f[2] ~= agent) or (attempt ~= '' and f[3] ~= attempt) then
  return {'stale', f[1]}
end
forget_entry(stream, entry)
redis.call('ZREM', k('q', queue, 'running'), id)
local err
if mode == 'abandon' then
  err = {type = 'AgentStopped', message = 'agent ' .. f[2] .. ' was stopped with force; task requeued'}
  close_attempt(id, 'abandoned', err)
  redis.call('HINCRBY', tkey, 'limit', 1)
  f[5] = tostring(tonumber(f[5]) + 1)
else
  err = {type = 'AgentLost', message = 'agent ' .. f[2] .. ' stopped responding; delivery reclaimed after the visibility timeout'}
  close_attempt(id, 'lost', err)
end
local status
if tonumber(f[3]) < tonumber(f[5]) then
  status = 'queued'
  set_status(id, tkey, 'running', 'queued')
  enqueue(id, tkey)
else
  status = 'dead'
  redis.call('HSET', tkey, 'error', cjson.encode(err), 'entry', '')
  set_status(id, tkey, 'running', 'dead')
  bump(k('q', queue, 'done', math.floor(now / 60000)), 900)
end
task_event(maxlen, tkey)
return {'requeued', status}
