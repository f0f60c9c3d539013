-- cache_extend_lock: push back the expiry of a get_or_set fill lock while its holder computes,
-- only if the caller still holds it.
--
-- KEYS[1]  the fill lock (a string holding the holder's token)
-- ARGV[1]  the caller's lock token
-- ARGV[2]  the new TTL in milliseconds
--
-- Returns 1 when extended, 0 when the lock expired or another instance holds it.
-- idempotent: true
if redis.call("GET", KEYS[1]) == ARGV[1] then
  redis.call("PEXPIRE", KEYS[1], ARGV[2])
  return 1
end
return 0
