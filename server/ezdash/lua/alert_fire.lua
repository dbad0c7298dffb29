-- Record that an alert fires, once per rule and subject.
-- KEYS[1] the active hash.  ARGV: base, field ("<rule>|<subject>"), alert id,
-- alert JSON, ttl_ms, events maxlen.
-- Returns the id of the alert firing for the field (the existing one if any).
local field, id, doc, ttl, maxlen = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local existing = redis.call('HGET', KEYS[1], field)
if existing then return existing end
redis.call('HSET', KEYS[1], field, id)
redis.call('SET', k('alert', id), doc, 'PX', ttl)
redis.call('ZADD', k('alerts', 'recent'), now, id)
redis.call('ZREMRANGEBYSCORE', k('alerts', 'recent'), '-inf', now - tonumber(ttl))
emit(maxlen, 'alert.fired', doc)
return id
