-- event_ack: mark an event handled by a consumer group and acknowledge it, atomically.
-- The marker lets a redelivery (after a lost ack) be recognised and skipped.
--
-- KEYS[1]  the stream
-- KEYS[2]  the done marker of (group, entry id)
-- ARGV[1]  the consumer group
-- ARGV[2]  the entry id
-- ARGV[3]  marker TTL in ms
--
-- Returns 1 if the entry was pending, 0 if it was already acknowledged.
-- idempotent: true
redis.call("SET", KEYS[2], "1", "PX", ARGV[3])
return redis.call("XACK", KEYS[1], ARGV[1], ARGV[2])
