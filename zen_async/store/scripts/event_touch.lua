-- event_touch: reset the idle time of the entries a consumer is still handling, so that no
-- member (the consumer itself included) claims them as abandoned, without counting a
-- delivery: XCLAIM ... JUSTID leaves the delivery counter alone. An entry another member
-- has claimed meanwhile (this one was paused past min-idle) is left to that member.
--
-- KEYS[1]  the stream
-- ARGV[1]  the consumer group
-- ARGV[2]  the consumer
-- ARGV[3..]  entry ids
--
-- Returns the number of entries touched.
-- Cost: O(k log n) for k ids.
-- idempotent: true
local touched = 0
for i = 3, #ARGV do
  local row = redis.call("XPENDING", KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)[1]
  if row and row[2] == ARGV[2] then
    redis.call("XCLAIM", KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], "JUSTID")
    touched = touched + 1
  end
end
return touched
