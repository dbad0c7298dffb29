-- Authenticate and rate-limit one request in one round trip.
-- KEYS[1] the API key digest index.  ARGV: base, mode (key|jwt|anon), ident (key digest,
-- JWT key id or '' ), principal (jwt/anon: the principal id), class (read|write|control|
-- public), limit, period_ms, enforce (1|0), failure_principal.
-- Returns {status, key_id, scopes, stored_digest, allowed, remaining, reset_ms, retry_ms}
-- status: ok | unknown (no such key) | revoked.
local mode, ident, principal, class = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local limit, period, enforce, failure = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8], ARGV[9]
local status, kid, scopes, stored = 'ok', '', '', ''

if mode == 'key' then
  kid = redis.call('HGET', KEYS[1], ident)
  if not kid then
    status, kid = 'unknown', ''
  else
    local rec = redis.call('HMGET', k('apikey', kid), 'scopes', 'digest', 'revoked_at', 'last_used_at')
    if not rec[2] or (rec[3] and rec[3] ~= '') then
      status = 'revoked'
    else
      scopes, stored = rec[1], rec[2]
      principal = 'key:' .. kid
      if now - tonumber(rec[4] or 0) > 60000 then
        redis.call('HSET', k('apikey', kid), 'last_used_at', now)
      end
    end
  end
elseif mode == 'jwt' and ident ~= '' then
  if redis.call('SISMEMBER', k('apikeys', 'revoked'), ident) == 1 then status = 'revoked' end
end
if status ~= 'ok' then principal = failure end

-- GCRA: each request moves the theoretical arrival time (tat) on by period/limit;
-- up to `limit` requests may arrive at once (burst = the whole window).
local allowed, remaining, reset_ms, retry_ms = 1, limit, 0, 0
if enforce == '1' then
  local key = k('rl', principal, class)
  local emission = period / limit
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local new_tat = tat + emission
  local allow_at = new_tat - period
  if allow_at > now then
    allowed = 0
    remaining = 0
    retry_ms = math.ceil(allow_at - now)
    reset_ms = math.ceil(tat - now)
  else
    redis.call('SET', key, new_tat, 'PX', math.ceil(new_tat - now) + 1)
    remaining = math.floor((now - allow_at) / emission)
    reset_ms = math.ceil(new_tat - now)
  end
end
return {status, kid, scopes, stored, allowed, remaining, reset_ms, retry_ms}
