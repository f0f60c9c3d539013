-- memory_store: store a new memory entry, or, when the space already holds an entry of the
-- same type with the same content hash (a live dedup key), reinforce that one instead:
-- access count + 1, last access now, expiry extended to now + its TTL if that is later.
-- Either way one change goes to the shard's change feed, and a hint to the channel.
--
-- KEYS[1]  the new entry's hash (<P>e:<id>); every key shares the shard's hash tag
-- KEYS[2]  the dedup key (<P>h:<space>:<type>:<sha256>) -> id of the entry with this content
-- KEYS[3]  the space's id index (<P>ids:<space>), zset scored by expiry ms (+inf: never)
-- KEYS[4]  the space's counters (<P>st:<space>)
-- KEYS[5]  the shard's change feed (<P>changes)
-- KEYS[6]  the shard's change counter (<P>seq)
-- ARGV[1]  P, the shard prefix (names an existing entry: <P>e:<id>)
-- ARGV[2]  new memory id
-- ARGV[3]  agent id ("" for the shared space)
-- ARGV[4]  space name (agent id, or "~shared")
-- ARGV[5]  memory type
-- ARGV[6]  priority
-- ARGV[7]  content hash
-- ARGV[8]  document (codec bytes)
-- ARGV[9]  uncompressed document size
-- ARGV[10] vector (float32 bytes)
-- ARGV[11] tags (JSON array)
-- ARGV[12] TTL in ms (0: never expires)
-- ARGV[13] change feed max length (approximate)
-- ARGV[14] hint channel ("" for none)
-- ARGV[15] shard number (the hint's payload)
--
-- Returns {1, id, now_ms, expires_ms} for a new entry, or {0, existing_id, now_ms,
-- [field, value, ...]} for a reinforced duplicate, or for this same id stored already (then
-- nothing changes: a replay of the same store applies once). Errors: "CONFLICT <id> exists".
local t = redis.call("TIME")
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local P, id, space = ARGV[1], ARGV[2], ARGV[4]

local function change(op, memory_id, version, extra)
  local n = redis.call("INCR", KEYS[6])
  local fields = {"n", n, "op", op, "id", memory_id, "s", space, "v", version}
  for _, value in ipairs(extra) do fields[#fields + 1] = value end
  redis.call("XADD", KEYS[5], "MAXLEN", "~", ARGV[13], "*", unpack(fields))
  if ARGV[14] ~= "" then redis.call("PUBLISH", ARGV[14], ARGV[15]) end
end

local existing = redis.call("GET", KEYS[2])
if existing == id and redis.call("EXISTS", KEYS[1]) == 1 then
  -- This very store sent again (a replayed journal entry): it changes nothing.
  return {0, id, now, redis.call("HGETALL", KEYS[1])}
end
if existing then
  local ekey = P .. "e:" .. existing
  if redis.call("EXISTS", ekey) == 1 then
    local ac = redis.call("HINCRBY", ekey, "ac", 1)
    local state = redis.call("HMGET", ekey, "ttl", "exp", "v")
    local ttl, exp = tonumber(state[1]), tonumber(state[2])
    if ttl > 0 and now + ttl > exp then
      exp = now + ttl
      redis.call("PEXPIREAT", ekey, exp)
      redis.call("PEXPIREAT", KEYS[2], exp)
      redis.call("ZADD", KEYS[3], exp, existing)
    end
    redis.call("HSET", ekey, "la", now, "exp", exp)
    redis.call("HINCRBY", KEYS[4], "dedup", 1)
    change("t", existing, state[3], {"ac", ac, "la", now, "exp", exp})
    return {0, existing, now, redis.call("HGETALL", ekey)}
  end
end

if redis.call("EXISTS", KEYS[1]) == 1 then
  return redis.error_reply("CONFLICT " .. id .. " exists")
end
local ttl = tonumber(ARGV[12])
local exp = 0
if ttl > 0 then exp = now + ttl end
redis.call("HSET", KEYS[1], "id", id, "agent", ARGV[3], "type", ARGV[5], "prio", ARGV[6],
  "hash", ARGV[7], "doc", ARGV[8], "raw", ARGV[9], "vec", ARGV[10], "tags", ARGV[11],
  "rel", "[]", "ac", 0, "la", now, "ca", now, "exp", exp, "ttl", ttl, "v", 1)
if exp > 0 then
  redis.call("PEXPIREAT", KEYS[1], exp)
  redis.call("SET", KEYS[2], id, "PXAT", exp)
  redis.call("ZADD", KEYS[3], exp, id)
else
  redis.call("SET", KEYS[2], id)
  redis.call("ZADD", KEYS[3], "+inf", id)
end
change("u", id, 1, {})
return {1, id, now, exp}
