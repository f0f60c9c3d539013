-- memory_update: change fields of a memory entry at an expected version, bump its version,
-- move its dedup key when its type or content hash changes, optionally reset its expiry to
-- now + a new TTL, and record a "u" change in the shard's change feed (with a hint).
--
-- KEYS[1]  the entry's hash (<P>e:<id>)
-- KEYS[2]  the space's id index (<P>ids:<space>)
-- KEYS[3]  the entry's current dedup key (<P>h:<space>:<type>:<hash>)
-- KEYS[4]  its dedup key after the change (the same key when type and hash stay)
-- KEYS[5]  the space's counters (<P>st:<space>)
-- KEYS[6]  the shard's change feed (<P>changes)
-- KEYS[7]  the shard's change counter (<P>seq)
-- ARGV[1]  P, the shard prefix (names another entry: <P>e:<id>)
-- ARGV[2]  memory id
-- ARGV[3]  space name
-- ARGV[4]  expected version
-- ARGV[5]  new TTL in ms ("" keeps the expiry; 0: never expires)
-- ARGV[6]  counter to add 1 to in KEYS[5] ("" for none)
-- ARGV[7]  change feed max length (approximate)
-- ARGV[8]  hint channel ("" for none)
-- ARGV[9]  shard number (the hint's payload)
-- ARGV[10...] field, value pairs to set
--
-- Returns {version, expires_ms, now_ms}. Errors: "NOTFOUND <id>", "CONFLICT <stored>
-- <expected>", "CONFLICT duplicate <other id>" (the new type and content already exist).
local P, id = ARGV[1], ARGV[2]
if redis.call("EXISTS", KEYS[1]) == 0 then
  return redis.error_reply("NOTFOUND " .. id)
end
local version = redis.call("HGET", KEYS[1], "v")
if version ~= ARGV[4] then
  return redis.error_reply("CONFLICT " .. version .. " " .. ARGV[4])
end
local moved = KEYS[3] ~= KEYS[4]
if moved then
  local other = redis.call("GET", KEYS[4])
  if other and other ~= id and redis.call("EXISTS", P .. "e:" .. other) == 1 then
    return redis.error_reply("CONFLICT duplicate " .. other)
  end
end
local t = redis.call("TIME")
local now = t[1] * 1000 + math.floor(t[2] / 1000)
if #ARGV >= 10 then
  redis.call("HSET", KEYS[1], unpack(ARGV, 10))
end
version = redis.call("HINCRBY", KEYS[1], "v", 1)
local exp = tonumber(redis.call("HGET", KEYS[1], "exp"))
local retimed = ARGV[5] ~= ""
if retimed then
  local ttl = tonumber(ARGV[5])
  if ttl > 0 then
    exp = now + ttl
    redis.call("PEXPIREAT", KEYS[1], exp)
  else
    exp = 0
    redis.call("PERSIST", KEYS[1])
  end
  redis.call("HSET", KEYS[1], "ttl", ttl, "exp", exp)
end
if moved then
  if redis.call("GET", KEYS[3]) == id then redis.call("DEL", KEYS[3]) end
  redis.call("SET", KEYS[4], id)
end
if moved or retimed then
  if exp > 0 then redis.call("PEXPIREAT", KEYS[4], exp) else redis.call("PERSIST", KEYS[4]) end
end
if exp > 0 then
  redis.call("ZADD", KEYS[2], exp, id)
else
  redis.call("ZADD", KEYS[2], "+inf", id)
end
if ARGV[6] ~= "" then redis.call("HINCRBY", KEYS[5], ARGV[6], 1) end
local n = redis.call("INCR", KEYS[7])
redis.call("XADD", KEYS[6], "MAXLEN", "~", ARGV[7], "*", "n", n, "op", "u", "id", id,
  "s", ARGV[3], "v", version)
if ARGV[8] ~= "" then redis.call("PUBLISH", ARGV[8], ARGV[9]) end
return {version, exp, now}
