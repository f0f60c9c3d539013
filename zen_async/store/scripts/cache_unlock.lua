-- cache_unlock: release a get_or_set fill lock if the caller still holds it, and leave a wake
-- token for the instances blocked waiting on that key.
--
-- KEYS[1]  the fill lock (a string holding the holder's token)
-- KEYS[2]  the wake list of the same key (same hash tag); it holds at most one token
-- ARGV[1]  the caller's lock token
-- ARGV[2]  TTL of the wake list in milliseconds
--
-- Returns 1 when the lock was released, 0 when it had expired or another instance holds it
-- (that lock is left alone). Running it twice leaves the same state: at most one wake token.
-- idempotent: true
local released = 0
if redis.call("GET", KEYS[1]) == ARGV[1] then
  redis.call("DEL", KEYS[1])
  released = 1
end
if redis.call("LLEN", KEYS[2]) == 0 then
  redis.call("RPUSH", KEYS[2], "1")
end
redis.call("PEXPIRE", KEYS[2], ARGV[2])
return released
