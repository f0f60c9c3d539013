-- cache_delete: delete a cache value and publish its invalidation hint in the same step (also
-- when there was no value: another instance may still hold one it read before it expired).
--
-- KEYS[1]  the value's key (c:<key>)
-- ARGV[1]  the hint channel ("" for none)
-- ARGV[2]  the hint (JSON: what changed, and which instance changed it)
--
-- Returns 1 when a value was deleted, 0 when there was none (so a resend after a lost reply
-- would report 0: not idempotent).
local deleted = redis.call("DEL", KEYS[1])
if ARGV[1] ~= "" then redis.call("PUBLISH", ARGV[1], ARGV[2]) end
return deleted
