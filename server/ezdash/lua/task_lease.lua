-- Renew the visibility lease of a running attempt (resets the delivery's idle
-- time) if the caller still holds it.  KEYS[1] task hash.
-- ARGV: base, id, agent, attempt.  Returns {'ok', 'running'} or {'lost', status|'gone'}.
local tkey = KEYS[1]
local id, agent, attempt = ARGV[2], ARGV[3], ARGV[4]
local f = redis.call('HMGET', tkey, 'status', 'agent_id', 'attempts', 'entry')
if f[1] ~= 'running' or f[2] ~= agent or f[3] ~= attempt then return {'lost', f[1] or 'gone'} end
local stream = stream_of(tkey)
redis.call('XCLAIM', stream, GROUP, agent, 0, f[4], 'JUSTID')
return {'ok', 'running'}
