-- conversation_add_turn: append one turn to a thread, stamp it and the thread with the server
-- clock, and refresh the TTL of every key of the thread; refuse past the turn limit.
--
-- KEYS[1]  the thread's metadata hash (zen:...:thread:{<uuid>})
-- KEYS[2]  the thread's turns list (zen:...:thread:{<uuid>}:turns); same hash tag
-- ARGV[1]  thread id, for error messages
-- ARGV[2]  the most turns the thread may hold
-- ARGV[3]  TTL in milliseconds, applied to both keys
-- ARGV[4]  the turn, codec-encoded, without its timestamp
-- KEYS[3]  optional: a dedupe key (an operation id; same hash tag). A second call with the
--          same key appends nothing and returns the first call's reply.
--
-- Each list element is the 32-byte ISO 8601 UTC timestamp followed by the encoded turn.
-- Returns {turn_count, updated_ms}. Errors: "NOTFOUND ..." when the thread does not exist
-- (or expired), "CAPACITY ..." when it already holds ARGV[2] turns; neither writes anything.
-- Not idempotent without KEYS[3]: a retry would append the turn twice.
--@include iso8601

if KEYS[3] then
  local seen = redis.call("GET", KEYS[3])
  if seen then
    local first_count, first_ms = string.match(seen, "^(%d+):(%d+)$")
    return {tonumber(first_count), tonumber(first_ms)}
  end
end
if redis.call("EXISTS", KEYS[1]) == 0 then
  return redis.error_reply("NOTFOUND conversation thread " .. ARGV[1] ..
    " does not exist or has expired; create a new thread with create_thread()")
end
local count = redis.call("LLEN", KEYS[2])
local limit = tonumber(ARGV[2])
if count >= limit then
  return redis.error_reply("CAPACITY conversation thread " .. ARGV[1] .. " already has " ..
    count .. " turns, the limit (max_turns) is " .. limit ..
    "; continue in a new thread with parent_thread_id=" .. ARGV[1])
end
local now = redis.call("TIME")
local sec, usec = tonumber(now[1]), tonumber(now[2])
local stamp = iso8601(sec, usec)
count = redis.call("RPUSH", KEYS[2], stamp .. ARGV[4])
redis.call("HSET", KEYS[1], "last_updated_at", stamp)
redis.call("PEXPIRE", KEYS[1], ARGV[3])
redis.call("PEXPIRE", KEYS[2], ARGV[3])
local ms = sec * 1000 + math.floor(usec / 1000)
if KEYS[3] then
  redis.call("SET", KEYS[3], string.format("%d:%d", count, ms), "PX", ARGV[3])
end
return {count, ms}
