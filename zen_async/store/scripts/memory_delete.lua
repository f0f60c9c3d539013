-- memory_delete: remove a memory entry (at an expected version, if given), its dedup key
-- when it still names this entry, and its id from the space's index; record a "d" change in
-- the shard's change feed (with a hint).
--
-- KEYS[1]  the entry's hash (<P>e:<id>)
-- KEYS[2]  the space's id index (<P>ids:<space>)
-- KEYS[3]  the entry's dedup key (<P>h:<space>:<type>:<hash>)
-- KEYS[4]  the space's counters (<P>st:<space>)
-- KEYS[5]  the shard's change feed (<P>changes)
-- KEYS[6]  the shard's change counter (<P>seq)
-- ARGV[1]  memory id
-- ARGV[2]  space name
-- ARGV[3]  expected version ("" for any)
-- ARGV[4]  counter to add 1 to in KEYS[4] ("" for none)
-- ARGV[5]  change feed max length (approximate)
-- ARGV[6]  hint channel ("" for none)
-- ARGV[7]  shard number (the hint's payload)
--
-- Returns 1 when it removed the entry, 0 when there was none.
-- Errors: "CONFLICT <stored> <expected>".
local id = ARGV[1]
if redis.call("EXISTS", KEYS[1]) == 0 then
  redis.call("ZREM", KEYS[2], id)
  return 0
end
local version = redis.call("HGET", KEYS[1], "v")
if ARGV[3] ~= "" and version ~= ARGV[3] then
  return redis.error_reply("CONFLICT " .. version .. " " .. ARGV[3])
end
redis.call("DEL", KEYS[1])
if redis.call("GET", KEYS[3]) == id then redis.call("DEL", KEYS[3]) end
redis.call("ZREM", KEYS[2], id)
if ARGV[4] ~= "" then redis.call("HINCRBY", KEYS[4], ARGV[4], 1) end
local n = redis.call("INCR", KEYS[6])
redis.call("XADD", KEYS[5], "MAXLEN", "~", ARGV[5], "*", "n", n, "op", "d", "id", id,
  "s", ARGV[2], "v", version)
if ARGV[6] ~= "" then redis.call("PUBLISH", ARGV[6], ARGV[7]) end
return 1
