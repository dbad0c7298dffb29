-- Move tasks whose retry back-off has elapsed from the delayed set to their queue.
-- KEYS[1] the delayed set.  ARGV: base, limit.  Returns how many moved.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local moved = 0
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  local tkey = k('task', id)
  if redis.call('HGET', tkey, 'status') == 'queued' then
    enqueue(id, tkey)
    moved = moved + 1
  end
end
return moved
