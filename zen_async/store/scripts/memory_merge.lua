-- memory_merge: merge a near-duplicate entry (the loser) into another of the same space
-- (the survivor), both at expected versions: the survivor gains the loser's access count,
-- the later last access, the later expiry (never, if either never expires), the given tags
-- and related ids; its version is bumped. The loser and its dedup key are removed. Records
-- "d" (loser) and "u" (survivor) changes in the shard's change feed and sends a hint.
--
-- KEYS[1]  the survivor's hash (<P>e:<survivor>)
-- KEYS[2]  the loser's hash (<P>e:<loser>)
-- KEYS[3]  the space's id index (<P>ids:<space>)
-- KEYS[4]  the survivor's dedup key
-- KEYS[5]  the loser's dedup key
-- KEYS[6]  the space's counters (<P>st:<space>): "merges" + 1
-- KEYS[7]  the shard's change feed (<P>changes)
-- KEYS[8]  the shard's change counter (<P>seq)
-- ARGV[1]  survivor id
-- ARGV[2]  loser id
-- ARGV[3]  space name
-- ARGV[4]  survivor's expected version
-- ARGV[5]  loser's expected version
-- ARGV[6]  the survivor's tags after the merge (JSON array)
-- ARGV[7]  the survivor's related ids after the merge (JSON array)
-- ARGV[8]  change feed max length (approximate)
-- ARGV[9]  hint channel ("" for none)
-- ARGV[10] shard number (the hint's payload)
--
-- Returns {version, access_count, last_accessed_ms, expires_ms} of the survivor.
-- Errors: "NOTFOUND <id>", "CONFLICT <id> <stored> <expected>".
local sid, lid, space = ARGV[1], ARGV[2], ARGV[3]
for i, key in ipairs({KEYS[1], KEYS[2]}) do
  local memory_id = ({sid, lid})[i]
  local version = redis.call("HGET", key, "v")
  if not version then return redis.error_reply("NOTFOUND " .. memory_id) end
  if version ~= ARGV[3 + i] then
    return redis.error_reply("CONFLICT " .. memory_id .. " " .. version .. " " .. ARGV[3 + i])
  end
end
local s = redis.call("HMGET", KEYS[1], "ac", "la", "exp", "ttl")
local l = redis.call("HMGET", KEYS[2], "ac", "la", "exp", "ttl")
local ac = tonumber(s[1]) + tonumber(l[1])
local la = math.max(tonumber(s[2]), tonumber(l[2]))
local sexp, lexp = tonumber(s[3]), tonumber(l[3])
local exp, ttl = math.max(sexp, lexp), math.max(tonumber(s[4]), tonumber(l[4]))
if sexp == 0 or lexp == 0 then exp, ttl = 0, 0 end
redis.call("HSET", KEYS[1], "ac", ac, "la", la, "exp", exp, "ttl", ttl,
  "tags", ARGV[6], "rel", ARGV[7])
local version = redis.call("HINCRBY", KEYS[1], "v", 1)
local survivor_dedup = redis.call("GET", KEYS[4]) == sid
if exp > 0 then
  redis.call("PEXPIREAT", KEYS[1], exp)
  if survivor_dedup then redis.call("PEXPIREAT", KEYS[4], exp) end
  redis.call("ZADD", KEYS[3], exp, sid)
else
  redis.call("PERSIST", KEYS[1])
  if survivor_dedup then redis.call("PERSIST", KEYS[4]) end
  redis.call("ZADD", KEYS[3], "+inf", sid)
end
local lversion = redis.call("HGET", KEYS[2], "v")
redis.call("DEL", KEYS[2])
if redis.call("GET", KEYS[5]) == lid then redis.call("DEL", KEYS[5]) end
redis.call("ZREM", KEYS[3], lid)
redis.call("HINCRBY", KEYS[6], "merges", 1)
local n = redis.call("INCR", KEYS[8])
redis.call("XADD", KEYS[7], "MAXLEN", "~", ARGV[8], "*", "n", n, "op", "d", "id", lid,
  "s", space, "v", lversion)
n = redis.call("INCR", KEYS[8])
redis.call("XADD", KEYS[7], "MAXLEN", "~", ARGV[8], "*", "n", n, "op", "u", "id", sid,
  "s", space, "v", version)
if ARGV[9] ~= "" then redis.call("PUBLISH", ARGV[9], ARGV[10]) end
return {version, ac, la, exp}
