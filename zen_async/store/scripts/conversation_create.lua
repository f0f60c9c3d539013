-- conversation_create: create a conversation thread's metadata hash, stamped with the server
-- clock, unless it already exists.
--
-- KEYS[1]  the thread's metadata hash (zen:...:thread:{<uuid>})
-- ARGV[1]  thread id (UUID)
-- ARGV[2]  parent thread id, "" for none
-- ARGV[3]  tool name
-- ARGV[4]  initial context, codec-encoded
-- ARGV[5]  TTL in milliseconds
--
-- Returns {created_ms, created_at}: the server time (ms since the epoch) and its ISO 8601 UTC
-- form. When the hash exists already it is left as it is and its own created_at is returned,
-- so a retry after a lost reply changes nothing.
-- idempotent: true
--@include iso8601

local existing = redis.call("HMGET", KEYS[1], "created_ms", "created_at")
if existing[1] then
  return {tonumber(existing[1]), existing[2]}
end
local now = redis.call("TIME")
local sec, usec = tonumber(now[1]), tonumber(now[2])
local ms = sec * 1000 + math.floor(usec / 1000)
local stamp = iso8601(sec, usec)
redis.call("HSET", KEYS[1],
  "thread_id", ARGV[1],
  "parent_thread_id", ARGV[2],
  "tool_name", ARGV[3],
  "initial_context", ARGV[4],
  "created_at", stamp,
  "created_ms", ms,
  "last_updated_at", stamp)
redis.call("PEXPIRE", KEYS[1], ARGV[5])
return {ms, stamp}
