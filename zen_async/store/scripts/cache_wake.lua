-- cache_wake: put back the wake token a waiter took, so the next waiter blocked on the same
-- key wakes too (each waiter passes it on: one token wakes every waiter in turn).
--
-- KEYS[1]  the wake list of a cache key; it holds at most one token
-- ARGV[1]  TTL of the wake list in milliseconds
--
-- Returns the list length (always 1).
-- idempotent: true
if redis.call("LLEN", KEYS[1]) == 0 then
  redis.call("RPUSH", KEYS[1], "1")
end
redis.call("PEXPIRE", KEYS[1], ARGV[1])
return 1
