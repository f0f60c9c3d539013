-- event_dead_letter: move a poison entry to the dead-letter stream and acknowledge it.
--
-- KEYS[1]  the stream
-- KEYS[2]  the dead-letter stream
-- ARGV[1]  the consumer group
-- ARGV[2]  the entry id
-- ARGV[3]  how many times it was delivered
-- ARGV[4]  the last error seen, "" if unknown
--
-- The copy keeps every original field and adds dead_stream_id, dead_group, dead_deliveries
-- and dead_error. Returns 1 when copied, 0 when the entry was already gone (it is acked
-- either way).
local entry = redis.call("XRANGE", KEYS[1], ARGV[2], ARGV[2])
local copied = 0
if #entry > 0 then
  local fields = entry[1][2]
  fields[#fields + 1] = "dead_stream_id"
  fields[#fields + 1] = ARGV[2]
  fields[#fields + 1] = "dead_group"
  fields[#fields + 1] = ARGV[1]
  fields[#fields + 1] = "dead_deliveries"
  fields[#fields + 1] = ARGV[3]
  fields[#fields + 1] = "dead_error"
  fields[#fields + 1] = ARGV[4]
  redis.call("XADD", KEYS[2], "*", unpack(fields))
  copied = 1
end
redis.call("XACK", KEYS[1], ARGV[1], ARGV[2])
return copied
