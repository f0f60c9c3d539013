-- event_ack: mark events handled by a consumer group and acknowledge them, atomically. The
-- markers let a later copy of a handled entry (claimed by a member that read it before this
-- ack) be recognised and skipped.
--
-- KEYS[1]  the stream
-- KEYS[2..]  the done marker of (group, entry id) of each entry, in ARGV's order
-- ARGV[1]  the consumer group
-- ARGV[2]  marker TTL in ms
-- ARGV[3..]  the entry ids
--
-- Returns how many of the entries were pending (the others were already acknowledged).
-- idempotent: true
for i = 2, #KEYS do
  redis.call("SET", KEYS[i], "1", "PX", ARGV[2])
end
return redis.call("XACK", KEYS[1], ARGV[1], unpack(ARGV, 3))
