-- memory_expire: forget the entries of a space whose expiry has passed (by the server
-- clock): delete what is left of each, drop its id from the space's index, count them as
-- forgotten, and record a "d" change for each in the shard's change feed (with a hint).
-- Dedup keys carry the same expiry as their entry and go by themselves.
--
-- KEYS[1]  the space's id index (<P>ids:<space>)
-- KEYS[2]  the space's counters (<P>st:<space>): "forgets" + n
-- KEYS[3]  the shard's change feed (<P>changes)
-- KEYS[4]  the shard's change counter (<P>seq)
-- ARGV[1]  P, the shard prefix (names each entry: <P>e:<id>)
-- ARGV[2]  space name
-- ARGV[3]  most entries to forget in this call
-- ARGV[4]  change feed max length (approximate)
-- ARGV[5]  hint channel ("" for none)
-- ARGV[6]  shard number (the hint's payload)
--
-- Returns [id, expires_ms, ...] of the entries forgotten.
local t = redis.call("TIME")
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local due = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", now, "WITHSCORES", "LIMIT", 0, ARGV[3])
for i = 1, #due, 2 do
  local id = due[i]
  redis.call("DEL", ARGV[1] .. "e:" .. id)
  redis.call("ZREM", KEYS[1], id)
  local n = redis.call("INCR", KEYS[4])
  redis.call("XADD", KEYS[3], "MAXLEN", "~", ARGV[4], "*", "n", n, "op", "d", "id", id,
    "s", ARGV[2], "v", 0)
end
if #due > 0 then
  redis.call("HINCRBY", KEYS[2], "forgets", #due / 2)
  if ARGV[5] ~= "" then redis.call("PUBLISH", ARGV[5], ARGV[6]) end
end
return due
