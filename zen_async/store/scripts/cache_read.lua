-- cache_read: a cache value and its remaining life, read together (the near cache must not
-- keep a value longer than Redis does).
--
-- KEYS[1]  the value's key (c:<key>)
-- ARGV     none
--
-- Returns {value, PTTL}: the value (nil when absent) and its remaining life in milliseconds
-- (-1: no expiry, -2: absent).
-- idempotent: true
return {redis.call("GET", KEYS[1]), redis.call("PTTL", KEYS[1])}
