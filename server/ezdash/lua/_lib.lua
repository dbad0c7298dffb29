-- Prelude shared by every ezdash script (prepended when the script is loaded).
-- ARGV[1] is always the key base "{prefix}"; every key is derived from it, so all
-- keys share one hash tag and one Redis Cluster slot.  KEYS[1] names the main key.
-- Time comes from the Redis server (TIME), the one clock every agent shares.
local base = ARGV[1]
local GROUP = 'workers'
local function k(...) return base .. ':' .. table.concat({...}, ':') end
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local now = clock()

local function emit(maxlen, etype, data)
  redis.call('XADD', k('events'), 'MAXLEN', '~', maxlen, '*', 'type', etype, 'data', data)
end

local function task_event(maxlen, tkey)
  local f = redis.call('HMGET', tkey, 'id', 'status', 'queue', 'type', 'agent_id', 'attempts', 'priority', 'error')
  local ev = {id = f[1], status = f[2], queue = f[3], type = f[4], attempts = tonumber(f[6]),
              priority = tonumber(f[7]), ts = now}
  if f[5] and f[5] ~= '' then ev.agent_id = f[5] end
  if f[8] and f[8] ~= '' then ev.error = cjson.decode(f[8]) end
  emit(maxlen, 'task.updated', cjson.encode(ev))
end

-- Move a task between status indexes (scored by creation time) and set its status.
local function set_status(id, tkey, old, new)
  local created = redis.call('HGET', tkey, 'created_at')
  if old then redis.call('ZREM', k('tasks', 's', old), id) end
  redis.call('ZADD', k('tasks', 's', new), created, id)
  redis.call('HSET', tkey, 'status', new)
  if new == 'succeeded' or new == 'failed' or new == 'cancelled' or new == 'dead' then
    redis.call('HSET', tkey, 'finished_at', now)
    redis.call('ZADD', k('tasks', 'finished'), now, id)
  else
    redis.call('ZREM', k('tasks', 'finished'), id)
  end
end

-- Append a task id to its queue's stream at its priority level; the entry id is
-- recorded on the task so stale deliveries can be recognised later.
local function enqueue(id, tkey)
  local f = redis.call('HMGET', tkey, 'queue', 'priority')
  local queue, prio = f[1], f[2]
  local stream = k('q', queue, 'p' .. prio)
  if redis.call('EXISTS', stream) == 0 then
    redis.call('XGROUP', 'CREATE', stream, GROUP, '0', 'MKSTREAM')
  end
  local entry = redis.call('XADD', stream, '*', 'task', id)
  redis.call('SADD', k('q', queue, 'levels'), prio)
  redis.call('SADD', k('queues'), queue)
  redis.call('ZADD', k('q', queue, 'waiting'), now, id)
  redis.call('HSET', tkey, 'entry', entry, 'queued_at', now, 'agent_id', '')
  return entry
end

local function stream_of(tkey)
  local f = redis.call('HMGET', tkey, 'queue', 'priority')
  return k('q', f[1], 'p' .. f[2]), f[1]
end

local function forget_entry(stream, entry)
  if entry and entry ~= '' then
    redis.call('XACK', stream, GROUP, entry)
    redis.call('XDEL', stream, entry)
  end
end

-- Rewrite the newest history record (the current attempt) with its outcome.
local function close_attempt(id, status, err)
  local hkey = k('task', id, 'hist')
  local last = redis.call('LINDEX', hkey, -1)
  if not last then return end
  local rec = cjson.decode(last)
  rec.status = status
  rec.finished_at = now
  if err then rec.error = err end
  redis.call('LSET', hkey, -1, cjson.encode(rec))
end

local function bump(key, ttl)
  redis.call('INCR', key)
  redis.call('EXPIRE', key, ttl)
end
