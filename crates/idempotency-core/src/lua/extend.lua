-- Extend the lease of an in-progress record (heartbeat), fenced by the lease token.
-- KEYS[1]  the record key
-- ARGV[1]  the lease token (32 hex digits)
-- ARGV[2]  the new lease in milliseconds, counted from now
-- Returns  1 when extended, 0 when the lease was lost (gone, completed, or another claim's).
local current = redis.call('GET', KEYS[1])
if not current then
  return 0
end
local in_progress = '{"v":1,"s":"p","t":"' .. ARGV[1] .. '"'
if string.sub(current, 1, #in_progress) == in_progress then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
