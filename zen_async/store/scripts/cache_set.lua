-- cache_set: store a cache value (with an expiry, if given) and publish its invalidation hint
-- in the same step, so no instance can see the new value without the hint having been sent.
--
-- KEYS[1]  the value's key (c:<key>, nats:<id> or temporal:<id>)
-- ARGV[1]  the encoded value
-- ARGV[2]  TTL in milliseconds ("" for none)
-- ARGV[3]  the hint channel ("" for none)
-- ARGV[4]  the hint (JSON: what changed, and which instance changed it)
--
-- Returns 1. Running it twice stores the same value again and sends the hint twice, which
-- subscribers tolerate (a hint only makes them drop what they kept locally).
-- idempotent: true
if ARGV[2] == "" then
  redis.call("SET", KEYS[1], ARGV[1])
else
  redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
end
if ARGV[3] ~= "" then redis.call("PUBLISH", ARGV[3], ARGV[4]) end
return 1
