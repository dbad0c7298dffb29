-- Register or update an agent's document (the agent is its only writer) and
-- count it as a heartbeat.  KEYS[1] agents hash.  ARGV: base, id, json, maxlen.
-- Returns the server time in ms.
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('ZADD', k('agents', 'ids'), 0, ARGV[2])
redis.call('ZADD', k('agents', 'hb'), now, ARGV[2])
emit(ARGV[4], 'agent.updated', ARGV[3])
return now
