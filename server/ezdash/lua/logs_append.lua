-- Append a batch of log entries, whole or not at all.
-- KEYS[1] the logs stream.  ARGV: base, dedupe_key ('' for none), dedupe_ttl_ms,
-- fingerprint, maxlen, min_ms (entries older than this are trimmed; 0 for none),
-- then one JSON document per entry.
-- Returns {'ok', id1, id2, ...} or {'seen', fingerprint} when the dedupe key shows
-- the batch was appended before (the caller compares fingerprints).
local dedupe, dedupe_ttl, fp = ARGV[2], ARGV[3], ARGV[4]
local maxlen, min_ms = ARGV[5], tonumber(ARGV[6])
if dedupe ~= '' then
  local seen = redis.call('GET', dedupe)
  if seen then return {'seen', seen} end
  redis.call('SET', dedupe, fp, 'PX', dedupe_ttl)
end
local out = {'ok'}
for i = 7, #ARGV do
  out[#out + 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'd', ARGV[i])
end
if min_ms > 0 then
  redis.call('XTRIM', KEYS[1], 'MINID', '~', min_ms)
end
return out
