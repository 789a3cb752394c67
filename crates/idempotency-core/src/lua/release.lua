-- Delete an in-progress record, fenced by the lease token (the operation failed and a retry
-- should run it again).
-- KEYS[1]  the record key
-- ARGV[1]  the lease token (32 hex digits)
-- ARGV[2]  optional: the wake-up channel (`idempotency_core::lua::wake_channel`), published
--          once the record is deleted, so that waiting duplicates re-read. Best effort.
-- Returns  1 when deleted, 0 when the lease was lost (gone, completed, or another claim's).
local current = redis.call('GET', KEYS[1])
if not current then
  return 0
end
local in_progress = '{"v":1,"s":"p","t":"' .. ARGV[1] .. '"'
if string.sub(current, 1, #in_progress) == in_progress then
  redis.call('DEL', KEYS[1])
  if ARGV[2] then
    redis.pcall('PUBLISH', ARGV[2], '1')
  end
  return 1
end
return 0
