-- Heartbeat on the Redis clock.  KEYS[1] heartbeat set.  ARGV: base, id.
-- Returns 1, or 0 when the agent is not registered (it must register again).
if redis.call('HEXISTS', k('agents'), ARGV[2]) == 0 then return 0 end
redis.call('ZADD', KEYS[1], now, ARGV[2])
return 1
