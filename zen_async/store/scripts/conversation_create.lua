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
