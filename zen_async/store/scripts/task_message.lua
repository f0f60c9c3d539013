-- task_message: append one message to a task's message stream, trimmed to a bound, if the
-- task exists.
--
-- KEYS[1]  the task's directory entry ({t:<id>}:type)
-- KEYS[2]  the task's message stream ({t:<id>}:messages), in the same hash tag
-- ARGV[1]  the stream's length bound (exact trim)
-- ARGV[2]  role
-- ARGV[3]  content
--
-- Returns the message (entry) id. Errors: "NOTFOUND <id>" when the task does not exist.
-- Not idempotent: a resend would append twice, so it is never resent.
if redis.call("EXISTS", KEYS[1]) == 0 then
  return redis.error_reply("NOTFOUND task")
end
local t = redis.call("TIME")
local now = t[1] * 1000 + math.floor(t[2] / 1000)
return redis.call("XADD", KEYS[2], "MAXLEN", ARGV[1], "*", "role", ARGV[2], "content", ARGV[3],
  "time", now)
