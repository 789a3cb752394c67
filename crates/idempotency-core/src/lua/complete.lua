-- Replace an in-progress record by its completed record, fenced by the lease token.
-- KEYS[1]  the record key
-- ARGV[1]  the lease token (32 hex digits)
-- ARGV[2]  the completed record
-- ARGV[3]  the retention in milliseconds
-- ARGV[4]  optional: the wake-up channel (`idempotency_core::lua::wake_channel`), published
--          once the record is stored, so that waiting duplicates re-read it. Best effort
--          (`pcall`): a user without pub/sub rights still completes.
-- Returns  1 when stored (or already completed under this token: a retried call), 0 when the
--          lease was lost (the record is gone or belongs to another claim).
-- Records begin with `{"v":1,"s":<state>,"t":"<token>"` (record format v1), so the token is
-- matched textually without cjson.
local current = redis.call('GET', KEYS[1])
if not current then
  return 0
end
local in_progress = '{"v":1,"s":"p","t":"' .. ARGV[1] .. '"'
if string.sub(current, 1, #in_progress) == in_progress then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  if ARGV[4] then
    redis.pcall('PUBLISH', ARGV[4], '1')
  end
  return 1
end
local completed = '{"v":1,"s":"c","t":"' .. ARGV[1] .. '"'
if string.sub(current, 1, #completed) == completed then
  return 1
end
return 0
