-- Record that an alert stopped firing.
-- KEYS[1] the active hash.  ARGV: base, field, alert id, resolved alert JSON, ttl_ms,
-- events maxlen.  Returns 1, or 0 when that alert was not the one firing.
local field, id, doc, ttl, maxlen = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if redis.call('HGET', KEYS[1], field) ~= id then return 0 end
redis.call('HDEL', KEYS[1], field)
redis.call('SET', k('alert', id), doc, 'PX', ttl)
emit(maxlen, 'alert.resolved', doc)
return 1
