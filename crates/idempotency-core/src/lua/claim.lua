-- Claim a key on servers without `SET ... NX GET` (Redis < 7.0). One atomic step.
-- KEYS[1]  the record key
-- ARGV[1]  the in-progress record to create
-- ARGV[2]  the lease in milliseconds
-- Returns  nil when the key was claimed, else the record that is already there.
local current = redis.call('GET', KEYS[1])
if current then
  return current
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
