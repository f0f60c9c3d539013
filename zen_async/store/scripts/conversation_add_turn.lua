-- conversation_add_turn: append one turn to a thread, stamp it and the thread with the server
-- clock, and refresh the TTL of every key of the thread; refuse past the turn limit.
--
-- KEYS[1]  the thread's metadata hash (zen:...:thread:{<uuid>})
-- KEYS[2]  the thread's turns list (zen:...:thread:{<uuid>}:turns); same hash tag
-- ARGV[1]  thread id, for error messages
-- ARGV[2]  the most turns the thread may hold
-- ARGV[3]  TTL in milliseconds, applied to both keys
-- ARGV[4]  the turn, codec-encoded, without its timestamp
--
-- Each list element is the 32-byte ISO 8601 UTC timestamp followed by the encoded turn.
-- Returns {turn_count, updated_ms}. Errors: "NOTFOUND ..." when the thread does not exist
-- (or expired), "CAPACITY ..." when it already holds ARGV[2] turns; neither writes anything.
-- Not idempotent: a retry would append the turn twice.
local function iso8601(sec, usec)
  -- days from civil, inverted (H. Hinnant, "chrono-Compatible Low-Level Date Algorithms")
  local days = math.floor(sec / 86400)
  local rem = sec - days * 86400
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local day = doy - math.floor((153 * mp + 2) / 5) + 1
  local month = mp < 10 and mp + 3 or mp - 9
  local year = yoe + era * 400 + (month <= 2 and 1 or 0)
  return string.format("%04d-%02d-%02dT%02d:%02d:%02d.%06d+00:00", year, month, day,
    math.floor(rem / 3600), math.floor(rem % 3600 / 60), rem % 60, usec)
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
return {count, sec * 1000 + math.floor(usec / 1000)}
