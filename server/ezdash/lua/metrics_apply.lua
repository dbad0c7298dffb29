-- Apply one aggregated batch of usage: raw events and every rollup increment, in
-- one atomic step (the batch was validated in full before, so nothing here can be
-- half-applied for a bad event).  KEYS[1] the dedupe key ('' for none).
-- ARGV: base, dedupe_ttl_ms, as_of_ms, then records, each starting with a tag:
--   'X', stream, maxlen, n, json*n           raw events (XADD MAXLEN ~)
--   'B', key, ttl_s, n, (offset, value)*n    BITFIELD INCRBY i64 #offset value
--   'H', key, ttl_s, n, (field, value)*n     HINCRBY
--   'S', key, ttl_s, n, member*n             SADD
-- Returns 1, or 0 when the dedupe key showed the batch was applied before.
if KEYS[1] ~= '' then
  if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[2]) == false then return 0 end
end
local i = 4
local n_args = #ARGV
while i <= n_args do
  local tag = ARGV[i]
  if tag == 'X' then
    local stream, maxlen, n = ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
    for j = 1, n do
      redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'e', ARGV[i + 3 + j])
    end
    i = i + 4 + n
  else
    local key, ttl, n = ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
    if tag == 'B' then
      local cmd = {'BITFIELD', key}
      for j = 0, n - 1 do
        cmd[#cmd + 1] = 'INCRBY'
        cmd[#cmd + 1] = 'i64'
        cmd[#cmd + 1] = '#' .. ARGV[i + 4 + 2 * j]
        cmd[#cmd + 1] = ARGV[i + 5 + 2 * j]
      end
      redis.call(unpack(cmd))
      i = i + 4 + 2 * n
    elseif tag == 'H' then
      for j = 0, n - 1 do
        redis.call('HINCRBY', key, ARGV[i + 4 + 2 * j], ARGV[i + 5 + 2 * j])
      end
      i = i + 4 + 2 * n
    elseif tag == 'S' then
      for j = 1, n do redis.call('SADD', key, ARGV[i + 3 + j]) end
      i = i + 4 + n
    else
      return redis.error_reply('metrics_apply: unknown record ' .. tostring(tag))
    end
    if ttl > 0 then redis.call('EXPIRE', key, ttl) end
  end
end
local asof = k('m', 'as_of')
local cur = tonumber(redis.call('GET', asof) or '0')
if tonumber(ARGV[3]) > cur then redis.call('SET', asof, ARGV[3]) end
return 1
