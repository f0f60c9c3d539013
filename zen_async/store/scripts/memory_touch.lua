-- memory_touch: read a memory entry and count the read: access count + 1, last access now.
-- Records a "t" change in the shard's change feed and sends a hint.
--
-- KEYS[1]  the entry's hash (<P>e:<id>)
-- KEYS[2]  the shard's change feed (<P>changes)
-- KEYS[3]  the shard's change counter (<P>seq)
-- ARGV[1]  change feed max length (approximate)
-- ARGV[2]  hint channel ("" for none)
-- ARGV[3]  shard number (the hint's payload)
--
-- Returns {now_ms, [field, value, ...]}, or nil when there is no such (live) entry.
if redis.call("EXISTS", KEYS[1]) == 0 then return false end
local t = redis.call("TIME")
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local ac = redis.call("HINCRBY", KEYS[1], "ac", 1)
redis.call("HSET", KEYS[1], "la", now)
local state = redis.call("HMGET", KEYS[1], "id", "agent", "v", "exp")
local space = state[2]
if space == "" then space = "~shared" end
local n = redis.call("INCR", KEYS[3])
redis.call("XADD", KEYS[2], "MAXLEN", "~", ARGV[1], "*", "n", n, "op", "t", "id", state[1],
  "s", space, "v", state[3], "ac", ac, "la", now, "exp", state[4])
if ARGV[2] ~= "" then redis.call("PUBLISH", ARGV[2], ARGV[3]) end
return {now, redis.call("HGETALL", KEYS[1])}
