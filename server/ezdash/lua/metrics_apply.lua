-- Apply one aggregated batch of usage: raw events and every rollup increment, in
-- one atomic step.  The records are checked for shape before anything is written,
-- and the events were validated before, so a batch is applied whole or not at all.
-- KEYS[1] the as-of key (newest event time).  ARGV: base, dedupe_key ('' for none),
-- dedupe_ttl_ms, fingerprint, as_of_ms, then records, each starting with a tag:
--   'X', stream, maxlen, n, json*n           raw events (XADD MAXLEN ~)
--   'B', key, ttl_s, n, (offset, value)*n    BITFIELD INCRBY i64 #offset value (n <= 500)
--   'H', key, ttl_s, n, (field, value)*n     HINCRBY
--   'S', key, ttl_s, n, member*n             SADD
-- Returns {'ok'} or {'seen', fingerprint} when the dedupe key showed the batch was
-- applied before (the caller compares fingerprints).
local dedupe, dedupe_ttl, fp, as_of = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local FIRST = 6
local n_args = #ARGV
-- pass 1: shape only
local i = FIRST
while i <= n_args do
  local tag, n = ARGV[i], tonumber(ARGV[i + 3])
  if not n or n < 0 then return redis.error_reply('metrics_apply: bad count at ' .. i) end
  if tag == 'X' or tag == 'S' then i = i + 4 + n
  elseif tag == 'B' or tag == 'H' then
    if tag == 'B' and n > 500 then return redis.error_reply('metrics_apply: record too large') end
    i = i + 4 + 2 * n
  else return redis.error_reply('metrics_apply: unknown record ' .. tostring(tag)) end
end
if i ~= n_args + 1 then return redis.error_reply('metrics_apply: truncated records') end
if dedupe ~= '' then
  local seen = redis.call('GET', dedupe)
  if seen then return {'seen', seen} end
  redis.call('SET', dedupe, fp, 'PX', dedupe_ttl)
end
-- pass 2: write
i = FIRST
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
    else
      for j = 1, n do redis.call('SADD', key, ARGV[i + 3 + j]) end
      i = i + 4 + n
    end
    if ttl > 0 then redis.call('EXPIRE', key, ttl) end
  end
end
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(as_of) > cur then redis.call('SET', KEYS[1], as_of) end
return {'ok'}
